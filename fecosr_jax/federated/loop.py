"""The federated pretraining loop (docs/design.md §2, §3): compiled rounds
(fecosr_jax.federated.round) from a starting model up to the last round, resuming from the
newest good checkpoint, checking every round for non-finite numbers before it is saved, and
stopping cleanly on SIGTERM after a round's checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from fecosr_jax.data.split import StackedMarkets
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig, FedValues
from fecosr_jax.federated.privacy import Plan
from fecosr_jax.model import ModelConfig
from fecosr_jax.store import checkpoint


def run_rounds(
    model_config: ModelConfig,
    fed: FedConfig,
    stacked: StackedMarkets,
    names: list[str],
    num_rounds: int,
    params,
    mesh,
    on_round: Callable[[int, dict], None] | None = None,
    checkpoints=None,
    phase: str = "pretrain",
    values: FedValues | None = None,
    run_names: list[str] | None = None,
    privacy: Sequence[Plan] = (),
):
    """Runs compiled rounds from `params` up to `num_rounds`; returns the final shared params.

    With `checkpoints` (a checkpoint.PhaseCheckpoints) it starts from the newest good
    checkpoint and saves the server state after every round. A non-finite loss, update or
    parameter raises NonFiniteError naming the round and the markets, before anything is
    saved; SIGTERM raises Preempted after the round's checkpoint.

    Runs: with `values` of shape [R] (fed_round.stack_runs) and params [R, ...], the R
    runs train together in each compiled round (checkpoints: a checkpoint.GroupPhase);
    metrics and the returned params carry the run axis, and an error names the run
    (`run_names`).

    With fed.dp on, `privacy` (federated/privacy.py `plan`, one per run) gives each market's
    sampling rate and noise multiplier. The rates are the program's, the same for every run;
    runs whose noise multipliers differ (a sweep over epsilon) get theirs as values.
    """
    checkpoints = checkpoints or checkpoint.NullPhase()
    compiled = fed_round.build_round(model_config, fed, len(names), mesh)
    data = fed_round.round_data(stacked, fed)
    grouped = values is not None
    if fed.dp.enabled:
        if len(privacy) != (np.shape(values.seed)[0] if grouped else 1):
            raise ValueError("federated.dp is on: run_rounds needs each run's privacy plan")
        arrays = [p.arrays(stacked.num_markets) for p in privacy]
        assert all((a["dp_rate"] == arrays[0]["dp_rate"]).all() for a in arrays)
        data.update(arrays[0])
        noise = np.stack([a["dp_noise"] for a in arrays])
        if (noise != noise[0]).any():
            values = values.replace(dp_noise=noise)
    data = compiled.put(data)
    state = compiled.init_runs(params) if grouped else compiled.init(params)
    restored = checkpoints.restore(state)
    if restored is not None:
        state = compiled.replicate(restored[1]) if grouped else restored[1]
    if grouped and run_names is None:
        run_names = [f"run{r}" for r in range(np.shape(values.seed)[0])]
    for r in range(int(np.max(state.round)) + 1, num_rounds + 1):
        state, metrics = compiled.step(state, data, values)
        metrics = jax.device_get(metrics)
        if grouped:
            problems = [
                f"{run}: {p}"
                for i, run in enumerate(run_names)
                if (p := fed_round.non_finite(jax.tree.map(lambda x, i=i: x[i], metrics), names))
            ]
            problem = "; ".join(problems) or None
        else:
            problem = fed_round.non_finite(metrics, names)
        if problem is not None:
            raise checkpoint.NonFiniteError(
                f"{phase}, round {r}: {problem}. The run stopped; the checkpoint of round "
                f"{r - 1} is intact (fix the data, then re-run; or lower the learning rate "
                "and re-run with --overwrite, which moves this run aside)"
            )
        if on_round is not None:
            on_round(r, metrics)
        checkpoints.save(r, state, last=r == num_rounds)
        checkpoints.check_preemption(phase, r)
    return jax.device_get(state.params)
