"""Ranking metrics against values worked out by hand."""

import jax.numpy as jnp
import numpy as np

from fecosr_jax import evaluation


def test_ranks_and_metrics_by_hand():
    # Catalogue items 1..4 (0 is padding, scored highest to prove it never competes).
    scores = jnp.array(
        [
            [9.0, 0.1, 0.9, 0.5, 0.3],  # target 2 is best: rank 0
            [9.0, 0.1, 0.9, 0.5, 0.3],  # target 4: 2 above (0.9, 0.5): rank 2
            [9.0, 0.1, 0.9, 0.5, 0.3],
        ]
    )  # padding user
    targets = jnp.array([2, 4, 0])
    mask = jnp.array([False, True, True, True, True])
    ranks = evaluation.target_ranks(scores, targets, mask)
    np.testing.assert_array_equal(ranks[:2], [0, 2])
    sums = evaluation.rank_metrics(ranks, targets > 0, ks=(1, 5))
    assert float(sums["count"]) == 2
    np.testing.assert_allclose(sums["hr@1"], 1.0)
    np.testing.assert_allclose(sums["hr@5"], 2.0)
    np.testing.assert_allclose(sums["ndcg@5"], 1.0 + 1.0 / np.log2(4.0), rtol=1e-6)
    np.testing.assert_allclose(sums["mrr@5"], 1.0 + 1.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(sums["ndcg@1"], 1.0)


def test_sampled_protocol_is_seeded_and_only_draws_catalogue_items():
    import jax

    scores = jnp.tile(jnp.arange(10.0), (4, 1))  # item i scores i
    mask = jnp.arange(10) < 6  # catalogue = items 0..5 (0 excluded below)
    mask = mask.at[0].set(False)
    targets = jnp.array([5, 1, 3, 3])
    keys = jax.vmap(lambda u: jax.random.fold_in(jax.random.key(0), u))(jnp.arange(4))
    a = evaluation.sampled_ranks(scores, targets, mask, keys)
    b = evaluation.sampled_ranks(scores, targets, mask, keys)
    np.testing.assert_array_equal(a, b)
    assert int(a[0]) == 0  # the best catalogue item: no negative scores higher
    # Items 6..9 score higher than everything but are outside the catalogue: never drawn.
    assert int(a[1]) > 0 and int(a[1]) <= 99
    assert int(a[2]) == int(
        jnp.sum(
            jax.vmap(
                lambda k: jax.random.categorical(k, jnp.where(mask, 0.0, -jnp.inf), shape=(99,))
            )(keys)[2]
            > 3
        )
    )


def test_mask_seen_items_keeps_the_target():
    scores = jnp.array([[0.0, 5.0, 4.0, 3.0]])
    masked = evaluation.mask_seen_items(scores, jnp.array([[1, 2]]), jnp.array([2]))
    np.testing.assert_array_equal(masked, [[0.0, -np.inf, 4.0, 3.0]])
