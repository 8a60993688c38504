"""Stage 2: fine-tuning starts at the pretrained model, freezes what it should, and keeps
each market's best parameters under its own early stopping."""

import dataclasses

import jax
import numpy as np
import pytest

from fecosr_jax import evaluation
from fecosr_jax.data import leave_one_out, stack_markets, synthetic
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.finetune import epoch as epoch_lib
from fecosr_jax.finetune import loop as finetune_loop
from fecosr_jax.finetune.config import FinetuneConfig, model_config_for
from fecosr_jax.model import ModelConfig, init_params
from fecosr_jax.runs import paradigms

MODEL = ModelConfig(
    hidden=16, num_layers=1, num_heads=2, ffn_dim=32, max_len=8, num_experts=2, dropout=0.0
)
GEN = synthetic.SyntheticConfig(
    num_markets=3, users_per_market=40, items_per_market=30, num_clusters=4, semantic_dim=8, seed=2
)


@pytest.fixture(scope="module")
def stacked():
    return stack_markets([leave_one_out(m, 8) for m in synthetic.synthetic_markets(GEN)])


def setup(stacked, **changes):
    ft = FinetuneConfig(
        **{
            "mode": "adapt",
            "lr": 1e-2,
            "max_epochs": 3,
            "patience": 1,
            "batch_size": 8,
            "adapter_dim": 4,
            **changes,
        }
    )
    shared = init_params(MODEL, jax.random.key(0), 8)
    model = model_config_for(MODEL, ft, stacked.item_mask.shape[1] - 1)
    start = finetune_loop.init_market_params(model, ft, shared, stacked.num_markets, 8)
    return ft, shared, model, start, finetune_loop.finetune_data(stacked, FedConfig())


def test_adapt_mode_starts_exactly_at_the_pretrained_model(stacked):
    ft, shared, model, start, _ = setup(stacked)
    args = (stacked.test_inputs, stacked.test_targets, stacked.semantics, stacked.item_mask)
    pretrained = evaluation.evaluate(MODEL, shared, *args)
    adapted = evaluation.evaluate(model, start, *args, per_market_params=True)
    for k in ("ndcg@10", "hr@5", "mrr@20"):
        np.testing.assert_allclose(adapted[k], pretrained[k], atol=1e-6)
    # The adaptation module is per market, with zero item IDs and zero up-projections.
    assert start["item_ids"]["embedding"].shape[0] == stacked.num_markets
    assert np.all(np.asarray(start["item_ids"]["embedding"]) == 0)
    assert np.all(np.asarray(start["block_0"]["adapter_up"]["kernel"]) == 0)


def test_frozen_shared_part_does_not_move(stacked):
    ft, shared, model, start, data = setup(stacked, shared_lr_mult=0.0, patience=5)
    result = finetune_loop.finetune(model, ft, start, data)
    assert (result.best_epoch > 0).all()  # every market kept a trained epoch
    starts = dict(jax.tree_util.tree_flatten_with_path(start)[0])
    moved = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(result.params)[0]:
        ref = np.asarray(starts[path])
        if epoch_lib.is_local(path):
            if np.abs(np.asarray(leaf) - ref).max() > 0:
                moved.add(jax.tree_util.keystr(path[:1]) + jax.tree_util.keystr(path[1:2]))
        else:
            np.testing.assert_array_equal(np.asarray(leaf), ref)
    # the adaptation module trained from its start: the item-ID table and the adapters
    assert "['item_ids']['embedding']" in moved
    assert any("adapter_up" in m for m in moved), moved


def test_best_parameters_and_independent_early_stopping(stacked):
    ft, shared, model, start, data = setup(stacked, max_epochs=6, patience=1, min_budget=0)
    result = finetune_loop.finetune(model, ft, start, data)
    # The kept parameters score exactly the recorded best validation NDCG@10.
    got = evaluation.evaluate(
        model,
        result.params,
        stacked.valid_inputs,
        stacked.valid_targets,
        stacked.semantics,
        stacked.item_mask,
        per_market_params=True,
    )
    np.testing.assert_allclose(got["ndcg@10"], result.best_valid, atol=1e-6)
    # With patience 1 a market trains until its first epoch without improvement: its last
    # epoch is exactly its best epoch + 1 (or the last epoch), each market on its own.
    last = []
    for m in range(stacked.num_markets):
        active = [h["active"][m] for h in result.history]
        last.append(max(i for i, a in enumerate(active) if a) + 1)  # epochs are 1-based
        assert last[m] == min(result.best_epoch[m] + 1, ft.max_epochs), (m, result.best_epoch)
    assert len(set(last)) > 1 and min(last) < ft.max_epochs, last  # they stopped apart
    assert result.best_valid.min() >= 0
    np.testing.assert_array_equal(result.stop_epoch, last)  # what results.json records


