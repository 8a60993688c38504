"""Stage 2's compiled epoch (fecosr_jax.finetune.loop runs the epochs): every (run and) market's
CE steps on its own data, then its validation NDCG@10, in one program per
`FinetuneConfig.program()`, each market with its own Adam state and, in adapt mode, a shared
part frozen or trained at its own learning rate.

Shapes: M markets, R runs; per-market parameters and optimiser states are pytrees whose
leaves lead with [M] (one run) or [R, M]; `active` is [M] or [R, M]. The pairs train all at
once (vmapped) or one after another (lax.map, a stopped market skipped by lax.cond):
`markets_at_once`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from fecosr_jax import evaluation, keys
from fecosr_jax import mesh as mesh_lib
from fecosr_jax.federated.client import batch_loss
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.finetune.config import FinetuneConfig, FinetuneValues
from fecosr_jax.model import ModelConfig

LOCAL_MODULES = ("item_ids", "adapter_down", "adapter_up")  # the market-specific parameters


def is_local(path) -> bool:
    """Whether a parameter (by its tree path) belongs to the market-specific module."""
    return any(getattr(k, "key", None) in LOCAL_MODULES for k in path)


def make_optimizer(
    ft: FinetuneConfig, params, values: FinetuneValues | None = None
) -> optax.GradientTransformation:
    """Adam with the run's learning rates (`values`, default ft's own); in adapt mode the
    shared part gets its own lr, or none (frozen). The state does not hold the rates."""
    values = ft.values() if values is None else values
    if ft.mode != "adapt":
        return optax.adam(values.lr)
    shared = optax.adam(values.shared_lr) if ft.shared_lr_mult else optax.set_to_zero()
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "local" if is_local(p) else "shared", params
    )
    return optax.multi_transform({"local": optax.adam(values.lr), "shared": shared}, labels)


def _select(mask, new, old):
    """Per-market choice between two pytrees: mask [M] (or [R, M]) over leaves [M, ...] (or
    [R, M, ...])."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b),
        new,
        old,
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def start(ft: FinetuneConfig, num_lead: int, params):
    """The epoch loop's starting parameters, optimiser states and best-so-far parameters from
    params [M, ...] (num_lead 1) or [R, M, ...] (2), in one program. The parameters are
    copies: the epoch donates them, and the caller's `params` stay valid."""
    init = make_optimizer(ft, jax.tree.map(lambda x: x[(0,) * num_lead], params)).init
    for _ in range(num_lead):
        init = jax.vmap(init)
    return jax.tree.map(jnp.copy, params), init(params), jax.tree.map(jnp.copy, params)


@jax.jit
def keep_improved(improved, params, best):
    """The best parameters so far: `params` where a market improved, else `best`."""
    return _select(improved, params, best)


@jax.jit(static_argnums=(0, 1, 2, 3), donate_argnums=(4, 5))
def train_epoch(model_config, ft, steps, mesh, params, opt_state, active, data, epoch, values):
    """`run_epoch` compiled; with values of shape [R] it runs R runs at once (parameters,
    optimiser states [R, M, ...], active [R, M]; the market data shared by every run). Over a
    mesh of several devices each device trains its own markets (shard_map; nothing crosses
    devices: the host gathers the validation NDCG and loss)."""
    one = functools.partial(run_epoch, model_config, ft, steps)
    if not mesh_lib.is_sharded(mesh):
        return one(params, opt_state, active, data, epoch, values)
    lead = mesh_lib.markets(bool(jnp.ndim(values.seed)))
    return jax.shard_map(
        one,
        mesh=mesh,
        in_specs=(lead, lead, lead, mesh_lib.markets(False), P(), P()),
        out_specs=(lead, lead, lead, lead),
    )(params, opt_state, active, data, epoch, values)


def markets_at_once(ft: FinetuneConfig, num: int) -> int:
    """How many of a device's `num` (run, market) pairs fine-tune together (vmapped)."""
    if ft.markets_per_step:
        return min(ft.markets_per_step, num)
    return 1 if jax.default_backend() == "cpu" else num


def run_epoch(
    model_config: ModelConfig,
    ft: FinetuneConfig,
    steps: int,
    params,
    opt_state,
    active,
    data,
    epoch,
    values: FinetuneValues,
):
    """One epoch of every (run and) market: `steps` CE steps, then validation NDCG@10; a
    market that has stopped (active False) keeps its parameters and optimiser state, and
    reports NaN. ft is a program (`FinetuneConfig.program()`); each run's seed and rates are
    `values`. The (run, market) pairs go `markets_at_once` at a time: all at once vmapped,
    or one after another (lax.map), where a stopped market is skipped (lax.cond) instead of
    computed and discarded."""
    loss_config = FedConfig(loss="ce", loss_impl=ft.loss_impl, block_size=ft.block_size)

    def market_epoch(p, o, market, values: FinetuneValues):
        optimizer = make_optimizer(ft, p, values)
        loss_values = loss_config.values().replace(dropout_keep=values.dropout_keep)
        key = keys.derive(values.seed, keys.FINETUNE, epoch, market["market_index"])

        def step(carry, k):
            p, o = carry
            batch_key, dropout_key = jax.random.split(jax.random.fold_in(key, k))
            rows = market["train"][
                jax.random.randint(
                    batch_key, (ft.batch_size,), 0, jnp.maximum(market["num_rows"], 1)
                )
            ]
            (loss, _), grads = jax.value_and_grad(
                lambda q: batch_loss(
                    model_config, loss_config, q, rows, market, dropout_key, loss_values
                ),
                has_aux=True,
            )(p)
            updates, o = optimizer.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), loss

        (p, o), losses = jax.lax.scan(step, (p, o), jnp.arange(steps))
        sums = evaluation.market_metric_sums(
            model_config,
            p,
            market["valid_inputs"],
            market["valid_targets"],
            market["semantics"],
            market["item_mask"],
            ks=(10,),
            batch_size=ft.eval_batch_size,
        )
        return p, o, sums["ndcg@10"] / jnp.maximum(sums["count"], 1), jnp.mean(losses)

    lead = active.shape  # (M,) or (R, M)
    at_once = markets_at_once(ft, active.size)
    nan = jnp.full(lead, jnp.nan, jnp.float32)
    if at_once == active.size:  # every pair in one batch
        one = jax.vmap(market_epoch, in_axes=(0, 0, 0, None))
        if len(lead) == 2:
            one = jax.vmap(one, in_axes=(0, 0, None, 0))
        new_p, new_o, ndcg, loss = one(params, opt_state, data, values)
        return (
            _select(active, new_p, params),
            _select(active, new_o, opt_state),
            jnp.where(active, ndcg, nan),
            jnp.where(active, loss, nan),
        )

    def pair_epoch(args):
        p, o, act, i = args
        market = jax.tree.map(lambda x: x[i % lead[-1]], data)
        own = jax.tree.map(lambda x: x[i // lead[-1]], values) if len(lead) == 2 else values
        nothing = jnp.where(act, jnp.float32(jnp.nan), jnp.float32(jnp.nan))  # typed as act
        return jax.lax.cond(
            act, lambda: market_epoch(p, o, market, own), lambda: (p, o, nothing, nothing)
        )

    def pairs(tree):  # [R, M, ...] -> [R * M, ...]
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(lead) :]), tree)

    out = jax.lax.map(
        pair_epoch,
        (pairs(params), pairs(opt_state), active.reshape(-1), jnp.arange(active.size)),
        batch_size=at_once if at_once > 1 else None,
    )
    return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), out)
