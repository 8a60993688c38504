"""Multi-process runs (a multi-host TPU pod slice, or several processes on one machine).

Every process runs the same program on the same data (the loaders and splits are
deterministic). The federated round is the only part that spans processes: its market axis is
sharded over the mesh of every process's devices (fecosr_jax.federated.round), and the
aggregation's psum crosses hosts. Fine-tuning and evaluation run, identically, on each
process's own devices. Files (results, logs, plots, progress.json) are written by process 0
alone; orbax coordinates the checkpoint writes itself. All processes must see the same
workdir: a gs:// path on a pod (each TPU VM worker has its own disk).

    python -m experiments.main --distributed ...           # TPU VM: everything auto-detected
    python -m experiments.main --distributed --coordinator_address=127.0.0.1:1234 \
        --num_processes=2 --process_id=0 ...                # by hand (CPU processes: gloo)
"""

from __future__ import annotations

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins this process to the run (jax.distributed.initialize); call before any JAX work.

    With no arguments the cluster is auto-detected (TPU VM workers, SLURM, Kubernetes). CPU
    processes exchange their collectives over gloo.
    """
    # Only read by the CPU backend; without it, CPU processes cannot run cross-process psums.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; always true in one process)."""
    return jax.process_index() == 0
