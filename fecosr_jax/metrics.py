"""HR, NDCG and MRR at K from a target's rank (0 = ranked first): the one formula of each,
for jax arrays (fecosr_jax.evaluation, summed per market on the device) and numpy arrays
(fecosr_jax.report.significance, per user on the host).

    HR@K = [rank < K],   NDCG@K = [rank < K] / log2(rank + 2),   MRR@K = [rank < K] / (rank + 1)
"""

from __future__ import annotations

import numpy as np

NAMES = ("hr", "ndcg", "mrr")


def at_k(name: str, ranks, k: int, xp=np, dtype=np.float64):
    """The metric `name` at K of every rank in `ranks` (non-negative), as `dtype`, computed
    with the array module `xp` (numpy or jax.numpy)."""
    r = xp.asarray(ranks).astype(dtype)
    hit = xp.asarray(ranks) < k
    if name == "hr":
        return hit.astype(dtype)
    if name == "ndcg":
        return xp.where(hit, 1.0 / xp.log2(r + 2.0), 0.0).astype(dtype)
    if name == "mrr":
        return xp.where(hit, 1.0 / (r + 1.0), 0.0).astype(dtype)
    raise ValueError(f"metric {name!r}@{k}: expected one of {', '.join(NAMES)}")
