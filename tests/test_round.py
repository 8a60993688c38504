"""The compiled federated round: backends agree, sharding and padding change nothing,
FedAvg reduces to SGD by hand, one trace, diagnostics by hand, and it learns."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fecosr_jax import evaluation
from fecosr_jax.data import leave_one_out, stack_markets, synthetic, train_pairs
from fecosr_jax.federated import round as fr
from fecosr_jax.federated import server
from fecosr_jax.federated.client import batch_loss, client_key, make_client
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig, init_params

MODEL = ModelConfig(
    hidden=16, num_layers=1, num_heads=2, ffn_dim=32, max_len=8, num_experts=2, dropout=0.1
)
GEN = synthetic.SyntheticConfig(
    num_markets=3, users_per_market=30, items_per_market=40, num_clusters=5, semantic_dim=8, seed=7
)
SGD = FedConfig(local_steps=3, batch_size=4, client_optimizer="sgd", client_lr=0.5)


@pytest.fixture(scope="module")
def markets():
    return [leave_one_out(m, MODEL.max_len) for m in synthetic.synthetic_markets(GEN)]


def params0():
    return init_params(MODEL, jax.random.key(0), GEN.semantic_dim)


def run_compiled(splits, fed, rounds=1, devices=1, multiple=None):
    stacked = stack_markets(splits, num_markets_multiple=multiple or devices)
    r = fr.build_round(MODEL, fed, len(splits), fr.make_mesh(jax.devices()[:devices]))
    data = r.put(fr.round_data(stacked, fed))
    state = r.init(params0())
    for _ in range(rounds):
        state, metrics = r.step(state, data)
    return state, metrics, r


def run_loop(splits, fed, rounds=1):
    stacked = stack_markets(splits)
    loop = fr.LoopBackend(MODEL, fed, len(splits))
    state = loop.init(params0())
    for _ in range(rounds):
        state, metrics = loop.step(state, fr.round_data(stacked, fed))
    return state, metrics


def max_diff(a, b):
    a, b = jax.device_get((a, b))
    return max(
        float(np.abs(x - y).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize(
    "fed",
    [
        SGD,
        dataclasses.replace(SGD, clients_per_round=2),
        dataclasses.replace(SGD, loss="ce", server_optimizer="fedadam", server_lr=0.01),
        dataclasses.replace(SGD, markets_per_step=2),  # lax.map over chunks of 2 markets
    ],
)
def test_vmapped_round_equals_loop_backend(markets, fed):
    compiled, cm, _ = run_compiled(markets, fed)
    looped, lm = run_loop(markets, fed)
    assert max_diff(compiled.params, looped.params) < 1e-5
    np.testing.assert_allclose(cm["market_loss"], lm["market_loss"], rtol=1e-5)
    np.testing.assert_allclose(cm["market_drift"], lm["market_drift"], rtol=1e-4)
    np.testing.assert_allclose(cm["delta_cosine"], lm["delta_cosine"], atol=1e-5)


def test_adam_clients_agree_up_to_adams_first_step_sign(markets):
    """With Adam, the first local step is ~lr * sign(g): rounding noise on parameters whose
    gradient is ~0 flips a sign, so the backends agree to 2 * lr, not to 1e-5."""
    fed = dataclasses.replace(SGD, client_optimizer="adam", client_lr=1e-3)
    compiled, cm, _ = run_compiled(markets, fed)
    looped, lm = run_loop(markets, fed)
    assert max_diff(compiled.params, looped.params) <= 2 * 1e-3 * fed.local_steps
    np.testing.assert_allclose(cm["market_loss"], lm["market_loss"], rtol=1e-5)

    # The bound alone would also hold for untouched parameters (Adam moves each entry by at
    # most ~K * lr). What shows the two paths agree: nearly every entry moved from the start,
    # and nearly every entry agrees between the backends far below what it moved.
    def entries(a, b):
        a, b = jax.device_get((a, b))
        pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        return np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel() for x, y in pairs])

    assert np.mean(entries(compiled.params, params0()) > 1e-5) > 0.5
    diffs = entries(compiled.params, looped.params)
    assert np.mean(diffs > 1e-5) < 0.01


def test_sharded_round_equals_one_device(markets):
    assert len(jax.devices()) >= 8, "conftest forces 8 CPU devices"
    fed = dataclasses.replace(SGD, clients_per_round=2)
    one, m1, _ = run_compiled(markets, fed, rounds=2, devices=1)
    eight, m8, _ = run_compiled(markets, fed, rounds=2, devices=8)
    assert max_diff(one.params, eight.params) < 1e-5
    np.testing.assert_allclose(m1["market_drift"], m8["market_drift"][:3], rtol=1e-4)


def test_zero_weight_padding_markets_change_nothing(markets):
    plain, mp, _ = run_compiled(markets, SGD, rounds=2, devices=1, multiple=1)
    padded, mpad, _ = run_compiled(markets, SGD, rounds=2, devices=1, multiple=8)
    assert max_diff(plain.params, padded.params) < 1e-6
    assert np.isnan(np.asarray(mpad["market_loss"][3:])).all()  # padding markets report nothing
    np.testing.assert_allclose(mp["delta_cosine"], mpad["delta_cosine"], atol=1e-6)


def test_one_market_fedavg_is_one_centralised_sgd_step(markets):
    fed = FedConfig(
        local_steps=1,
        batch_size=6,
        client_optimizer="sgd",
        client_lr=0.3,
        server_optimizer="fedavg",
        server_lr=1.0,
    )
    (split,) = markets[:1]
    state, _, _ = run_compiled([split], fed)
    # By hand: the batch and dropout key the round draws for (seed, round 0, market 0, step 0).
    stacked = stack_markets([split])
    market = {k: jnp.asarray(v[0]) for k, v in fr.round_data(stacked, fed).items()}
    batch_key, dropout_key = jax.random.split(jax.random.fold_in(client_key(fed.seed, 0, 0), 0))
    users = jax.random.randint(batch_key, (fed.batch_size,), 0, market["num_rows"])
    grads = jax.jit(
        jax.grad(
            lambda p: batch_loss(MODEL, fed, p, market["train"][users], market, dropout_key)[0]
        )
    )(params0())
    want = jax.tree.map(lambda p, g: p - 0.3 * g, params0(), grads)
    assert max_diff(state.params, want) < 1e-6


def test_fedprox_adds_the_proximal_gradient(markets):
    fed = FedConfig(
        local_steps=2, batch_size=4, client_optimizer="sgd", client_lr=0.5, fedprox_mu=3.0
    )
    split = markets[0]
    stacked = stack_markets([split])
    market = {k: jnp.asarray(v[0]) for k, v in fr.round_data(stacked, fed).items()}
    delta, _ = jax.jit(make_client(MODEL, fed).update)(params0(), market, 0, fed.values())
    # By hand: w1 = w0 - lr g(w0); w2 = w1 - lr (g(w1) + mu (w1 - w0)).
    w0 = params0()
    key = client_key(fed.seed, 0, 0)
    w = w0
    for step in range(2):
        bkey, dkey = jax.random.split(jax.random.fold_in(key, step))
        users = jax.random.randint(bkey, (4,), 0, market["num_rows"])
        g = jax.jit(jax.grad(lambda p, rows, k: batch_loss(MODEL, fed, p, rows, market, k)[0]))(
            w, market["train"][users], dkey
        )
        w = jax.tree.map(lambda p, gi, p0: p - 0.5 * (gi + 3.0 * (p - p0)), w, g, w0)
    assert max_diff(delta, jax.tree.map(jnp.subtract, w, w0)) < 1e-6


def test_one_trace_across_rounds(markets):
    _, _, r = run_compiled(markets, dataclasses.replace(SGD, clients_per_round=2), rounds=4)
    assert r.num_traces == 1


def test_participation_comes_from_seed_and_round():
    fed = FedConfig(clients_per_round=3, seed=5)
    draws = np.stack([np.asarray(fr.participants(fed, r, 10)) for r in range(400)])
    again = np.stack([np.asarray(fr.participants(fed, r, 10)) for r in range(4)])
    np.testing.assert_array_equal(draws[:4], again)  # a function of (seed, round) alone
    other = np.stack([np.asarray(fr.participants(fed, r, 10, seed=6)) for r in range(4)])
    assert not np.array_equal(draws[:4], other)  # another seed, other draws
    assert len({tuple(x) for x in draws[:4]}) > 1  # rounds differ
    assert (np.diff(draws, axis=1) > 0).all()  # sorted, distinct
    assert draws.min() >= 0 and draws.max() < 10
    # over many rounds every market takes part at rate C / M = 0.3 (binomial sd ~0.023)
    rate = np.bincount(draws.ravel(), minlength=10) / len(draws)
    np.testing.assert_allclose(rate, 0.3, atol=0.08)


def test_server_optimisers_differ_and_fedavg_lr1_averages():
    params = {"w": jnp.ones(3)}
    delta = {"w": jnp.array([0.5, -1.0, 2.0])}
    for name in ("fedavg", "fedadam", "fedyogi"):
        fed = FedConfig(server_optimizer=name, server_lr=1.0 if name == "fedavg" else 0.1)
        opt = server.make_server_optimizer(fed)
        new = server.server_update(server.server_init(params, opt), delta, opt)
        if name == "fedavg":
            np.testing.assert_allclose(new.params["w"], [1.5, 0.0, 3.0])
        else:  # adaptive: first step moves each coordinate by ~lr in the delta's direction
            step = np.asarray(new.params["w"]) - 1.0
            np.testing.assert_array_equal(np.sign(step), np.sign(delta["w"]))
            assert np.all(np.abs(step) <= 0.1 + 1e-6)
        assert int(new.round) == 1


def test_diagnostics_by_hand():
    deltas = {"a": jnp.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])}
    weights = jnp.array([1.0, 1.0, 0.0])  # the third is padding
    mask = jnp.array([True, True, False])
    mean, diag = server.aggregate(server.local_sums(deltas, weights, mask))
    np.testing.assert_allclose(mean["a"], [0.5, 0.5])
    np.testing.assert_allclose(diag["delta_cosine"], 0.0, atol=1e-7)  # orthogonal deltas
    np.testing.assert_allclose(diag["delta_agreement"], np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(server.drift(deltas, mean)[:2], [np.sqrt(0.5)] * 2, rtol=1e-6)
    same = {"a": jnp.array([[1.0, 1.0], [2.0, 2.0]])}
    _, diag = server.aggregate(server.local_sums(same, jnp.ones(2), jnp.ones(2, bool)))
    np.testing.assert_allclose(diag["delta_cosine"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(diag["delta_agreement"], 1.0, rtol=1e-6)


def test_short_federated_pretraining_learns_and_beats_popularity():
    gen = synthetic.SyntheticConfig(
        num_markets=4,
        users_per_market=200,
        items_per_market=120,
        num_clusters=12,
        semantic_dim=16,
        seed=1,
        popularity_skew=0.5,
        semantic_noise=0.5,
    )
    model = ModelConfig(
        hidden=32, num_layers=1, num_heads=2, ffn_dim=64, max_len=20, num_experts=4, dropout=0.1
    )
    stacked = stack_markets([leave_one_out(m, 20) for m in synthetic.synthetic_markets(gen)])
    fed = FedConfig(local_steps=5, batch_size=32, client_lr=1e-2, loss="s2ce")
    r = fr.build_round(model, fed, 4, fr.make_mesh(jax.devices()[:1]))
    data = r.put(fr.round_data(stacked, fed))
    state = r.init(init_params(model, jax.random.key(0), 16))
    losses = []
    for _ in range(15):  # loss down by 0.39, NDCG@10 0.223 against popularity's 0.182
        state, metrics = r.step(state, data)
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    got = evaluation.evaluate(
        model,
        state.params,
        stacked.valid_inputs,
        stacked.valid_targets,
        stacked.semantics,
        stacked.item_mask,
    )
    pop = evaluation.evaluate_popularity(stacked.train, stacked.valid_targets, stacked.item_mask)
    assert got["ndcg@10"].mean() > pop["ndcg@10"].mean() + 0.01


def test_train_pairs_never_target_the_first_item():
    inputs, targets = train_pairs(np.array([[0, 0, 5, 6, 7]]))
    np.testing.assert_array_equal(inputs, [[0, 0, 5, 6]])
    np.testing.assert_array_equal(targets, [[0, 0, 6, 7]])
