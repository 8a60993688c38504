"""A group's checkpoint save: R runs' slices of one grouped training state, each saved in its
run's own orbax checkpoint (fecosr_jax.store.checkpoint.GroupPhase), against slicing each run on the
device first (the code before 2026-11-29: R slicing programs and R transfers per save).

  python -m experiments.bench.group_save [--runs=4] [--steps=30]

The state: the default model's parameters and Adam state, stacked over R runs. Prints a table
last: milliseconds per group save (asynchronous saves, waited for at the end), two rounds of
each, alternated.
"""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from fecosr_jax.model import ModelConfig, init_params
from fecosr_jax.store import checkpoint

_RUNS = flags.DEFINE_integer("runs", 4, "R, runs in the group.")
_STEPS = flags.DEFINE_integer("steps", 30, "Saves timed per measurement.")


def device_slices(group: checkpoint.GroupPhase, step: int, state):
    """The save before: each run's slice taken on the device, then saved."""
    for r, phase in enumerate(group.phases):
        phase.save(step, checkpoint.run_slice(state, r))


def host_slices(group: checkpoint.GroupPhase, step: int, state):
    """GroupPhase.save: the grouped state to the host once, sliced there."""
    group.save(step, state)


def ms_per_save(save, state, runs: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        phases = [
            checkpoint.PhaseCheckpoints(f"{folder}/run{r}", keep=2, best=False, async_save=True)
            for r in range(runs)
        ]
        group = checkpoint.GroupPhase(phases)
        save(group, 0, state)  # compiles the slicing, starts orbax's threads
        for p in phases:
            p.manager.wait_until_finished()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            save(group, step, state)
        for p in phases:
            p.manager.wait_until_finished()
        seconds = (time.perf_counter() - start) / steps
        for p in phases:
            p.close()
    return 1000 * seconds


def main(argv):
    del argv
    runs = _RUNS.value
    params = init_params(ModelConfig(), jax.random.key(0), 32)
    one = {"params": params, "opt": optax.adam(1e-3).init(params)}
    state = jax.tree.map(lambda x: jnp.stack([x] * runs), one)
    state["step"] = jnp.asarray(0, jnp.int32)  # shared by the runs, as a group's is
    values = sum(x.size for x in jax.tree.leaves(one))
    print(f"{len(jax.tree.leaves(state))} arrays, {values:,} values per run, R = {runs}")
    rows = ["| slices taken | ms per group save, 1st | 2nd |", "| --- | ---: | ---: |"]
    measured = {name: [] for name in ("on the device (before)", "on the host (now)")}
    for _ in range(2):
        for name, save in zip(measured, (device_slices, host_slices), strict=True):
            measured[name].append(ms_per_save(save, state, runs, _STEPS.value))
    for name, ms in measured.items():
        rows.append(f"| {name} | {ms[0]:.1f} | {ms[1]:.1f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
