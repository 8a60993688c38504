"""Server side: optimisers over the mean client delta, aggregation and heterogeneity
diagnostics (docs/design.md §2).

The server treats -mean_delta as a gradient: FedAvg is SGD on it (lr 1 = plain averaging),
FedAdam and FedYogi are optax's adam and yogi (Reddi et al. 2021).

Aggregation works on sums, so the same code serves one device, many devices (each sums its
markets, then one psum) and the Python-loop backend:
  mean delta      = sum_k w_k delta_k / sum_k w_k
  pairwise cosine = (||sum_k u_k||^2 - K) / (K (K - 1)),  u_k = delta_k / ||delta_k||
  agreement       = ||mean delta|| / (sum_k w_k ||delta_k|| / sum_k w_k)
  drift_k         = ||delta_k - mean delta||
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fecosr_jax.federated.config import FedConfig

Params = object
_EPS = 1e-12


@flax.struct.dataclass
class ServerState:
    params: Params
    opt_state: optax.OptState
    round: jax.Array  # int32 scalar: rounds completed


def make_server_optimizer(fed: FedConfig, lr=None) -> optax.GradientTransformation:
    """The server optimiser of `fed` with learning rate `lr` (a float or a float32 array;
    default fed.server_lr). Its state does not depend on the learning rate."""
    lr = fed.server_lr if lr is None else lr
    if fed.server_optimizer == "fedavg":
        return optax.sgd(lr)
    if fed.server_optimizer == "fedadam":
        return optax.adam(lr, b1=fed.server_b1, b2=fed.server_b2, eps=fed.server_eps)
    return optax.yogi(lr, b1=fed.server_b1, b2=fed.server_b2, eps=fed.server_eps)


def server_init(params: Params, optimizer: optax.GradientTransformation) -> ServerState:
    return ServerState(
        params=params, opt_state=optimizer.init(params), round=jnp.zeros((), jnp.int32)
    )


def server_update(
    state: ServerState, mean_delta: Params, optimizer: optax.GradientTransformation
) -> ServerState:
    """One server step with pseudo-gradient -mean_delta."""
    pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
    updates, opt_state = optimizer.update(pseudo_grad, state.opt_state, state.params)
    return ServerState(
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        round=state.round + 1,
    )


def tree_norms(deltas: Params) -> jax.Array:
    """[C] L2 norm of each client's delta (leaves carry a leading client axis C)."""
    sq = sum(
        jnp.sum(x.reshape(x.shape[0], -1).astype(jnp.float32) ** 2, axis=1)
        for x in jax.tree.leaves(deltas)
    )
    return jnp.sqrt(sq)


def local_sums(deltas: Params, weights: jax.Array, mask: jax.Array) -> dict:
    """Sums over this shard's clients (leading axis C) that `aggregate` combines.

    Args:
      deltas: client deltas, leaves [C, ...].
      weights: [C] aggregation weights (0 for padding and non-participating markets).
      mask: [C] bool, real participating markets (for the unweighted diagnostics).
    """
    norms = tree_norms(deltas)
    unit = mask / jnp.maximum(norms, _EPS)

    def weighted(x, w):
        return jnp.tensordot(w.astype(x.dtype), x, axes=1)

    return {
        "weighted_delta": jax.tree.map(lambda x: weighted(x, weights), deltas),
        "unit_delta": jax.tree.map(lambda x: weighted(x, unit), deltas),
        "weight": jnp.sum(weights),
        "weighted_norm": jnp.sum(weights * norms),
        "count": jnp.sum(mask.astype(jnp.float32)),
    }


def aggregate(sums: dict) -> tuple[Params, dict]:
    """(mean delta, diagnostics) from summed `local_sums`."""
    total = jnp.maximum(sums["weight"], _EPS)
    mean_delta = jax.tree.map(lambda x: x / total, sums["weighted_delta"])
    k = sums["count"]
    unit_sq = sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(sums["unit_delta"]))
    cosine = jnp.where(k > 1, (unit_sq - k) / jnp.maximum(k * (k - 1), 1.0), jnp.nan)
    mean_norm = jnp.sqrt(
        sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(mean_delta))
    )
    agreement = mean_norm / jnp.maximum(sums["weighted_norm"] / total, _EPS)
    return mean_delta, {
        "delta_cosine": cosine,
        "delta_agreement": agreement,
        "mean_delta_norm": mean_norm,
    }


def drift(deltas: Params, mean_delta: Params) -> jax.Array:
    """[C] ||delta_k - mean delta||."""
    return tree_norms(jax.tree.map(lambda d, m: d - m[None], deltas, mean_delta))


def all_finite(tree: Params) -> jax.Array:
    """bool scalar: every entry of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
