"""Checkpoints, exact resume and faults: orbax under WORKDIR/checkpoints/.

A run is a sequence of phases: each pretraining (`pretrain_<kind>`, one step per federated
round) and each method's fine-tuning (`finetune_<method>`, one step per epoch). Each phase has
its own orbax CheckpointManager in WORKDIR/checkpoints/<phase>/<step>/, holding:

  state: the phase's whole training state (orbax StandardSave: OCDBT/zarr, no pickles):
         server params + optimiser state + round, or the per-market parameters, their
         optimiser states, the best-so-far parameters and early-stopping counters; packed
         into one flat array per dtype (fecosr_jax/store/checkpoint_layout.py: orbax's cost is
         per array).
  meta:  JSON: step, the layout, and a fingerprint of every saved array (verified on
         restore, so a corrupted checkpoint is detected, reported and skipped).

Randomness is stateless: batches, dropout and client sampling derive from (seed, round or
epoch, market, step), so the step counter is the whole RNG and sampler state, and a resumed
run repeats the uninterrupted one bit for bit on the same machine.

WORKDIR/checkpoints/progress.json (fecosr_jax/store/resume.py) records the run's config and every
finished method's per-market results, so a resumed run skips finished methods and a finished
run only reports. A workdir may be a gs:// path: orbax writes it through tensorstore, and the other
outputs go through etils.epath (which needs `pip install gcsfs` for gs://).
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from fecosr_jax import preemption
from fecosr_jax.errors import EXIT_PREEMPTED, BadInput, DiskFull, NonFiniteError, Preempted  # noqa: F401
from fecosr_jax.store import checkpoint_layout as layout
from fecosr_jax.store.files import is_remote


def processes_without(ok: bool) -> list[int]:
    """The processes whose `ok` is False. In a run over several processes every one calls it
    (a collective), so all of them stop together: one stopping alone would leave the others
    waiting in orbax's save for it."""
    if jax.process_count() == 1:
        return [] if ok else [0]
    oks = np.asarray(multihost_utils.process_allgather(np.asarray(ok))).reshape(-1)
    return [p for p, good in enumerate(oks.tolist()) if not good]


class UnknownLayout(BadInput):
    """A checkpoint whose meta names a layout this version cannot read (written by a newer
    fecosr_jax): refused, and kept, not taken for a corrupt one and deleted."""


# ---------------------------------------------------------------------------------------------
# One phase's checkpoints.


