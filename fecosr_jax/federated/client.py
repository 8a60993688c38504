"""Client work of one market in one round: client_init / client_step / client_final.

The same functions run under every backend: vmapped over the stacked market axis inside one
jit (federated/round.py), or one market at a time in a Python loop (the debugging baseline).
A market's data is a dict of its arrays (no market axis):
  train [R, L + 1] int32, num_rows [] int32, semantics [N + 1, d_s] float32,
  item_mask [N + 1] bool, market_index [] int32 (its position in the stack: seeds its RNG).
The functions close over the program (`FedConfig.program()`); the run's seed, alpha, tau_s,
learning rate and FedProx weight come in as `FedValues` arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fecosr_jax import keys, losses
from fecosr_jax.data.market import train_pairs
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
    """Mean loss over the training targets of rows [B, L + 1], and their count. alpha and
    tau_s come from `values` (default: fed's own)."""
    values = fed.values() if values is None else values
    inputs, targets = train_pairs(rows)
    hidden, items = SequenceModel(model_config).apply(
        {"params": params},
        inputs,
        market["semantics"],
        train=True,
        rngs={"dropout": dropout_key},
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


def make_client(model_config: ModelConfig, fed: FedConfig) -> Client:
    """The client functions of this model and program (fed: any config with this program;
    only `fed.program()` is used, the per-run values come as arguments)."""
    fed = fed.program()

    def optimizer(values: FedValues):
        return make_optimizer(fed.client_optimizer, values.client_lr)

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
        )

    def step(state: ClientState, market: MarketData, step_index, values: FedValues):
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

    def final(state: ClientState):
        return jax.tree.map(jnp.subtract, state.params, state.global_params)

    def update(global_params, market: MarketData, round_, values: FedValues):
        state = init(global_params, round_, market["market_index"], values)
        state, step_losses = jax.lax.scan(
            lambda s, k: step(s, market, k, values), state, jnp.arange(fed.local_steps)
        )
        return final(state), {"loss": jnp.mean(step_losses)}

    return Client(init=init, step=step, final=final, update=update)