def _last_active(result, m):
    return max(h["epoch"] for h in result.history if h["active"][m])


def test_minimum_budget_before_any_market_stops(stacked):
    ft, shared, model, start, data = setup(stacked, max_epochs=8, patience=1, min_budget=0)
    free = finetune_loop.finetune(model, ft, start, data)
    budget = int(free.stop_epoch.min()) + 1  # without it, a market stops before this epoch
    assert budget < ft.max_epochs, free.stop_epoch
    ft_budget = dataclasses.replace(ft, min_budget=budget / ft.max_epochs)
    assert ft_budget.min_epochs == budget
    kept = finetune_loop.finetune(model, ft_budget, start, data)
    for m in range(stacked.num_markets):
        # it trains until the budget at least, then stops at its first epoch without a new best
        want = min(max(kept.best_epoch[m] + 1, budget), ft.max_epochs)
        assert _last_active(kept, m) == want == kept.stop_epoch[m], (m, kept.best_epoch)
    # the epochs both rules trained are the same computation
    for h_free, h_kept in zip(free.history, kept.history, strict=False):  # free ends sooner
        both = h_free["active"]
        np.testing.assert_array_equal(h_free["valid_ndcg@10"][both], h_kept["valid_ndcg@10"][both])
    # the whole budget: every market trains every epoch and keeps its best one
    full = finetune_loop.finetune(model, dataclasses.replace(ft, min_budget=1.0), start, data)
    curve = np.stack([h["valid_ndcg@10"] for h in full.history])  # [epochs, M]
    assert curve.shape == (8, stacked.num_markets) and np.isfinite(curve).all()
    np.testing.assert_array_equal(full.stop_epoch, 8)
    trained = full.best_epoch > 0  # else the starting model stayed the best
    assert trained.any()
    np.testing.assert_array_equal(full.best_epoch[trained], curve.argmax(axis=0)[trained] + 1)
    np.testing.assert_array_equal(full.best_valid[trained], curve.max(axis=0)[trained])
    assert (full.best_valid[~trained] >= curve.max(axis=0)[~trained]).all()
    with pytest.raises(ValueError, match="min_budget=1.5"):
        dataclasses.replace(ft, min_budget=1.5)


def test_plain_mode_is_the_pretrained_model_for_every_market(stacked):
    ft, shared, model, start, _ = setup(stacked, mode="plain")
    assert model == MODEL
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(shared), strict=True):
        assert a.shape == (stacked.num_markets, *b.shape)
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b))


def test_invalid_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        FinetuneConfig(mode="bogus")


def test_scratch_id_only_model_without_semantics(stacked):
    base = paradigms.id_model_config(MODEL, stacked.item_mask.shape[1] - 1)
    ft = FinetuneConfig(
        mode="scratch", lr=1e-2, max_epochs=3, patience=3, batch_size=8, adapter_dim=4
    )
    model = model_config_for(base, ft, stacked.item_mask.shape[1] - 1)
    zeros = np.zeros((*stacked.item_mask.shape, 1), np.float32)
    start = finetune_loop.init_market_params(model, ft, None, stacked.num_markets, 1)
    assert "adaptor" not in start
    data = finetune_loop.finetune_data(dataclasses.replace(stacked, semantics=zeros), FedConfig())
    result = finetune_loop.finetune(model, ft, start, data)
    assert np.isfinite(result.best_valid).all()
    # it trained: the kept parameters differ from the random start and score better on
    # validation than that start did
    assert result.best_epoch.min() >= 1
    before = np.asarray(start["item_ids"]["embedding"])
    assert np.abs(np.asarray(result.params["item_ids"]["embedding"]) - before).max() > 1e-4
    args = (stacked.valid_inputs, stacked.valid_targets, zeros, stacked.item_mask)
    at_start = evaluation.evaluate(model, start, *args, per_market_params=True)["ndcg@10"]
    assert (result.best_valid > at_start).all()


