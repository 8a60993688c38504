"""Ranking metrics over each market's catalogue, vmapped over markets (DESIGN.md §5).

Full ranking: the target's rank is the number of catalogue items scored strictly higher than
it (ties count in the target's favour); padding items never compete. HR@K = [rank < K],
NDCG@K = [rank < K] / log2(rank + 2), MRR@K = [rank < K] / (rank + 1). Metrics are returned as
mergeable (sum, count) statistics per market.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fecosr_jax.model import ModelConfig, SequenceModel, scores

KS = (5, 10, 20)


def target_ranks(item_scores: jax.Array, targets: jax.Array, item_mask: jax.Array) -> jax.Array:
    """[...] int32: items of the catalogue scored strictly above the target."""
    s = jnp.where(item_mask, item_scores, -jnp.inf)
    s_t = jnp.take_along_axis(s, targets[..., None], axis=-1)
    return jnp.sum(s > s_t, axis=-1).astype(jnp.int32)


def rank_metrics(ranks: jax.Array, valid: jax.Array, ks: Sequence[int] = KS) -> dict:
    """Sums over users of HR/NDCG/MRR@k (name "hr@10" ...) and the user count ("count")."""
    r = ranks.astype(jnp.float32)
    out = {"count": jnp.sum(valid.astype(jnp.float32))}
    for k in ks:
        hit = (ranks < k) & valid
        out[f"hr@{k}"] = jnp.sum(hit.astype(jnp.float32))
        out[f"ndcg@{k}"] = jnp.sum(jnp.where(hit, 1.0 / jnp.log2(r + 2.0), 0.0))
        out[f"mrr@{k}"] = jnp.sum(jnp.where(hit, 1.0 / (r + 1.0), 0.0))
    return out


def _chunks(x: jax.Array, size: int) -> jax.Array:
    """[U, ...] -> [chunks, size, ...], zero-padded."""
    n = -(-x.shape[0] // size) * size
    x = jnp.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(n // size, size, *x.shape[1:])


def market_metric_sums(
    model_config: ModelConfig,
    params,
    inputs,
    targets,
    semantics,
    item_mask,
    *,
    ks: Sequence[int] = KS,
    batch_size: int = 256,
) -> dict:
    """Metric sums of one market: inputs [U, L], targets [U] (0 = no user), semantics
    [N + 1, d_s], item_mask [N + 1]. Users are scored in chunks of batch_size."""
    model = SequenceModel(model_config)
    items = model.apply({"params": params}, semantics, method=SequenceModel.item_embeddings)

    def chunk(args):
        x, t = args
        hidden = model.apply({"params": params}, x, items, method=SequenceModel.encode)
        s = scores(model_config, hidden[:, -1], items, item_mask)
        return rank_metrics(target_ranks(s, t, item_mask), t > 0, ks)

    size = min(batch_size, inputs.shape[0])
    sums = jax.lax.map(chunk, (_chunks(inputs, size), _chunks(targets, size)))
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), sums)


def evaluate(
    model_config: ModelConfig,
    params,
    inputs,
    targets,
    semantics,
    item_mask,
    *,
    ks: Sequence[int] = KS,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Per-market mean metrics [M] (and "count" [M]) for stacked markets."""
    sums = _evaluate_jit(
        model_config, tuple(ks), batch_size, params, inputs, targets, semantics, item_mask
    )
    return means(jax.device_get(sums))


def means(sums: dict) -> dict[str, np.ndarray]:
    count = np.maximum(np.asarray(sums["count"]), 1)
    return {k: (np.asarray(v) if k == "count" else np.asarray(v) / count) for k, v in sums.items()}


@jax.jit(static_argnums=(0, 1, 2))
def _evaluate_jit(model_config, ks, batch_size, params, inputs, targets, semantics, item_mask):
    fn = lambda *a: market_metric_sums(model_config, params, *a, ks=ks, batch_size=batch_size)  # noqa: E731
    return jax.vmap(fn)(inputs, targets, semantics, item_mask)


def popularity_metric_sums(train, targets, item_mask, *, ks: Sequence[int] = KS) -> dict:
    """The popularity baseline of one market: items scored by their training count, ties
    broken at random (a fixed key), so equal counts do not all rank in the target's favour."""
    counts = jnp.zeros(item_mask.shape[0]).at[train.reshape(-1)].add(1.0)
    noise = jax.random.uniform(jax.random.key(0), (targets.shape[0], counts.shape[0]))
    s = counts + 0.5 * noise
    return rank_metrics(target_ranks(s, targets, item_mask), targets > 0, ks)


def evaluate_popularity(train, targets, item_mask, *, ks: Sequence[int] = KS):
    """Per-market mean metrics [M] of the popularity baseline."""
    sums = jax.jit(jax.vmap(lambda a, b, c: popularity_metric_sums(a, b, c, ks=ks)))(
        train, targets, item_mask
    )
    return means(jax.device_get(sums))
