"""One federated round as one compiled function (docs/design.md §3).

    broadcast w_global -> vmap(client.update) over the stacked market axis (K local steps under
    lax.scan, batches sampled on the device from (seed, round, market, step)) -> weighted sums
    -> psum over the mesh axis "clients" (the only collective) -> server optimiser.

With FedConfig.markets_per_step = b > 0 a device trains its markets b at a time (vmapped) and
the chunks in sequence (lax.map), still inside the one compiled round.

The run's seed, alpha, tau_s, learning rates and FedProx weight are array arguments
(`FedValues`), so every config with the same `FedConfig.program()` shares one compiled round:
the programs are cached per (model, program, mesh, markets), and a 3-seed run, or S²CE and
CE pretraining (alpha = 0), compile it once.

The market axis is sharded over the device mesh axis "clients" (fecosr_jax.mesh) with
jax.shard_map; M is padded to a multiple of the device count with zero-weight markets
(stack_markets(..., num_markets_multiple=devices)). One code path serves 1 CPU, 8 GPUs and a
multi-host TPU pod: after jax.distributed.initialize() the mesh spans every process's devices.

`LoopBackend` runs the same client functions one market at a time: the debugging baseline.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fecosr_jax import keys
from fecosr_jax.data.split import StackedMarkets
from fecosr_jax.federated import server
from fecosr_jax.federated.client import make_client
from fecosr_jax.federated.config import FedConfig, FedValues
from fecosr_jax.mesh import AXIS, make_mesh
from fecosr_jax.model import ModelConfig


def market_weights(stacked: StackedMarkets, weighting: str) -> np.ndarray:
    """[M] float32 aggregation weights: training targets or 1 per real market, 0 for padding."""
    base = stacked.num_train_targets if weighting == "examples" else np.ones(stacked.num_markets)
    return (base * stacked.market_mask).astype(np.float32)


def round_data(stacked: StackedMarkets, fed: FedConfig) -> dict[str, np.ndarray]:
    """The arrays one round needs, each with the leading market axis M (host numpy); with
    DP on also each market's users and their training rows (user-level sampling)."""
    if stacked.semantics is None:
        raise ValueError(
            "federated pretraining on item text vectors needs semantic vectors: set "
            "config.data.semantics (text, npy, synthetic) for this dataset"
        )
    data = {
        "train": stacked.train,
        "num_rows": stacked.num_train_rows,
        "semantics": stacked.semantics,
        "item_mask": stacked.item_mask,
        "market_index": stacked.market_index,
        "weight": market_weights(stacked, fed.weighting),
    }
    if fed.dp.enabled:
        data |= {"num_users": stacked.num_users, "user_rows": stacked.user_rows}
    return data


def full_participation(fed: FedConfig, num_real: int) -> bool:
    return not fed.clients_per_round or fed.clients_per_round >= num_real


def participants(fed: FedConfig, round_: jax.Array, num_real: int, seed=None) -> jax.Array:
    """Sorted indices of the markets that train in this round, from (seed, round); seed an
    int or int32 array (default fed.seed)."""
    if full_participation(fed, num_real):
        return jnp.arange(num_real)
    seed = fed.seed if seed is None else seed
    key = keys.derive(seed, keys.PARTICIPATION, round_)
    return jnp.sort(jax.random.choice(key, num_real, (fed.clients_per_round,), replace=False))


def rounds_trained(fed: FedConfig, num_real: int, upto: int) -> np.ndarray:
    """[upto, num_real] int: in how many of rounds 1..r each market trained, row r - 1 for
    round r (host; participation depends on nothing but (seed, round), so a resumed run
    counts the same)."""
    if full_participation(fed, num_real):
        return np.repeat(np.arange(1, upto + 1)[:, None], num_real, axis=1)
    trained = np.zeros((upto, num_real), np.int64)
    for r in range(upto):  # round r + 1 draws from the server state's round counter, r
        trained[r, np.asarray(participants(fed, jnp.int32(r), num_real))] = 1
    return np.cumsum(trained, axis=0)


def round_metrics(diagnostics: dict, loss, drift, weight, mask, idx, num_markets: int) -> dict:
    """The round's metrics: diagnostics, weighted mean loss, and per-market values [M] (NaN for
    markets that did not train). loss, drift, weight, mask and idx [C] are per trained slot;
    idx maps slots to markets (out-of-range entries are dropped)."""

    def per_market(x):
        return (
            jnp.full((num_markets,), jnp.nan).at[idx].set(jnp.where(mask, x, jnp.nan), mode="drop")
        )

    return {
        **diagnostics,
        "loss": jnp.nansum(loss * weight) / jnp.maximum(jnp.sum(weight), 1e-12),
        "market_loss": per_market(loss),
        "market_drift": per_market(drift),
        "participants": per_market(jnp.ones_like(loss)) == 1,
    }