class PhaseCheckpoints:
    """The orbax checkpoints of one phase: save after each step, restore the newest good one.

    Keeps the latest `keep` steps; with `best` (fine-tuning) also the step with the highest
    `valid_ndcg@10` metric."""

    def __init__(self, directory, *, keep: int, best: bool, async_save: bool, every: int = 1):
        # orbax needs an absolute path; a relative workdir is relative to the current folder.
        self.directory = epath.Path(
            directory if is_remote(directory) else os.path.abspath(directory)
        )
        self.every = max(1, every)
        incomplete = (
            sorted(p.name for p in self.directory.iterdir() if ".orbax-checkpoint-tmp" in p.name)
            if self.directory.exists()
            else []
        )
        for name in incomplete:
            warnings.warn(
                f"{self.directory / name}: an incomplete checkpoint (a save was interrupted); "
                "it is ignored and removed",
                stacklevel=2,
            )
        policies = [checkpoint_managers.LatestN(keep)]
        if best:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m["valid_ndcg@10"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            ),
            item_names=("state", "meta"),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, target, *, at_most: int | None = None) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint (at most `at_most`) that restores and matches
        its fingerprint, with the arrays of `target` (shapes, dtypes, shardings); None when
        there is none. Newer checkpoints that fail are reported and deleted; one in a layout
        this version does not know raises UnknownLayout and stays."""
        steps = [s for s in self.steps() if at_most is None or s <= at_most]
        for step in reversed(steps):
            try:
                state = self._restore(step, target)
            except UnknownLayout:
                raise
            except Exception as e:  # any failure: fall back to an older checkpoint
                warnings.warn(
                    f"{self.directory / str(step)}: checkpoint unreadable or corrupt "
                    f"({type(e).__name__}: {str(e)[:300]}); using an older one",
                    stacklevel=2,
                )
                self.manager.delete(step)
                continue
            return step, state
        return None

    def _restore(self, step: int, target):
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        written = meta["meta"].get("layout")  # None: leaf by leaf, before LAYOUT
        if written not in (None, layout.LAYOUT):
            raise UnknownLayout(
                f"{self.directory / str(step)}: a checkpoint in layout {written!r}, which "
                f"this version of fecosr_jax cannot read (it reads {layout.LAYOUT!r} and the "
                "leaf-by-leaf one before it): run the version that wrote it, or use a new "
                "--workdir; the checkpoint is kept"
            )
        packed = written == layout.LAYOUT
        saved_like = layout.packed_like(target) if packed else layout.leaf_by_leaf(target)
        saved = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(saved_like))
        )["state"]
        if meta["meta"]["fingerprint"] != layout.fingerprint(saved):
            raise ValueError("its arrays do not match the fingerprint saved with them")
        return layout.unpack(saved, target) if packed else layout.from_leaf_by_leaf(saved, target)

    def due(self, step: int, last: bool = False) -> bool:
        """Whether save(step) writes: every `every` steps, at the last one, and on SIGTERM."""
        return last or step % self.every == 0 or preemption.requested()

    def save(self, step: int, state, *, metrics: dict | None = None, last: bool = False):
        """Saves `state` as `step` (when `due`)."""
        if not self.due(step, last):
            return
        self._check_space(step, state)
        packed = layout.pack(state)
        meta = {"step": step, "layout": layout.LAYOUT, "fingerprint": layout.fingerprint(packed)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(packed), meta=ocp.args.JsonSave(meta)
            ),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True,
        )

    def _check_space(self, step: int, state):
        """Raises DiskFull when the disk cannot hold the step's arrays (their raw size, an
        upper bound of what orbax writes, plus 1 MiB): a full disk mid-save leaves orbax's
        threads failing in dozens of tracebacks. Remote paths are not checked."""
        if is_remote(self.directory):
            return
        need = sum(
            np.asarray(x).nbytes if np.isscalar(x) else x.nbytes for x in jax.tree.leaves(state)
        )
        need += 2**20
        free = shutil.disk_usage(self.directory).free
        if free < 2 * need:  # a save still in flight may be using the space: let it finish
            self.manager.wait_until_finished()
            free = shutil.disk_usage(self.directory).free
        short = processes_without(free >= need)
        if not short:
            return
        if jax.process_index() in short:
            why = f"needs up to {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free on the disk"
        else:
            why = f"on the disk of process {', '.join(map(str, short))}"
        raise DiskFull(
            f"{self.directory}: no space left for checkpoint step {step} ({why}; ENOSPC). The "
            "checkpoints saved before it are intact: free space, then re-run the same command "
            "to resume"
        )

    def delete_after(self, step: int):
        """Deletes the checkpoints newer than `step` (-1: all of them)."""
        for newer in self.steps():
            if newer > step:
                self.manager.delete(newer)

    def check_preemption(self, phase: str, step: int):
        """After a step's save: on SIGTERM or Ctrl-C, finish writing and raise Preempted."""
        if preemption.requested():
            self.manager.wait_until_finished()
            raise Preempted(
                f"{preemption.asked_by()}: stopped after {phase} step {step}, checkpoint saved"
            )

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


class NullPhase:
    """Checkpointing off: the same interface, saving nothing."""

    def steps(self) -> list[int]:
        return []

    def restore(self, target, *, at_most=None):
        return None

    def delete_after(self, step: int):
        pass

    def due(self, step, last=False) -> bool:
        return False

    def save(self, step, state, *, metrics=None, last=False):
        pass

    def check_preemption(self, phase, step):
        if preemption.requested():
            raise Preempted(
                f"{preemption.asked_by()}: stopped after {phase} step {step} (checkpoints are off)"
            )

    def close(self):
        pass


