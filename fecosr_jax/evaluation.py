"""Ranking metrics over each market's catalogue, vmapped over markets (docs/design.md §5).

Protocols (config, not code):
  "full": the target's rank is the number of catalogue items scored strictly higher than it
    (ties count in the target's favour); padding items never compete.
  "sampled99": the target against 99 negatives drawn uniformly (with replacement) from the
    market's catalogue, seeded by (seed, market, user), as in the FOREC / CAT-SR tables.
Seen items: with mask_seen=True, the items of the user's input sequence (its last L items)
cannot outrank the target (default off, as in the RecBole comparison).
HR@K, NDCG@K and MRR@K (fecosr_jax.metrics), returned as mergeable (sum, count) statistics
per market. Over a mesh of several devices
(fecosr_jax.mesh) each device evaluates its own markets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fecosr_jax import keys, metrics
from fecosr_jax import mesh as mesh_lib
from fecosr_jax.errors import check_ranges
from fecosr_jax.model import ModelConfig, SequenceModel, scores

KS = (5, 10, 20)


def target_ranks(item_scores: jax.Array, targets: jax.Array, item_mask: jax.Array) -> jax.Array:
    """[...] int32: items of the catalogue scored strictly above the target."""
    s = jnp.where(item_mask, item_scores, -jnp.inf)
    s_t = jnp.take_along_axis(s, targets[..., None], axis=-1)
    return jnp.sum(s > s_t, axis=-1).astype(jnp.int32)


def rank_metrics(ranks: jax.Array, valid: jax.Array, ks: Sequence[int] = KS) -> dict:
    """Sums over users of HR/NDCG/MRR@k (name "hr@10" ...; fecosr_jax.metrics) and the user
    count ("count")."""
    out = {"count": jnp.sum(valid.astype(jnp.float32))}
    for k in ks:
        for name in ("hr", "ndcg", "mrr"):
            value = metrics.at_k(name, ranks, k, xp=jnp, dtype=jnp.float32)
            out[f"{name}@{k}"] = jnp.sum(jnp.where(valid, value, 0.0))
    return out


def _chunks(x: jax.Array, size: int) -> jax.Array:
    """[U, ...] -> [chunks, size, ...], zero-padded."""
    n = -(-x.shape[0] // size) * size
    x = jnp.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(n // size, size, *x.shape[1:])


PROTOCOLS = ("full", "sampled99")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """config.eval, typed and checked when built (a ConfigError names the field); its
    defaults are experiments/configs/default.py's.

    Attributes:
      protocol: "full" (the target ranked against the market's whole catalogue) or
        "sampled99" (against 99 sampled catalogue items).
      mask_seen: mask the items of the user's input sequence (off, as RecBole's comparison
        here).
      batch_size: test users per evaluation step.
    """

    protocol: str = "full"
    mask_seen: bool = False
    batch_size: int = 256

    def __post_init__(self):
        checks = {
            "protocol": (self.protocol in PROTOCOLS, f"one of {', '.join(PROTOCOLS)}"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
        }
        check_ranges("config.eval", self, checks)


NUM_NEGATIVES = 99


def sampled_ranks(item_scores, targets, item_mask, keys) -> jax.Array:
    """[B] rank of the target among 99 negatives drawn from the catalogue with keys [B]."""
    logits = jnp.where(item_mask, 0.0, -jnp.inf)
    negatives = jax.vmap(lambda k: jax.random.categorical(k, logits, shape=(NUM_NEGATIVES,)))(keys)
    s_t = jnp.take_along_axis(item_scores, targets[:, None], axis=-1)
    s_neg = jnp.take_along_axis(item_scores, negatives, axis=-1)
    return jnp.sum(s_neg > s_t, axis=-1).astype(jnp.int32)


def mask_seen_items(item_scores, inputs, targets) -> jax.Array:
    """Scores with the user's input items at -inf, except the target itself."""
    rows = jnp.arange(inputs.shape[0])[:, None]
    masked = item_scores.at[rows, inputs].set(-jnp.inf)
    is_target = jnp.arange(item_scores.shape[-1])[None, :] == targets[:, None]
    return jnp.where(is_target, item_scores, masked)


