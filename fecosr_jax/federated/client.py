"""Client work of one market in one round: client_init / client_step / client_final.

The same functions run under every backend: vmapped over the stacked market axis inside one
jit (federated/round.py), or one market at a time in a Python loop (the debugging baseline).
A market's data is a dict of its arrays (no market axis):
  train [R, L + 1] int32, num_rows [] int32, semantics [N + 1, d_s] float32,
  item_mask [N + 1] bool, market_index [] int32 (its position in the stack: seeds its RNG).
The functions close over the program (`FedConfig.program()`); the run's seed, alpha, tau_s,
learning rate and FedProx weight come in as `FedValues` arrays. With federated.dp on, each
local step is DP-SGD over the market's users (federated/privacy.py); the market's data then
also holds dp_rate [] float32 (Poisson rate q), dp_noise [] float32 (sigma; the run's own
when its FedValues carry dp_noise, federated/round.py), num_users [] int32 and user_rows
[U, W] int32 (each user's training rows, -1 beyond them: a user is all their windows).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fecosr_jax import keys, losses
from fecosr_jax.data.split import train_pairs
from fecosr_jax.federated.config import FedConfig, FedValues
from fecosr_jax.model import ModelConfig, SequenceModel, scores

Params = Any  # a pytree of arrays (the shared model's parameters)
MarketData = dict[str, jax.Array]  # one market's arrays, see the module docstring


@flax.struct.dataclass
class ClientState:
    params: Params
    opt_state: optax.OptState
    key: jax.Array  # this market's key for this round
    global_params: Params  # w_global, for FedProx and the final delta
    noise: Any = None  # with DP: the Gaussian privatizer's state (its key)


class Client(NamedTuple):
    init: Any  # (global_params, round, market_index, FedValues) -> ClientState
    step: Any  # (ClientState, MarketData, step, FedValues) -> (ClientState, loss)
    final: Any  # (ClientState) -> delta
    update: Any  # (global_params, MarketData, round, FedValues) -> (delta, metrics): K steps


def client_key(seed, round_: jax.Array, market_index: jax.Array) -> jax.Array:
    """The key of one market in one round, from (seed, round, market); seed an int or an
    int32 array."""
    return keys.derive(seed, keys.CLIENT, round_, market_index)


def make_optimizer(name: str, lr) -> optax.GradientTransformation:
    """The client optimiser; lr a float or a float32 array (its state does not hold it)."""
    return {"adam": optax.adam, "sgd": optax.sgd}[name](lr)


def batch_loss(
    model_config: ModelConfig,
    fed: FedConfig,
    params: Params,
    rows: jax.Array,
    market: MarketData,
    dropout_key: jax.Array,
    values: FedValues | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean loss over the training targets of rows [B, L + 1], and their count. alpha, tau_s
    and a dropout rate given as data come from `values` (default: fed's own)."""
    values = fed.values() if values is None else values
    inputs, targets = train_pairs(rows)
    hidden, items = SequenceModel(model_config).apply(
        {"params": params},
        inputs,
        market["semantics"],
        train=True,
        rngs={"dropout": dropout_key},
        dropout_keep=values.dropout_keep,
    )
    alpha = values.alpha if fed.loss == "s2ce" else 0.0
    if fed.loss_impl == "blockwise":
        per_position = losses.s2ce_loss_blockwise(
            hidden.reshape(-1, hidden.shape[-1]) / model_config.score_temperature,
            items,
            targets.reshape(-1),
            market["semantics"],
            market["item_mask"],
            alpha=alpha,
            temperature=values.temperature,
            block_size=fed.block_size,
        )
    else:
        logits = scores(model_config, hidden, items, market["item_mask"])
        if fed.loss == "s2ce":
            per_position = losses.s2ce_loss(
                logits,
                targets,
                market["semantics"],
                market["item_mask"],
                alpha=alpha,
                temperature=values.temperature,
            )
        else:
            per_position = losses.ce_loss(logits, targets, market["item_mask"])
    count = jnp.sum(targets > 0)
    return jnp.sum(per_position) / jnp.maximum(count, 1), count


def poisson_users(key, num_users, rate, size: int, total: int):
    """Poisson sampling of users (each of the first num_users of `total` rows independently
    with probability `rate`), truncated to `size`: (rows [size] int32, padding [size] bool).
    One uniform u per row; a user is sampled when u < rate. Sampled users sort first and, given
    who was sampled, their u are exchangeable: the `size` smallest are a uniformly random
    subset of them (the truncation jax_privacy's accountant assumes)."""
    u = jax.random.uniform(key, (total,))
    u = jnp.where(jnp.arange(total) < num_users, u, 2.0)  # padding rows: never sampled
    rows = jnp.argsort(u)[:size].astype(jnp.int32)
    padding = u[rows] >= rate
    short = size - rows.shape[0]  # fewer rows than the batch: the rest is padding
    return jnp.pad(rows, (0, short)), jnp.pad(padding, (0, short), constant_values=True)


