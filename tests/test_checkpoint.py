"""Checkpoint files: incomplete, relative and full-disk saves, which steps are kept, the packed
layout (every dtype and sharding, a newer layout refused, the old leaf-by-leaf one still read),
and a group's newest common step."""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fecosr_jax import errors, preemption
from fecosr_jax.store import checkpoint, checkpoint_layout


def test_incomplete_save_is_reported_and_ignored(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32), "step": np.zeros((), np.int32)}
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False)
    phase.save(1, state)
    phase.close()
    (tmp_path / "2.orbax-checkpoint-tmp-1234").mkdir()  # a save killed half-way
    with pytest.warns(UserWarning, match="an incomplete checkpoint"):
        phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False)
    step, restored = phase.restore(state)
    assert step == 1 and np.array_equal(restored["w"], state["w"])
    phase.close()
    assert not (tmp_path / "2.orbax-checkpoint-tmp-1234").exists()


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch):
    # README's main command uses a relative workdir (workdir/default); orbax wants absolute paths.
    monkeypatch.chdir(tmp_path)
    state = {"w": np.arange(4, dtype=np.float32)}
    phase = checkpoint.PhaseCheckpoints(
        "workdir/checkpoints/p", keep=2, best=False, async_save=True
    )
    phase.save(1, state)
    phase.close()
    step, restored = checkpoint.PhaseCheckpoints(
        "workdir/checkpoints/p", keep=2, best=False, async_save=False
    ).restore(state)
    assert step == 1 and np.array_equal(restored["w"], state["w"])
    assert (tmp_path / "workdir" / "checkpoints" / "p" / "1").is_dir()


def test_a_full_disk_stops_before_the_save_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    state = {"w": np.arange(2**18, dtype=np.float32)}  # 1 MiB, + 1 MiB of margin
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=True)
    phase.save(1, state)
    usage = shutil.disk_usage(tmp_path)
    free = 2 * 2**20 - 1  # one byte short
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=free))
    with pytest.raises(checkpoint.DiskFull) as e:
        phase.save(2, {"w": state["w"] + 1})
    assert str(e.value).startswith(
        f"{tmp_path}: no space left for checkpoint step 2 (needs up to 2.0 MiB, 2.0 MiB free"
    )
    assert "ENOSPC" in str(e.value) and "re-run the same command to resume" in str(e.value)
    phase.close()
    step, restored = checkpoint.PhaseCheckpoints(
        tmp_path, keep=2, best=False, async_save=False
    ).restore(state)
    assert step == 1 and np.array_equal(restored["w"], state["w"])  # step 1, whole
    # with room for it, the same save goes through
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=free + 1))
    checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False).save(2, state)
    assert (tmp_path / "2").is_dir()


def test_keeps_the_latest_and_the_best(tmp_path):
    state = {"w": np.zeros(3, np.float32)}
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=True, async_save=False)
    for step, ndcg in enumerate([0.1, 0.5, 0.2, 0.3, 0.25], start=1):
        phase.save(step, state, metrics={"valid_ndcg@10": ndcg})
    phase.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 4, 5]


def mixed_state():
    """Device arrays on one device and sharded over four, host arrays, several dtypes."""
    mesh = jax.make_mesh((4,), ("markets",), devices=jax.devices()[:4])
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("markets"))
    return {
        "params": {
            "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7,
            "per_market": jax.device_put(jnp.linspace(-1, 1, 24).reshape(4, 6), sharded),
            "b": jnp.full((2,), 0.5, jnp.bfloat16),
        },
        "active": np.array([True, False, True, True]),
        "bad": np.arange(4, dtype=np.int32),
        "epoch": np.asarray(3, np.int32),
        "round": jnp.asarray(5, jnp.int32),
    }


def test_a_packed_checkpoint_restores_every_array_dtype_and_sharding(tmp_path):
    state = mixed_state()
    packed = checkpoint_layout.pack(state)
    # one array per dtype: 12 + 24 float32 values, 4 + 1 + 1 int32, 4 bool, 2 bfloat16
    assert {k: v.shape for k, v in packed.items()} == {
        "float32": (36,),
        "bfloat16": (2,),
        "bool": (4,),
        "int32": (6,),
    }
    np.testing.assert_array_equal(packed["int32"], [0, 1, 2, 3, 3, 5])  # leaf order
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=True)
    phase.save(1, state)
    phase.close()
    target = jax.tree.map(jnp.zeros_like, state)
    target["active"], target["bad"], target["epoch"] = (
        np.zeros(4, bool),
        np.zeros(4, np.int32),
        np.asarray(0, np.int32),
    )
    step, got = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False).restore(
        target
    )
    assert step == 1
    for path, want in jax.tree_util.tree_leaves_with_path(state):
        x = functools.reduce(lambda t, k: t[k.key], path, got)
        assert type(x) is type(want) and x.dtype == want.dtype and x.shape == want.shape, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(want))
        if isinstance(want, jax.Array):
            assert x.sharding == want.sharding, path
    # A state of another shape cannot take this checkpoint: it is reported and removed.
    other = {**target, "bad": np.zeros(5, np.int32)}
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False)
    with pytest.warns(UserWarning, match="1: checkpoint unreadable or corrupt"):
        assert phase.restore(other) is None
    assert phase.steps() == []