def market_metric_sums(
    model_config: ModelConfig,
    params,
    inputs,
    targets,
    semantics,
    item_mask,
    market_index=0,
    *,
    ks: Sequence[int] = KS,
    batch_size: int = 256,
    protocol: str = "full",
    mask_seen: bool = False,
    seed: int = 0,
    with_ranks: bool = False,
) -> dict:
    """Metric sums of one market: inputs [U, L], targets [U] (0 = no user), semantics
    [N + 1, d_s], item_mask [N + 1]. Users are scored in chunks of batch_size. With
    `with_ranks`, "ranks" [U] holds each user's target rank (-1 where there is no user)."""
    model = SequenceModel(model_config)
    items = model.apply({"params": params}, semantics, method=SequenceModel.item_embeddings)
    market_key = keys.derive(seed, market_index)

    def chunk(args):
        x, t, users = args
        hidden = model.apply({"params": params}, x, items, method=SequenceModel.encode)
        s = scores(model_config, hidden[:, -1], items, item_mask)
        if mask_seen:
            s = mask_seen_items(s, x, t)
        if protocol == "sampled99":
            keys = jax.vmap(lambda u: jax.random.fold_in(market_key, u))(users)
            ranks = sampled_ranks(s, t, item_mask, keys)
        else:
            ranks = target_ranks(s, t, item_mask)
        return rank_metrics(ranks, t > 0, ks), jnp.where(t > 0, ranks, -1)

    size = min(batch_size, inputs.shape[0])
    users = jnp.arange(inputs.shape[0])
    sums, ranks = jax.lax.map(
        chunk, (_chunks(inputs, size), _chunks(targets, size), _chunks(users, size))
    )
    sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), sums)
    if with_ranks:
        sums["ranks"] = ranks.reshape(-1)[: inputs.shape[0]]  # [U] int32, -1 = no user
    return sums


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
    protocol: str = "full",
    mask_seen: bool = False,
    seed: int = 0,
    per_market_params: bool = False,
    with_ranks: bool = False,
    market_index=None,
    mesh=None,
) -> dict[str, np.ndarray]:
    """Per-market mean metrics [M] (and "count" [M]) for stacked markets.

    Args:
      params: one shared parameter pytree, or (per_market_params=True) one per market
        stacked on a leading axis M.
      inputs [M, U, L], targets [M, U], semantics [M, N + 1, d_s], item_mask [M, N + 1].
      with_ranks: also return "ranks" [M, U] int32, each test user's target rank (-1 where
        there is no user): what the paired tests of fecosr_jax.report.significance need.
      seed: seeds the sampled protocol's negatives; an [R] array evaluates R runs at once
        (params with a leading run axis; every output gains it: [R, M]).
      market_index: [M] each market's index in the sampled protocol's keys
        (StackedMarkets.market_index); default its position.
      mesh: a device mesh (fecosr_jax.mesh) whose devices split the markets (M a multiple of
        its size); default one device.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {PROTOCOLS}")
    options = (tuple(ks), batch_size, protocol, bool(mask_seen), per_market_params, with_ranks)
    seed = np.asarray(seed, np.int32)  # an argument, not part of the program
    runs = bool(seed.ndim)
    market_spec = mesh_lib.markets(False)
    if market_index is None:
        market_index = np.arange(np.shape(inputs)[0])
    data = mesh_lib.put(
        (inputs, targets, semantics, item_mask, np.asarray(market_index, np.int32)),
        mesh,
        market_spec,
    )
    params = mesh_lib.put(params, mesh, mesh_lib.markets(runs) if per_market_params else P())
    seed = mesh_lib.put(seed, mesh, P())
    mesh = mesh if mesh_lib.is_sharded(mesh) else None
    sums = _evaluate_jit(model_config, options, mesh, params, *data, seed)
    return means(mesh_lib.to_host(sums))


def means(sums: dict) -> dict[str, np.ndarray]:
    """Sums -> means per market; "count" and "ranks" pass through."""
    count = np.maximum(np.asarray(sums["count"]), 1)
    return {
        k: (np.asarray(v) if k in ("count", "ranks") else np.asarray(v) / count)
        for k, v in sums.items()
    }


@jax.jit(static_argnums=(0, 1, 2))
def _evaluate_jit(model_config, options, mesh, params, inputs, targets, semantics, item_mask,
                  markets, seed):  # fmt: skip
    """Metric sums of every market (and run); over a mesh of several devices each device
    evaluates its own markets (the sums stay sharded; `evaluate` gathers them)."""
    ks, batch_size, protocol, mask_seen, per_market, with_ranks = options
    runs = bool(seed.ndim)

    def one(p, inputs, targets, semantics, item_mask, market, seed):
        return market_metric_sums(
            model_config,
            p,
            inputs,
            targets,
            semantics,
            item_mask,
            market,
            ks=ks,
            batch_size=batch_size,
            protocol=protocol,
            mask_seen=mask_seen,
            seed=seed,
            with_ranks=with_ranks,
        )

    def one_run(p, inputs, targets, semantics, item_mask, markets, seed):
        return jax.vmap(one, in_axes=(0 if per_market else None, 0, 0, 0, 0, 0, None))(
            p, inputs, targets, semantics, item_mask, markets, seed
        )

    def evaluate_all(p, *data, seed):
        if runs:  # a run axis R: params [R, ...] (or [R, M, ...]), seeds [R]
            return jax.vmap(lambda p, s: one_run(p, *data, s))(p, seed)
        return one_run(p, *data, seed)

    data = (inputs, targets, semantics, item_mask, markets)
    if mesh is None:
        return evaluate_all(params, *data, seed=seed)
    market_spec = mesh_lib.markets(False)
    return jax.shard_map(
        lambda p, *data: evaluate_all(p, *data[:-1], seed=data[-1]),
        mesh=mesh,
        in_specs=(mesh_lib.markets(runs) if per_market else P(), *[market_spec] * 5, P()),
        out_specs=mesh_lib.markets(runs),
    )(params, *data, seed)


def popularity_metric_sums(
    train, targets, item_mask, *, ks: Sequence[int] = KS, with_ranks: bool = False
) -> dict:
    """The popularity baseline of one market: items scored by their training count, ties
    broken at random (a fixed key), so equal counts do not all rank in the target's favour."""
    counts = jnp.zeros(item_mask.shape[0]).at[train.reshape(-1)].add(1.0)
    noise = jax.random.uniform(jax.random.key(0), (targets.shape[0], counts.shape[0]))
    s = counts + 0.5 * noise
    ranks = target_ranks(s, targets, item_mask)
    sums = rank_metrics(ranks, targets > 0, ks)
    if with_ranks:
        sums["ranks"] = jnp.where(targets > 0, ranks, -1)
    return sums


def evaluate_popularity(
    train, targets, item_mask, *, ks: Sequence[int] = KS, with_ranks: bool = False
):
    """Per-market mean metrics [M] of the popularity baseline (and "ranks" [M, U])."""
    sums = jax.jit(
        jax.vmap(lambda a, b, c: popularity_metric_sums(a, b, c, ks=ks, with_ranks=with_ranks))
    )(train, targets, item_mask)
    return means(jax.device_get(sums))