def run_slice(tree, r: int):
    """Run r's part of a grouped state: leaves with a leading run axis are indexed, scalars
    (a step shared by every run of the group) are kept. The device arrays are indexed in one
    program (r is data), not one small program per leaf shape."""
    leaves, treedef = jax.tree.flatten(tree)
    on_device = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and x.ndim]
    sliced = dict(zip(on_device, _index_leaves([leaves[i] for i in on_device], r), strict=True))
    return treedef.unflatten(
        [sliced[i] if i in sliced else x if np.ndim(x) == 0 else x[r] for i, x in enumerate(leaves)]
    )


@jax.jit
def _index_leaves(leaves: list, r):
    return [x[r] for x in leaves]


def stack_run_slices(trees: list, like):
    """The inverse of run_slice for a grouped state shaped like `like`: the runs' states
    stacked on a leading axis, except `like`'s scalars (the shared step), taken from the
    first run."""

    def stack(ref, *xs):
        if np.ndim(ref) == 0:
            return xs[0]
        # device arrays stay on their devices (markets sharded over several hosts included)
        return jnp.stack(xs) if isinstance(xs[0], jax.Array) else np.stack(xs)

    return jax.tree.map(stack, like, *trees)


def group_phase(phases: list):
    """The checkpoints of a phase's runs: a run alone saves in its own phase, a group in a
    GroupPhase; runs without checkpoints need no per-run slices of the state."""
    if len(phases) == 1 or all(isinstance(p, NullPhase) for p in phases):
        return phases[0]
    return GroupPhase(phases)


class GroupPhase:
    """One phase's checkpoints for R runs trained together (a run axis). Run r's slice of the
    grouped state is saved in that run's own PhaseCheckpoints, exactly as the run alone saves
    it, so a group resumes from its runs' checkpoints (and a run alone from its slice). A
    group restores the newest step that every run can restore."""

    def __init__(self, phases: list):
        self.phases = phases

    def restore(self, target) -> tuple[int, Any] | None:
        targets = [run_slice(target, r) for r in range(len(self.phases))]
        bound = None
        while True:
            restored = [
                p.restore(t, at_most=bound) for p, t in zip(self.phases, targets, strict=True)
            ]
            if any(x is None for x in restored):
                stale = [p for p in self.phases if p.steps()]
                for p in stale:  # a run ahead of the others restarts with them
                    warnings.warn(
                        f"{getattr(p, 'directory', '')}: no step that every run of the group "
                        "can restore; this phase starts again for the group",
                        stacklevel=2,
                    )
                    p.delete_after(-1)
                return None
            steps = {step for step, _ in restored}
            if len(steps) == 1:
                step = steps.pop()
                for p in self.phases:  # a run ahead of the others goes back to this step
                    p.delete_after(step)
                return step, stack_run_slices([state for _, state in restored], target)
            bound = min(steps)

    def save(self, step: int, state, *, metrics: dict | None = None, last: bool = False):
        """Each run's slice saved in its own phase. The grouped state comes to the host in
        one transfer and is sliced there (the bytes each run's device slice would give),
        where R device slices made R programs and R transfers per save."""
        if not any(p.due(step, last) for p in self.phases):
            return
        state = layout.whole_to_host(state)
        for r, phase in enumerate(self.phases):
            run_metrics = (
                None if metrics is None else {k: np.asarray(v)[r] for k, v in metrics.items()}
            )
            phase.save(step, run_slice(state, r), metrics=run_metrics, last=last)

    def check_preemption(self, phase: str, step: int):
        if preemption.requested():
            for p in self.phases[1:]:
                if isinstance(p, PhaseCheckpoints):
                    p.manager.wait_until_finished()
            self.phases[0].check_preemption(phase, step)  # waits for its own, then raises

    def close(self):
        pass  # each run's phase is closed with its RunCheckpoints