def test_a_checkpoint_in_a_newer_layout_is_refused_and_kept(tmp_path, monkeypatch):
    state = mixed_state()
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False)
    phase.save(1, state)
    monkeypatch.setattr(checkpoint_layout, "LAYOUT", "packed/9")  # as a newer version writes
    phase.save(2, state)
    monkeypatch.undo()
    with pytest.raises(checkpoint.UnknownLayout, match=r"2: a checkpoint in layout 'packed/9'"):
        phase.restore(jax.tree.map(jnp.zeros_like, state))
    assert phase.steps() == [1, 2]  # not taken for a corrupt one: nothing deleted
    assert errors.exit_code(checkpoint.UnknownLayout("x")) == errors.EXIT_BAD_INPUT
    phase.close()


def test_a_checkpoint_saved_leaf_by_leaf_still_restores(tmp_path):
    # Checkpoints written before the packed layout (no "layout" in their meta) resume.
    state = mixed_state()
    manager = ocp.CheckpointManager(tmp_path, item_names=("state", "meta"))
    manager.save(
        4,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(
                {"step": 4, "fingerprint": checkpoint_layout.fingerprint(state)}
            ),
        ),
    )
    manager.wait_until_finished()
    manager.close()
    phase = checkpoint.PhaseCheckpoints(tmp_path, keep=2, best=False, async_save=False)
    step, got = phase.restore(jax.tree.map(jnp.zeros_like, state))
    assert step == 4
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), got, state))
    assert got["params"]["per_market"].sharding == state["params"]["per_market"].sharding
    phase.close()


def test_group_phase_restores_the_newest_step_every_run_has(tmp_path):
    def phase(name):
        return checkpoint.PhaseCheckpoints(tmp_path / name, keep=3, best=False, async_save=False)

    runs = [phase("run0"), phase("run1")]
    state = lambda r, step: {
        "w": np.full(3, 10 * r + step, np.float32),
        "epoch": np.asarray(step, np.int32),
    }  # noqa: E731
    for step in (1, 2, 3):  # run1 was killed before its save of step 3
        runs[0].save(step, state(0, step))
        if step < 3:
            runs[1].save(step, state(1, step))
    target = {"w": np.zeros((2, 3), np.float32), "epoch": np.asarray(0, np.int32)}
    step, got = checkpoint.GroupPhase(runs).restore(target)
    assert step == 2 and int(got["epoch"]) == 2  # the shared scalar stays a scalar
    np.testing.assert_array_equal(got["w"], [[2, 2, 2], [12, 12, 12]])
    # A run with nothing to restore: the group starts again, and the others' steps go.
    fresh = phase("run2")
    with pytest.warns(UserWarning, match="starts again for the group"):
        assert checkpoint.GroupPhase([runs[0], fresh]).restore(target) is None
    assert runs[0].steps() == []
    for p in (*runs, fresh):
        p.close()


def test_ctrl_c_once_asks_the_run_to_stop_and_twice_stops_it_at_once():
    """The training loops' handler: the first Ctrl-C (SIGINT) only asks for a stop after the
    step in progress is saved, named in the message; a second raises KeyboardInterrupt at
    once; a SIGINT the process was started to ignore (a background job) stays ignored; the
    handlers before are back afterwards."""
    import os
    import signal
    import time

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    try:
        with preemption.Handler():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert preemption.requested()
            with pytest.raises(errors.Preempted, match="^Ctrl-C: stopped after finetune_x step 3"):
                checkpoint.NullPhase().check_preemption("finetune_x", 3)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with preemption.Handler():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            with pytest.raises(errors.Preempted, match="^SIGTERM: stopped after finetune_x"):
                checkpoint.NullPhase().check_preemption("finetune_x", 3)
            os.kill(os.getpid(), signal.SIGINT)  # after a SIGTERM, Ctrl-C twice still stops
            time.sleep(0.01)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with preemption.Handler():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert not preemption.requested()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