def non_finite(metrics: dict, names: Sequence[str]) -> str | None:
    """What went non-finite in a round (host metrics), naming the markets; None if nothing."""
    m = len(names)
    trained = np.asarray(metrics["participants"])[:m]
    loss = np.asarray(metrics["market_loss"])[:m]
    bad = [n for i, n in enumerate(names) if trained[i] and not np.isfinite(loss[i])]
    if bad:
        return f"non-finite loss in market(s) {', '.join(bad)}"
    drift = np.asarray(metrics["market_drift"])[:m]
    bad = [n for i, n in enumerate(names) if trained[i] and not np.isfinite(drift[i])]
    if bad or not bool(metrics["params_finite"]):
        return "non-finite client update or shared parameters" + (
            f" (non-finite drift in market(s) {', '.join(bad)})" if bad else ""
        )
    return None


class RoundProgram:
    """The jit-compiled round of one (model, program, mesh, markets):
    `step(state, data, values) -> (state, metrics)`. `num_traces` counts how often it was
    traced (1 after any number of rounds and runs with the same shapes).

    Runs: with values of shape [R] (`stack_runs`) and a state from `init_runs`, one step
    trains R runs x M markets (vmapped over runs outside the market vmap; the market data is
    shared by every run) and every metric gains a leading run axis.
    """

    def __init__(self, model_config: ModelConfig, fed: FedConfig, mesh: Mesh, num_real: int):
        self.fed, self.mesh, self.num_real, self.num_traces = fed, mesh, num_real, 0
        client = make_client(model_config, fed)
        num_devices = mesh.devices.size

        def shard_fn(params, data, round_, values):
            # Each device trains its own copies. Without this cast, differentiating w.r.t. the
            # mesh-invariant params would transpose into a psum of every market's gradient.
            params = jax.lax.pcast(params, AXIS, to="varying")
            if fed.markets_per_step:
                deltas, metrics = jax.lax.map(
                    lambda market: client.update(params, market, round_, values),
                    data,
                    batch_size=fed.markets_per_step,
                )
            else:
                deltas, metrics = jax.vmap(client.update, in_axes=(None, 0, None, None))(
                    params, data, round_, values
                )
            sums = server.local_sums(deltas, data["weight"], data["mask"])
            sums = jax.lax.psum(sums, AXIS)
            mean_delta, diagnostics = server.aggregate(sums)
            return mean_delta, diagnostics, server.drift(deltas, mean_delta), metrics["loss"]

        sharded = jax.shard_map(
            shard_fn,
            mesh=mesh,
            in_specs=(P(), P(AXIS), P(), P()),
            out_specs=(P(), P(), P(AXIS), P(AXIS)),
        )

        def one_round(state: server.ServerState, data: dict, values: FedValues):
            if values.dp_noise is not None:  # this run's noise multipliers [M]
                data = {**data, "dp_noise": values.dp_noise}
                values = values.replace(dp_noise=None)
            num_markets = data["weight"].shape[0]
            if full_participation(fed, num_real):
                idx = jnp.arange(num_markets)  # everyone trains: no gather
                valid = idx < num_real  # padding markets carry weight 0 already
                chosen = dict(data)
            else:
                sampled = participants(fed, state.round, num_real, values.seed)
                count = sampled.shape[0]
                padded = -(-count // num_devices) * num_devices  # whole shards per device
                valid = jnp.arange(padded) < count
                idx = jnp.concatenate([sampled, jnp.zeros(padded - count, sampled.dtype)])
                chosen = jax.tree.map(lambda x: x[idx], data)
            chosen["weight"] = chosen["weight"] * valid
            chosen["mask"] = valid
            scatter_idx = jnp.where(valid, idx, num_markets)  # out of range: dropped
            mean_delta, diagnostics, drift, loss = sharded(
                state.params, chosen, state.round, values
            )
            optimizer = server.make_server_optimizer(fed, values.server_lr)
            new_state = server.server_update(state, mean_delta, optimizer)

            metrics = round_metrics(
                diagnostics, loss, drift, chosen["weight"], chosen["mask"], scatter_idx, num_markets
            )
            metrics["params_finite"] = server.all_finite(new_state.params)
            return new_state, metrics

        def step(state: server.ServerState, data: dict, values: FedValues):
            self.num_traces += 1  # Python side effect: runs only while tracing
            if jnp.ndim(values.seed):  # a run axis R: states and values lead with it
                return jax.vmap(one_round, in_axes=(0, None, 0))(state, data, values)
            return one_round(state, data, values)

        self.step = jax.jit(step, donate_argnums=0)


@functools.cache
def round_program(
    model_config: ModelConfig, fed: FedConfig, mesh: Mesh, num_real: int
) -> RoundProgram:
    """The compiled round of this program (cached: equal arguments share one program)."""
    return RoundProgram(model_config, fed.program(), mesh, num_real)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _server_init(program: FedConfig, runs: bool, params) -> server.ServerState:
    """The initial server state from params, or of R runs from params [R, ...], in one program.
    It holds a copy: the round donates its state, and the caller's `params` stay valid."""
    optimizer = server.make_server_optimizer(program)

    def init(p):
        return server.server_init(jax.tree.map(jnp.copy, p), optimizer)

    return jax.vmap(init)(params) if runs else init(params)


@dataclasses.dataclass
class CompiledRound:
    """One run's round: the shared `RoundProgram` of `fed.program()` with this run's values.
    `step(state, data) -> (state, metrics)`."""

    model_config: ModelConfig
    fed: FedConfig
    mesh: Mesh
    num_real: int

    def __post_init__(self):
        self.program = round_program(
            self.model_config, self.fed.program(), self.mesh, self.num_real
        )
        self.optimizer = server.make_server_optimizer(self.fed)
        self.values = jax.device_put(self.fed.values(), NamedSharding(self.mesh, P()))

    @property
    def num_traces(self) -> int:
        return self.program.num_traces

    def step(self, state: server.ServerState, data: dict, values: FedValues | None = None):
        """One round with this run's values (or `values`)."""
        return self.program.step(state, data, self.values if values is None else values)

    def init(self, params) -> server.ServerState:
        """The initial server state, replicated over the mesh. It is a copy: the round
        donates its state, and the caller's `params` must stay valid."""
        state = _server_init(self.fed.program(), False, params)
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def replicate(self, state: server.ServerState) -> server.ServerState:
        """A (restored, host) state on the devices, replicated over the mesh."""
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def init_runs(self, params) -> server.ServerState:
        """The initial state of R runs from params [R, ...] (each leaf with a run axis)."""
        state = _server_init(self.fed.program(), True, params)
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def put(self, data: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Moves round data to the devices, market axis sharded over "clients"."""
        m, num_devices = data["weight"].shape[0], self.mesh.devices.size
        if m % num_devices:
            raise ValueError(
                f"{m} markets do not divide over {num_devices} devices: stack them "
                f"with num_markets_multiple={num_devices}"
            )
        return jax.device_put(data, NamedSharding(self.mesh, P(AXIS)))


def stack_runs(trees: Sequence):
    """R runs' trees of one structure (their FedValues, FinetuneValues or parameters) as one
    tree of [R, ...] arrays: the run axis of runs that share a program."""
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def build_round(
    model_config: ModelConfig, fed: FedConfig, num_real_markets: int, mesh: Mesh | None = None
) -> CompiledRound:
    """The compiled round for these configs over `mesh` (default: all devices)."""
    return CompiledRound(model_config, fed, mesh or make_mesh(), num_real_markets)


class LoopBackend:
    """The same client functions, one market at a time in Python (debugging, benchmarks)."""

    def __init__(self, model_config: ModelConfig, fed: FedConfig, num_real_markets: int):
        self.fed = fed
        self.num_real = num_real_markets
        self.client = make_client(model_config, fed)
        self.values = fed.values()
        self.optimizer = server.make_server_optimizer(fed)
        self.client_update = jax.jit(self.client.update)
        self.server_update = jax.jit(lambda s, d: server.server_update(s, d, self.optimizer))

    def init(self, params) -> server.ServerState:
        return server.server_init(params, self.optimizer)

    def step(self, state: server.ServerState, data: dict[str, np.ndarray]):
        idx = np.asarray(participants(self.fed, state.round, self.num_real))
        deltas, losses = [], []
        for m in idx.tolist():
            market = {k: v[m] for k, v in data.items()}
            delta, metrics = self.client_update(state.params, market, state.round, self.values)
            deltas.append(delta)
            losses.append(metrics["loss"])
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *deltas)
        weights = jnp.asarray(data["weight"][idx])
        sums = server.local_sums(stacked, weights, jnp.ones(len(idx), bool))
        mean_delta, diagnostics = server.aggregate(sums)
        drift = server.drift(stacked, mean_delta)
        num_markets = data["weight"].shape[0]
        metrics = round_metrics(
            diagnostics,
            jnp.stack(losses),
            drift,
            weights,
            jnp.ones(len(idx), bool),
            jnp.asarray(idx),
            num_markets,
        )
        state = self.server_update(state, mean_delta)
        metrics["params_finite"] = server.all_finite(state.params)
        return state, metrics
