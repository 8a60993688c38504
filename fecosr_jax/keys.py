"""Every random key of a run, derived in one place: key(seed) folded with a stream tag and
then the step's integers (round or epoch, market, step, user). A key depends on nothing but
these integers, so a resumed run draws exactly what the uninterrupted run drew.

Streams: CLIENT (federated clients' batches and dropout: round, market, step), PARTICIPATION
(which markets train: round), FINETUNE (fine-tuning batches and dropout: epoch, market, step),
DP_NOISE (the Gaussian noise of a market's private steps: round, market), NEW_ITEMS (the
item-ID rows of items an item-ID model's pretraining never saw: once per run).
Evaluation's sampled negatives fold (market, user) into key(seed) with no stream tag.
"""

from __future__ import annotations

import jax

CLIENT = 1
PARTICIPATION = 2
FINETUNE = 3
DP_NOISE = 4
NEW_ITEMS = 5


def derive(seed, *path) -> jax.Array:
    """key(seed) folded with each integer of `path` in turn; seed an int or an int32 array."""
    key = jax.random.key(seed)
    for x in path:
        key = jax.random.fold_in(key, x)
    return key
