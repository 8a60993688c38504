"""Runs as data: per-run values are arguments of one compiled program, and R runs stacked on
a leading axis train in one step with the same numbers as each run alone."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.configs import test as test_config
from fecosr_jax import evaluation
from fecosr_jax.data import leave_one_out, stack_markets, synthetic
from fecosr_jax.federated import loop as fed_loop
from fecosr_jax.federated import round as fr
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.finetune import epoch as epoch_lib
from fecosr_jax.finetune import loop as finetune_loop
from fecosr_jax.finetune.config import FinetuneConfig, model_config_for
from fecosr_jax.model import ModelConfig, init_params
from fecosr_jax.runs import experiment, groups, inputs, runner
from fecosr_jax.store import checkpoint

MODEL = ModelConfig(
    hidden=16, num_layers=1, num_heads=2, ffn_dim=32, max_len=8, num_experts=2, dropout=0.1
)
GEN = synthetic.SyntheticConfig(
    num_markets=3, users_per_market=30, items_per_market=40, num_clusters=5, semantic_dim=8, seed=3
)
# SGD clients: Adam's first steps amplify rounding (m / sqrt(v) of a near-zero gradient), so
# its runs agree only loosely (tests/test_round.py); SGD shows the code paths are the same.
BASE = FedConfig(
    local_steps=2, batch_size=4, client_optimizer="sgd", client_lr=0.5, clients_per_round=2
)
# Three runs that differ only in per-run values: seed, alpha (0 = CE), tau_s, learning rates,
# dropout rate (a run alone has its rate in its model config, a constant of its program).
RUNS = [
    dataclasses.replace(BASE, seed=0),
    dataclasses.replace(BASE, seed=1, alpha=0.0, client_lr=0.3),
    dataclasses.replace(BASE, seed=2, alpha=0.6, temperature=0.5, server_lr=0.5),
]
DROPOUT = [0.1, 0.3, 0.1]
TOL = 1e-5  # vmapped over runs, XLA may batch products in another order


@pytest.fixture(scope="module")
def stacked():
    return stack_markets(
        [leave_one_out(m, MODEL.max_len) for m in synthetic.synthetic_markets(GEN)]
    )


def start(seed):
    return init_params(MODEL, jax.random.key(seed), GEN.semantic_dim)


def solo(stacked, fed, rounds, dropout=MODEL.dropout):
    model = dataclasses.replace(MODEL, dropout=dropout)
    r = fr.build_round(model, fed, 3, fr.make_mesh(jax.devices()[:1]))
    data = r.put(fr.round_data(stacked, fed))
    state = r.init(start(fed.seed))
    for _ in range(rounds):
        state, metrics = r.step(state, data)
    return jax.device_get(state.params), jax.device_get(metrics), r


def off_fraction(a, b, atol=1e-5):
    """The fraction of parameter entries that differ by more than atol."""
    off = [
        np.abs(np.asarray(x) - np.asarray(y)) > atol
        for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    ]
    return sum(o.sum() for o in off) / sum(o.size for o in off)


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_runs_that_differ_in_values_share_one_compiled_round(stacked):
    rounds = [solo(stacked, fed, 1)[2] for fed in RUNS]
    assert rounds[0].program is rounds[1].program is rounds[2].program
    assert rounds[0].num_traces == 1
    # A program change (FedProx on, another K) is another program.
    other = fr.build_round(MODEL, dataclasses.replace(BASE, local_steps=3), 3, rounds[0].mesh)
    assert other.program is not rounds[0].program


def test_grouped_round_equals_each_run_alone(stacked):
    model, values = groups.together(MODEL, [f.values() for f in RUNS], DROPOUT)
    r = fr.build_round(model, RUNS[0], 3, fr.make_mesh(jax.devices()[:1]))
    data = r.put(fr.round_data(stacked, RUNS[0]))
    params = jax.tree.map(lambda *xs: np.stack(xs), *[start(f.seed) for f in RUNS])
    state = r.init_runs(params)
    drawn = []
    for _ in range(3):
        state, metrics = r.step(state, data, values)
        drawn.append(np.asarray(metrics["participants"]))  # [R, M]
    grouped = jax.device_get(state.params)
    metrics = jax.device_get(metrics)
    assert np.asarray(state.round).tolist() == [3, 3, 3]
    for i, fed in enumerate(RUNS):
        alone, alone_metrics, _ = solo(stacked, fed, 3, DROPOUT[i])
        assert max_diff(jax.tree.map(lambda x, i=i: x[i], grouped), alone) < TOL
        # each run sampled its own markets from its own seed
        np.testing.assert_array_equal(metrics["participants"][i], alone_metrics["participants"])
        np.testing.assert_allclose(metrics["loss"][i], alone_metrics["loss"], rtol=1e-5)
    # the runs really differ (otherwise the equality above proves little)
    assert (
        max_diff(jax.tree.map(lambda x: x[0], grouped), jax.tree.map(lambda x: x[1], grouped))
        > 1e-3
    )
    drawn = np.stack(drawn, axis=1)  # [R, rounds, M]
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[0], drawn[2])


def finetune_setup(stacked):
    ft = FinetuneConfig(mode="adapt", batch_size=8, max_epochs=3, patience=1)
    model = model_config_for(MODEL, ft, stacked.item_mask.shape[1] - 1)
    shared = start(0)
    data = finetune_loop.finetune_data(stacked, BASE)
    return ft, model, shared, data


def test_grouped_finetuning_and_evaluation_equal_each_run_alone(stacked):
    ft, model, shared, data = finetune_setup(stacked)
    runs = [
        dataclasses.replace(ft, seed=0),
        dataclasses.replace(ft, seed=1, lr=3e-3),
        dataclasses.replace(ft, seed=2, shared_lr_mult=0.5),
    ]
    starts = [
        finetune_loop.init_market_params(model, f, shared, stacked.num_markets, GEN.semantic_dim)
        for f in runs
    ]
    alone = [
        finetune_loop.finetune(dataclasses.replace(model, dropout=d), f, p, data)
        for f, p, d in zip(runs, starts, DROPOUT, strict=True)
    ]
    group_model, stacked_values = groups.together(model, [f.values() for f in runs], DROPOUT)
    grouped = finetune_loop.finetune(
        group_model,
        runs[0],
        jax.tree.map(lambda *xs: np.stack(xs), *starts),
        data,
        values=stacked_values,
    )
    assert grouped.best_valid.shape == (3, stacked.num_markets)
    for i, one in enumerate(alone):
        np.testing.assert_array_equal(grouped.best_epoch[i], one.best_epoch)
        np.testing.assert_allclose(grouped.best_valid[i], one.best_valid, atol=1e-6)
        # Adam turns rounding in a near-zero gradient into a step of ~lr (m / sqrt(v)), so a
        # few entries move apart by up to ~lr; nearly all agree to 1e-5.
        mine = jax.tree.map(lambda x, i=i: x[i], grouped.params)
        assert max_diff(mine, one.params) < 1e-3 and off_fraction(mine, one.params) < 0.01
        active = np.stack([h["active"] for h in grouped.history])[:, i]
        np.testing.assert_array_equal(
            active[: len(one.history)], [h["active"] for h in one.history]
        )
    # the runs differ, and so their stopping can differ
    assert off_fraction(alone[0].params, alone[1].params) > 0.2

    # evaluation with a run axis: [R, M] metrics equal each run's own
    ev = dict(per_market_params=True, protocol="sampled99", with_ranks=True)
    args = (stacked.test_inputs, stacked.test_targets, stacked.semantics, stacked.item_mask)
    both = evaluation.evaluate(
        model, grouped.params, *args, seed=np.array([0, 1, 2], np.int32), **ev
    )
    for i, one in enumerate(alone):
        single = evaluation.evaluate(model, one.params, *args, seed=i, **ev)
        np.testing.assert_array_equal(both["ranks"][i], single["ranks"])
        np.testing.assert_allclose(both["ndcg@10"][i], single["ndcg@10"], atol=1e-6)


def test_a_non_finite_run_of_a_group_is_named(stacked):
    broken = dataclasses.replace(RUNS[0], seed=1, client_lr=float("inf"))
    with pytest.raises(checkpoint.NonFiniteError, match=r"round 1: broken: non-finite") as e:
        fed_loop.run_rounds(
            MODEL,
            RUNS[0],
            stacked,
            list(stacked.names),
            2,
            jax.tree.map(lambda *xs: np.stack(xs), start(0), start(1)),
            fr.make_mesh(jax.devices()[:1]),
            values=fr.stack_runs([RUNS[0].values(), broken.values()]),
            run_names=["healthy", "broken"],
        )
    assert "healthy" not in str(e.value)


def compiled_programs() -> tuple[int, int, int]:
    """(rounds, fine-tuning epochs, evaluations) compiled so far in this process."""
    return (
        fr.round_program.cache_info().currsize,
        epoch_lib.train_epoch._cache_size(),
        evaluation._evaluate_jit._cache_size(),
    )


def tiny_run(tmp_path, max_len: int, methods: str, points: tuple):
    """The programs a tiny run compiles: (rounds, epochs, evaluations) and every program in
    all (each lowering to XLA, whether or not the persistent cache then holds it). `points`:
    (seeds, per-run values) of each point of one group (experiments.main's --run)."""
    config = test_config.get_config()
    config.data.max_len = max_len  # shapes no other test compiles: a clean count
    config.num_rounds, config.finetune.max_epochs = 1, 1
    config.methods = methods
    config.checkpoint.enabled, config.plots, config.tensorboard = False, False, False
    group = []
    for i, (seeds, values) in enumerate(points):
        point = groups.run_config(config, values)
        point.seeds = seeds
        group.append((point, str(tmp_path / f"L{max_len}_{i}")))
    jax.clear_caches()  # counted from scratch: nothing reused from an earlier test's programs
    before = compiled_programs()
    lowered = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        experiment.train_and_evaluate_group(group)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    counts = [after - b for after, b in zip(compiled_programs(), before, strict=True)]
    return counts, len(lowered)


def test_three_seeds_of_s2ce_and_ce_compile_the_programs_of_one_seed_of_one(tmp_path, capsys):
    one, one_total = tiny_run(tmp_path, 7, "fecosr", [("1", {})])
    # 3 seeds, and a fourth run with another dropout rate, alpha and learning rates.
    other = {"seed": "9", "model.dropout": "0.3", "federated.alpha": "0.5", "finetune.lr": "0.01"}
    grouped, grouped_total = tiny_run(
        tmp_path, 6, "fecosr,fecosr_no_s2ce", [("3", {}), ("1", other)]
    )
    assert one == grouped == [1, 1, 2]  # round, epoch, evaluation (validation and test)
    # Everything else is compiled once too (model initialisation, the start states, ...), not
    # once per seed, and not one small program per parameter shape: 13 in all here, where
    # eager initialisation and per-leaf copies had made it hundreds.
    assert one_total == grouped_total <= 13, (one_total, grouped_total)
    out = capsys.readouterr().out
    # S²CE and CE (alpha = 0) pretrain in the same round: 3 seeds x 2 on one run axis; both
    # fine-tune in adapt mode on the same markets: one fine-tuning of 6 runs.
    assert "-- pretraining federated_s2ce + federated_ce: 8 runs in one round" in out
    assert (
        "\n== [1/1] fecosr, fecosr_no_s2ce (L6_0 seed 0, L6_0 seed 1, L6_0 seed 2, L6_1)\n" in out
    )


def test_grouped_round_over_two_devices_equals_one_device():
    splits = [leave_one_out(m, MODEL.max_len) for m in synthetic.synthetic_markets(GEN)]
    padded = stack_markets(splits, num_markets_multiple=2)  # 3 markets + 1 zero-weight
    params = jax.tree.map(lambda *xs: np.stack(xs), *[start(f.seed) for f in RUNS])
    values = fr.stack_runs([f.values() for f in RUNS])
    out = []
    for devices in (1, 2):
        r = fr.build_round(MODEL, RUNS[0], 3, fr.make_mesh(jax.devices()[:devices]))
        data = r.put(fr.round_data(padded, RUNS[0]))
        state = r.init_runs(params)
        for _ in range(2):
            state, metrics = r.step(state, data, values)
        out.append((jax.device_get(state.params), jax.device_get(metrics["participants"])))
    assert max_diff(out[0][0], out[1][0]) < TOL
    np.testing.assert_array_equal(out[0][1], out[1][1])


@pytest.mark.parametrize("runs", [False, True], ids=["one run", "three runs"])
def test_finetuning_and_evaluation_split_over_devices_equal_one_device(runs):
    """Over 4 forced CPU devices each device fine-tunes and evaluates its own markets: the
    same epochs, early stopping, parameters and ranks as one device computing all of them."""
    splits = [leave_one_out(m, MODEL.max_len) for m in synthetic.synthetic_markets(GEN)]
    padded = stack_markets(splits, num_markets_multiple=4)  # 3 markets + 1 padding
    ft, model, shared, data = finetune_setup(padded)
    fts = [dataclasses.replace(ft, seed=s, lr=1e-3 * (s + 1)) for s in range(3 if runs else 1)]
    starts = [
        finetune_loop.init_market_params(model, f, shared, padded.num_markets, GEN.semantic_dim)
        for f in fts
    ]
    params = fr.stack_runs(starts) if runs else starts[0]
    values = fr.stack_runs([f.values() for f in fts]) if runs else None
    seed = np.arange(len(fts), dtype=np.int32) if runs else 0
    test = (padded.test_inputs, padded.test_targets, padded.semantics, padded.item_mask)
    out = []
    for devices in (1, 4):
        mesh = fr.make_mesh(jax.devices()[:devices])
        result = finetune_loop.finetune(model, ft, params, data, values=values, mesh=mesh)
        metrics = evaluation.evaluate(
            model, result.params, *test, per_market_params=True, protocol="sampled99",
            with_ranks=True, seed=seed, mesh=mesh,
        )  # fmt: skip
        out.append((result, metrics))
    (one, one_metrics), (four, four_metrics) = out
    shard = jax.tree.leaves(four.params)[0].sharding
    assert len(shard.device_set) == 4 and not shard.is_fully_replicated  # split, not copied
    np.testing.assert_array_equal(four.best_epoch, one.best_epoch)
    np.testing.assert_allclose(four.best_valid, one.best_valid, atol=1e-6)
    # Adam: rounding in a near-zero gradient becomes a step of ~lr (as for grouped runs)
    assert max_diff(four.params, one.params) < 1e-3 and off_fraction(four.params, one.params) < 0.01
    np.testing.assert_array_equal(four_metrics["ranks"], one_metrics["ranks"])
    np.testing.assert_allclose(four_metrics["ndcg@10"], one_metrics["ndcg@10"], atol=1e-6)
    assert one.history[0]["valid_ndcg@10"].shape == ((3, 4) if runs else (4,))


@pytest.mark.parametrize("semantics", ["none", "random"])
def test_a_methods_program_key_holds_for_the_runners_life(semantics):
    """Methods train together when their program keys are equal, and the key tells markets
    apart by identity: each method's markets must be one object, built once. `local` on
    ID-only markets (XMRec) built a new one per call, so its seeds' keys differed whenever
    the freed object's address was taken (AssertionError "one program per call")."""
    config = test_config.get_config()
    config.data.semantics = semantics
    _, splits, stacked = inputs.prepare_markets(config)
    names = [f"m{i}" for i in range(stacked.item_mask.shape[0])]
    methods = ["local", "fedavg_id", "transfer_id"]
    trainer = runner.Runner(config, splits, stacked, names, methods)
    first = [trainer.program_key(m) for m in methods]
    held = [dataclasses.replace(stacked) for _ in range(8)]  # take the freed addresses
    again = [trainer.program_key(m) for m in methods]
    del held
    assert again == first