def make_client(model_config: ModelConfig, fed: FedConfig) -> Client:
    """The client functions of this model and program (fed: any config with this program;
    only `fed.program()` is used, the per-run values come as arguments)."""
    fed = fed.program()

    def optimizer(values: FedValues):
        return make_optimizer(fed.client_optimizer, values.client_lr)

    if fed.dp.enabled:
        from jax_privacy import clipping, noise_addition

        expected_users = fed.dp.expected_batch(fed.batch_size)

        def privatizer(stddev, key):  # the key seeds init; update reads it from the state
            return noise_addition.gaussian_privatizer(stddev=stddev, prng_key=key)

        def user_loss(params, rows, dropout_key, market, values):
            """One user's mean loss over their training targets, in all their windows
            (rows [W, L + 1], zero rows beyond their own)."""
            return batch_loss(model_config, fed, params, rows, market, dropout_key, values)[0]

        # Per-user gradients, each clipped to C, summed (padding users contribute zero).
        user_grad = clipping.clipped_grad(
            user_loss,
            l2_clip_norm=fed.dp.clip_norm,
            batch_argnums=1,
            keep_batch_dim=False,
            prng_argnum=2,
            return_values=True,
        )

    def objective(params, global_params, rows, market, key, values):
        loss, count = batch_loss(model_config, fed, params, rows, market, key, values)
        if fed.fedprox_mu:  # on or off is the program's; the weight is the run's
            sq = sum(
                jnp.sum((a - b) ** 2)
                for a, b in zip(
                    jax.tree.leaves(params), jax.tree.leaves(global_params), strict=True
                )
            )
            return loss + 0.5 * values.fedprox_mu * sq, loss
        return loss, loss

    def init(global_params, round_, market_index, values: FedValues):
        return ClientState(
            params=global_params,
            opt_state=optimizer(values).init(global_params),
            key=client_key(values.seed, round_, market_index),
            global_params=global_params,
            noise=privatizer(
                0.0, keys.derive(values.seed, keys.DP_NOISE, round_, market_index)
            ).init(global_params)
            if fed.dp.enabled
            else None,
        )

    def sgd_step(state: ClientState, market: MarketData, step_index, values: FedValues):
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, step_index))
        users = jax.random.randint(
            batch_key, (fed.batch_size,), 0, jnp.maximum(market["num_rows"], 1)
        )
        rows = market["train"][users]
        grads, loss = jax.grad(objective, has_aux=True)(
            state.params, state.global_params, rows, market, dropout_key, values
        )
        updates, opt_state = optimizer(values).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, opt_state=opt_state), loss

    def dp_step(state: ClientState, market: MarketData, step_index, values: FedValues):
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, step_index))
        users, padding = poisson_users(
            batch_key,
            market["num_users"],
            market["dp_rate"],
            fed.batch_size,
            market["user_rows"].shape[0],
        )
        rows = market["user_rows"][users]  # [T, W]: each sampled user's windows, -1 beyond
        windows = jnp.where((rows >= 0)[..., None], market["train"][jnp.maximum(rows, 0)], 0)
        clipped_sum, aux = user_grad(
            state.params, windows, dropout_key, market, values, is_padding_example=padding
        )
        noisy, noise = privatizer(market["dp_noise"] * fed.dp.clip_norm, None).update(
            clipped_sum, state.noise
        )
        grads = jax.tree.map(lambda g: g / expected_users, noisy)
        if fed.fedprox_mu:  # the proximal term reads no user data: added after the noise
            grads = jax.tree.map(
                lambda g, w, w0: g + values.fedprox_mu * (w - w0),
                grads,
                state.params,
                state.global_params,
            )
        updates, opt_state = optimizer(values).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        real = ~padding
        loss = jnp.sum(jnp.where(real, aux.values, 0.0)) / jnp.maximum(jnp.sum(real), 1)
        return state.replace(params=params, opt_state=opt_state, noise=noise), loss

    step = dp_step if fed.dp.enabled else sgd_step

    def final(state: ClientState):
        return jax.tree.map(jnp.subtract, state.params, state.global_params)

    def update(global_params, market: MarketData, round_, values: FedValues):
        state = init(global_params, round_, market["market_index"], values)
        state, step_losses = jax.lax.scan(
            lambda s, k: step(s, market, k, values), state, jnp.arange(fed.local_steps)
        )
        return final(state), {"loss": jnp.mean(step_losses)}

    return Client(init=init, step=step, final=final, update=update)
