"""The synthetic generator: determinism, the knobs, and a learnable structure."""

import hashlib

import numpy as np
import pytest

from fecosr_jax.data import synthetic
from fecosr_jax.data.synthetic import SyntheticConfig


def digest(markets):
    h = hashlib.sha256()
    for m in markets:
        for a in (m.item_ids, m.user_ids, m.offsets, m.items, m.semantics):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(m.item_text).encode())
    return h.hexdigest()


SMALL = SyntheticConfig(num_markets=3, users_per_market=60, items_per_market=80)


def test_same_seed_is_byte_identical_other_seed_differs():
    assert digest(synthetic.synthetic_markets(SMALL)) == digest(synthetic.synthetic_markets(SMALL))
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 1})
    assert digest(synthetic.synthetic_markets(SMALL)) != digest(synthetic.synthetic_markets(other))


def test_adding_markets_leaves_existing_markets_unchanged():
    more = synthetic.synthetic_markets(SyntheticConfig(**{**SMALL.__dict__, "num_markets": 5}))
    assert digest(more[:3]) == digest(synthetic.synthetic_markets(SMALL))


def test_published_catalogue_is_the_generators_with_the_same_vectors():
    """config.data.catalogue=published: a market's items are the generator's
    items_per_market, those its users never drew included; sequences and each item's
    vector are the same as with the catalogue of the rows."""
    config = SyntheticConfig(**{**SMALL.__dict__, "users_per_market": 10})
    rows, _ = synthetic.generate(config)
    published, _ = synthetic.generate(config, published=True)
    for a, b in zip(rows, published, strict=True):
        assert a.num_items < b.num_items == config.items_per_market
        assert (a.item_ids[a.items - 1] == b.item_ids[b.items - 1]).all()
        where = np.searchsorted(b.item_ids, a.item_ids) + 1
        np.testing.assert_array_equal(a.semantics[1:], b.semantics[where])


@pytest.mark.parametrize("overlap", [0.0, 1.0])
def test_overlap_extremes(overlap):
    cfg = SyntheticConfig(
        num_markets=3,
        users_per_market=400,
        items_per_market=60,
        overlap=overlap,
        popularity_skew=0.0,
    )
    markets, truths = synthetic.generate(cfg)
    shared = np.intersect1d(markets[0].item_ids, markets[1].item_ids)
    if overlap == 0.0:
        assert shared.size == 0
    else:  # identical catalogues (every item occurs with 400 users x >= 5 items)
        np.testing.assert_array_equal(markets[0].item_ids, markets[1].item_ids)
        # Shared items carry the same vector in every market.
        np.testing.assert_array_equal(markets[0].semantics, markets[1].semantics)


def test_heterogeneity_zero_shares_transitions_one_does_not():
    same = synthetic.generate(SyntheticConfig(**{**SMALL.__dict__, "heterogeneity": 0.0}))[1]
    np.testing.assert_allclose(same[0].transitions, same[1].transitions)
    diff = synthetic.generate(SyntheticConfig(**{**SMALL.__dict__, "heterogeneity": 1.0}))[1]
    assert np.abs(diff[0].transitions - diff[1].transitions).max() > 0.1
    for t in diff:
        np.testing.assert_allclose(t.transitions.sum(axis=1), 1.0)


def test_semantic_vectors_cluster():
    markets, truths = synthetic.generate(SMALL)
    m, t = markets[0], truths[0]
    unit = m.semantics[1:] / np.linalg.norm(m.semantics[1:], axis=1, keepdims=True)
    cos = unit @ unit.T
    same = t.item_cluster[1:, None] == t.item_cluster[None, 1:]
    assert cos[same].mean() > cos[~same].mean() + 0.5


def hit_rate_at_10(scores, target):
    return float((scores > scores[target]).sum() < 10)


def test_markov_oracle_beats_popularity_by_a_wide_margin():
    """The structure is learnable: knowing T_m and popularity predicts the next item far
    better than popularity alone (held-out last item of each user, HR@10)."""
    markets, truths = synthetic.generate(SyntheticConfig(num_markets=4, seed=3))
    oracle, popular = [], []
    for m, t in zip(markets, truths, strict=True):
        ends = m.offsets[1:]
        train = np.ones(m.num_interactions, bool)
        train[ends - 1] = False
        pop = np.bincount(m.items[train], minlength=m.num_items + 1).astype(float)
        pop[0] = -np.inf
        for u in range(m.num_users):
            prev, target = m.items[ends[u] - 2], m.items[ends[u] - 1]
            score = t.transitions[t.item_cluster[prev], t.item_cluster] * t.item_weight
            score[0] = -np.inf
            oracle.append(hit_rate_at_10(score, target))
            popular.append(hit_rate_at_10(pop, target))
    assert np.mean(oracle) > 1.5 * np.mean(popular) and np.mean(oracle) > np.mean(popular) + 0.1


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="overlap"):
        SyntheticConfig(overlap=1.5)
