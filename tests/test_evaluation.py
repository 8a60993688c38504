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
