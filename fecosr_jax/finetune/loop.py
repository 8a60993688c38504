"""Stage 2: local fine-tuning of every market at once (docs/design.md §2, §3).

Each market trains its own copy of the model on its own data with CE, every market in one
compiled epoch function (fecosr_jax/finetune/epoch.py), each with its own early stopping on
validation NDCG@10 (its best parameters kept), in one of the modes of
fecosr_jax/finetune/config.py (adapt, plain, scratch).

Per-market parameters are one pytree whose leaves carry the leading market axis M. Over a
mesh of several devices (fecosr_jax.mesh) the market axis is sharded: each device fine-tunes
and validates its own markets, also across hosts.

The run's seed, lr and shared lr reach the compiled epoch as arrays (`FinetuneValues`), so
every config with the same `FinetuneConfig.program()` (mode, sizes) shares one program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fecosr_jax import evaluation
from fecosr_jax import mesh as mesh_lib
from fecosr_jax.data.split import StackedMarkets
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.finetune import epoch as epoch_lib
from fecosr_jax.finetune.config import FinetuneConfig, FinetuneValues
from fecosr_jax.model import ModelConfig, init_params
from fecosr_jax.store import checkpoint


@dataclasses.dataclass
class FinetuneResult:
    params: Any  # [M, ...] best parameters of each market
    model_config: ModelConfig
    best_valid: np.ndarray  # [M] best validation NDCG@10
    best_epoch: np.ndarray  # [M] epoch of the best parameters (0 = the starting model)
    stop_epoch: np.ndarray  # [M] the last epoch each market trained (`stop_epochs`)
    # One entry per epoch: {"epoch", "valid_ndcg@10" [M], "loss" [M] (NaN for a market that had
    # stopped), "active" [M]}.
    history: list[dict]


def init_market_params(
    model_config: ModelConfig,
    ft: FinetuneConfig,
    shared_params,
    num_markets: int,
    semantic_dim: int,
    market_index=None,
):
    """[M, ...] starting parameters: the pretrained shared part broadcast to every market plus
    a fresh adaptation module each (adapt), the pretrained model (plain), or a fresh model
    (scratch). The fresh parts of the stack's `num_markets` markets are drawn together; with
    `market_index` ([M] positions in that stack, a selection's) M of them are kept, each what
    it is in the whole stack. One compiled program per architecture, mode and M (the seed is
    data)."""
    if market_index is None:
        market_index = np.arange(num_markets)
    return _init_market_params(
        model_config,
        ft.mode,
        num_markets,
        semantic_dim,
        jax.random.key(ft.seed),
        shared_params,
        np.asarray(market_index, np.int32),
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_market_params(
    model_config, mode, num_markets, semantic_dim, key, shared_params, market_index
):
    if mode == "plain":
        return jax.tree.map(
            lambda x: jnp.broadcast_to(x, (len(market_index), *x.shape)), shared_params
        )
    keys = jax.random.split(key, num_markets)[market_index]
    fresh = jax.vmap(lambda k: init_params(model_config, k, semantic_dim))(keys)
    if mode == "scratch":
        return fresh
    flat_shared = dict(jax.tree_util.tree_flatten_with_path(shared_params)[0])

    def pick(path, leaf):
        if epoch_lib.is_local(path):
            return leaf
        return jnp.broadcast_to(flat_shared[path], leaf.shape)

    return jax.tree_util.tree_map_with_path(pick, fresh)


def finetune(
    model_config: ModelConfig,
    ft: FinetuneConfig,
    params,
    data: dict,
    *,
    on_epoch=None,
    checkpoints=None,
    names: list[str] | None = None,
    phase: str = "finetune",
    values: FinetuneValues | None = None,
    run_names: list[str] | None = None,
    steps: int | None = None,
    mesh=None,
) -> FinetuneResult:
    """Fine-tunes every market from `params` [M, ...] with early stopping per market.

    Args:
      model_config: the fine-tuning architecture (`model_config_for`).
      params: [M, ...] starting parameters (`init_market_params`); [R, M, ...] for R runs.
      data: [M, ...] arrays: train, num_rows, semantics, item_mask, valid_inputs,
        valid_targets, market_index (shared by every run).
      on_epoch: optional callback(epoch, valid_ndcg [M], loss [M], active [M]) ([R, M] with
        runs); a market that has stopped (active False) shows its kept best validation
        NDCG@10, and its loss is NaN (it did not train).
      checkpoints: optional checkpoint.PhaseCheckpoints: the whole state (parameters,
        optimiser states, best-so-far parameters, early-stopping counters) is saved after
        every epoch and restored from the newest good checkpoint.
      names: market names (error messages); default m0, m1, ...
      values: the runs' values with a leading run axis R (`fed_round.stack_runs`), for R runs of
        this program at once, each with its own early stopping per market; default ft's own
        values, one run.
      run_names: the runs' names in error messages (default run0, run1, ...).
      steps: optimiser steps per epoch; default `steps_per_epoch(ft, data["num_rows"])`
        (a selection of a run's markets passes the whole run's).
      mesh: a device mesh (fecosr_jax.mesh) whose devices split the markets (M a multiple of
        its size); default one device.

    Returns:
      The best parameters of each market and the validation history (the epochs this call
      ran: a resumed call starts its history at the checkpoint); with runs every array has
      the leading run axis.
    """
    checkpoints = checkpoints or checkpoint.NullPhase()
    num_markets = data["train"].shape[0]
    names = names or [f"m{i}" for i in range(num_markets)]
    steps = steps or steps_per_epoch(ft, data["num_rows"])
    program = ft.program()
    values = mesh_lib.put(ft.values() if values is None else values, mesh, P())
    lead = (*np.shape(values.seed), num_markets)  # (M,) or (R, M)
    if len(lead) == 2:
        run_names = run_names or [f"run{r}" for r in range(lead[0])]
        names = [f"{run} {n}" for run in run_names for n in names]
    spec = mesh_lib.markets(len(lead) == 2)
    data = mesh_lib.put(data, mesh, mesh_lib.markets(False))
    params, opt_state, best = epoch_lib.start(program, len(lead), mesh_lib.put(params, mesh, spec))
    state = {
        "params": params,
        "opt_state": mesh_lib.put(opt_state, mesh, spec),  # every leaf leads with [M]
        "best": best,
        "best_valid": np.zeros(lead, np.float32),
        "best_epoch": np.zeros(lead, np.int32),
        "bad": np.zeros(lead, np.int32),
        "active": np.ones(lead, bool),
        "epoch": np.zeros((), np.int32),
    }
    restored = checkpoints.restore(state)
    if restored is not None:
        state = restored[1]
    else:
        start = evaluation.evaluate(
            model_config,
            params,
            data["valid_inputs"],
            data["valid_targets"],
            data["semantics"],
            data["item_mask"],
            batch_size=ft.eval_batch_size,
            per_market_params=True,
            seed=np.zeros(lead[:-1], np.int32),  # [R] marks a run axis
            mesh=mesh,
        )
        state["best_valid"] = np.asarray(start["ndcg@10"], np.float32)
    best_valid, best_epoch, bad, active = (
        np.asarray(state[k]) for k in ("best_valid", "best_epoch", "bad", "active")
    )
    params, opt_state, best = state["params"], state["opt_state"], state["best"]
    history = []
    for epoch in range(int(state["epoch"]) + 1, ft.max_epochs + 1):
        if not active.any():
            break
        params, opt_state, ndcg, loss = epoch_lib.train_epoch(
            model_config,
            program,
            steps,
            mesh if mesh_lib.is_sharded(mesh) else None,
            params,
            opt_state,
            mesh_lib.put(active, mesh, spec),
            data,
            epoch,
            values,
        )
        ndcg, loss = mesh_lib.to_host((ndcg, loss))
        ndcg = ndcg.astype(np.float32)
        non_finite = (active & ~np.isfinite(loss)).reshape(-1)
        bad_markets = [n for i, n in enumerate(names) if non_finite[i]]
        if bad_markets:
            raise checkpoint.NonFiniteError(
                f"{phase}, epoch {epoch}: non-finite loss in market(s) {', '.join(bad_markets)}. "
                f"The run stopped; the checkpoint of epoch {epoch - 1} is intact"
            )
        improved = active & (ndcg > best_valid)
        best = epoch_lib.keep_improved(mesh_lib.put(improved, mesh, spec), params, best)
        best_valid = np.where(improved, ndcg, best_valid)
        best_epoch = np.where(improved, epoch, best_epoch).astype(np.int32)
        bad = np.where(improved, 0, bad + active).astype(np.int32)
        history.append(
            {"epoch": epoch, "valid_ndcg@10": ndcg, "loss": loss, "active": active.copy()}
        )
        kept = np.where(active, ndcg, best_valid)  # a stopped market: what it keeps (not NaN)
        if on_epoch is not None:
            on_epoch(epoch, kept, loss, active.copy())
        active = active & ((bad < ft.patience) | (epoch < ft.min_epochs))
        state = {
            "params": params,
            "opt_state": opt_state,
            "best": best,
            "best_valid": best_valid,
            "best_epoch": best_epoch,
            "bad": bad,
            "active": active,
            "epoch": np.asarray(epoch, np.int32),
        }
        checkpoints.save(
            epoch,
            state,
            metrics={"valid_ndcg@10": np.mean(kept, axis=-1)},  # per run with a run axis
            last=epoch == ft.max_epochs or not active.any(),
        )
        checkpoints.check_preemption(phase, epoch)
    last = int(state["epoch"])
    return FinetuneResult(
        best,
        model_config,
        best_valid,
        best_epoch,
        stop_epochs(ft, best_epoch, active, last),
        history,
    )


def steps_per_epoch(ft: FinetuneConfig, num_rows) -> int:
    """Optimiser steps per epoch: ft.steps_per_epoch, or one pass over the largest market
    of `num_rows` [M] (its training rows)."""
    return ft.steps_per_epoch or max(1, -(-int(np.max(num_rows)) // ft.batch_size))


def stop_epochs(ft: FinetuneConfig, best_epoch, active, last: int) -> np.ndarray:
    """[...] the last epoch each market trained: `last` (the final epoch run) for a market
    still active, else the epoch the stopping rule ended it, max(best + patience, min_epochs),
    which the rule fixes (`bad` counts the epochs since the best one)."""
    stopped = np.maximum(np.asarray(best_epoch) + ft.patience, ft.min_epochs)
    return np.where(active, last, np.minimum(stopped, last)).astype(np.int32)


def finetune_data(stacked: StackedMarkets, fed: FedConfig) -> dict[str, np.ndarray]:
    """The [M, ...] arrays fine-tuning needs (round data plus validation; host numpy)."""
    data = dict(fed_round.round_data(stacked, fed))
    data["valid_inputs"] = stacked.valid_inputs
    data["valid_targets"] = stacked.valid_targets
    return data