def test_a_stopped_market_reports_what_it_keeps(stacked):
    """After a market stops, the per-epoch callback (what metrics.jsonl logs) shows its kept
    best validation NDCG@10, never a value of parameters it discards."""
    # Early stopping on (it is opt-in): half the budget, then patience 1.
    ft, shared, model, start, data = setup(stacked, max_epochs=6, patience=1, min_budget=0.5)
    seen = []
    result = finetune_loop.finetune(
        model, ft, start, data, on_epoch=lambda e, n, lo, a: seen.append((n.copy(), a.copy()))
    )
    stopped_after = 0
    for (shown, active), h in zip(seen, result.history, strict=True):
        np.testing.assert_array_equal(shown[active], h["valid_ndcg@10"][active])
        # a stopped market's value is its best, which it keeps to the end
        np.testing.assert_array_equal(shown[~active], result.best_valid[~active])
        stopped_after += int((~active).sum())
    assert stopped_after > 0  # some market did stop while another trained on


def same(a, b, rounding=False):
    """Two fine-tuning results (or their run slices) are equal: bit for bit, or up to rounding
    (XLA batches a vmapped product in another order, and Adam's m / sqrt(v) turns rounding in
    a near-zero gradient into a step of up to ~lr: the bound of tests/test_runs.py)."""
    np.testing.assert_array_equal(a.best_epoch, b.best_epoch)
    np.testing.assert_array_equal(a.stop_epoch, b.stop_epoch)
    np.testing.assert_allclose(a.best_valid, b.best_valid, rtol=0, atol=1e-6 if rounding else 0)
    pairs = list(zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True))
    if not rounding:
        for x, y in pairs:
            np.testing.assert_array_equal(x, y)
        return
    off = sum(int((np.abs(np.asarray(x) - np.asarray(y)) > 1e-5).sum()) for x, y in pairs)
    assert off / sum(np.size(x) for x, _ in pairs) < 0.01


def test_markets_one_at_a_time_equal_all_at_once_and_skip_stopped_ones(stacked):
    """markets_per_step: markets fine-tuned one after another (the CPU's default) give what
    one vmapped batch gives, and two runs on a run axis what each run gives alone, up to
    rounding (separate programs: XLA may fuse and order them differently). A stopped market
    is skipped: a real conditional, not a select of computed values."""
    ft, shared, model, start, data = setup(stacked, max_epochs=6, patience=1, min_budget=0.5)
    num = stacked.num_markets
    seq, batch = (
        finetune_loop.finetune(model, dataclasses.replace(ft, markets_per_step=k), start, data)
        for k in (1, num)
    )
    same(seq, batch, rounding=True)
    for s, b in zip(seq.history, batch.history, strict=True):
        np.testing.assert_array_equal(s["active"], b["active"])
        # a stopped market did not train: NaN in both (never a discarded measurement)
        np.testing.assert_allclose(s["valid_ndcg@10"], b["valid_ndcg@10"], rtol=0, atol=1e-6)
        assert np.isnan(s["valid_ndcg@10"][~s["active"]]).all()
        assert np.isnan(s["loss"][~s["active"]]).all() and np.isfinite(s["loss"][s["active"]]).all()
    # markets stopped while others trained on
    assert any(h["active"].any() and not h["active"].all() for h in seq.history)

    # two runs, one after another inside one epoch program, equal each run alone
    runs = [
        dataclasses.replace(ft, markets_per_step=1, seed=s, lr=lr)
        for s, lr in ((0, 1e-2), (1, 3e-2))
    ]
    values = jax.tree.map(lambda *xs: np.stack(xs), *[f.values() for f in runs])
    starts = jax.tree.map(lambda *xs: np.stack(xs), start, start)
    grouped = finetune_loop.finetune(model, runs[0], starts, data, values=values)
    for i, f in enumerate(runs):
        alone = seq if i == 0 else finetune_loop.finetune(model, f, start, data)
        part = jax.tree.map(lambda x, i=i: x[i], grouped.params)
        mine = finetune_loop.FinetuneResult(
            part, model, grouped.best_valid[i], grouped.best_epoch[i], grouped.stop_epoch[i], []
        )
        same(mine, alone, rounding=True)
    assert not np.array_equal(grouped.best_valid[0], grouped.best_valid[1])

    # Structure: one at a time is a loop with a conditional per (run, market); all at once
    # computes every pair and selects.
    for at_once, has_cond in ((1, True), (2 * num, False)):
        program = dataclasses.replace(ft, markets_per_step=at_once).program()
        opt_state = epoch_lib.start(program, 2, starts)[1]
        text = str(
            jax.make_jaxpr(
                lambda p, o, a, d, v, program=program: epoch_lib.run_epoch(
                    model, program, 2, p, o, a, d, 1, v
                )
            )(starts, opt_state, np.ones((2, num), bool), data, values)
        )
        assert (" cond[" in text) == has_cond, at_once
