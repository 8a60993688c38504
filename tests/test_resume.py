"""Resuming a run: exact resume after SIGKILL (one run in fine-tuning; a group of 3 seeds in
pretraining, fine-tuning and evaluation) and SIGTERM, a non-finite loss, a corrupt newest
checkpoint, a finished run, an incompatible config, the log of a resumed phase, and one writer
per workdir.

The reference is one uninterrupted in-process run of `fecosr` on the tiny config; every
interrupted run must end with the same results.json bytes and bitwise-equal final states."""

import copy
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import test as test_config
from fecosr_jax.federated import round as fed_round
from fecosr_jax.runs import experiment
from fecosr_jax.store import checkpoint, lease, metrics_log, resume
from tests.conftest import ROOT, final_state

ROUNDS = 12


EPOCHS = 4


PRETRAIN = "pretrain_federated_s2ce"


FINETUNE = "finetune_fecosr"


OVERRIDES = {
    "methods": "fecosr",
    "num_rounds": ROUNDS,
    "finetune.max_epochs": EPOCHS,
    "finetune.patience": EPOCHS,
    "plots": False,
    "tensorboard": False,
}


def make_config():
    config = test_config.get_config()
    config.update_from_flattened_dict(OVERRIDES)
    return config


def command(workdir) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/test.py",
        f"--workdir={workdir}",
        *flags,
    ]


def start(workdir) -> subprocess.Popen:
    """The run as a subprocess; its output goes to WORKDIR.log (a pipe could fill up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(f"{workdir}.log", "w")
    return subprocess.Popen(command(workdir), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def output(workdir) -> str:
    return pathlib.Path(f"{workdir}.log").read_text()


def wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


def assert_same_run(workdir, ref_dir):
    got = (pathlib.Path(workdir) / "results.json").read_bytes()
    assert got == (ref_dir / "results.json").read_bytes()
    for phase in (PRETRAIN, FINETUNE):
        step, leaves = final_state(workdir, phase)
        ref_step, ref_leaves = final_state(ref_dir, phase)
        assert step == ref_step, phase
        assert len(leaves) == len(ref_leaves)
        for a, b in zip(leaves, ref_leaves, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), phase  # bitwise on CPU


def kill_round() -> int:
    """A random round to kill at, from a seed that is printed (pytest shows it with a
    failure) and can be set again: FECOSR_KILL_SEED=... reruns the same kill."""
    seed = int(os.environ.get("FECOSR_KILL_SEED", time.time_ns() % 1_000_000))
    kill_after = random.Random(seed).randint(2, ROUNDS - 2)
    print(f"FECOSR_KILL_SEED={seed}: kill after round {kill_after}")
    return kill_after


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, experiment.train_and_evaluate(make_config(), str(workdir))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(reference, tmp_path):
    proc = start(tmp_path)
    wait_for(tmp_path / "checkpoints" / FINETUNE / "1", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    out = output(tmp_path)
    assert proc.returncode == checkpoint.EXIT_PREEMPTED, out
    assert "Re-run the same command to resume" in out
    stopped = int(out.split("stopped after finetune_fecosr step ")[1].split(",")[0])
    assert (tmp_path / "checkpoints" / FINETUNE / str(stopped) / "commit_success.txt").exists()
    progress = json.loads((tmp_path / "checkpoints" / "progress.json").read_text())
    assert not progress["done"] and "fecosr" not in progress["methods"]
    # The same run resumed in this process, whose reference run compiled the programs already.
    experiment.train_and_evaluate(make_config(), str(tmp_path))
    assert_same_run(tmp_path, reference[0])


def test_sigkill_of_a_single_run_in_fine_tuning_then_resume_is_exact(reference, tmp_path):
    """One run killed with SIGKILL after a random fine-tuning epoch: the same command ends
    with the uninterrupted run's results.json bytes and bitwise-equal final states (the
    grouped runs' kills across every phase: experiments/bench/soak.py)."""
    seed = int(os.environ.get("FECOSR_KILL_SEED", time.time_ns() % 1_000_000))
    epoch = random.Random(seed).randint(1, EPOCHS - 1)
    print(f"FECOSR_KILL_SEED={seed}: kill after fine-tuning epoch {epoch}")
    proc = start(tmp_path)
    wait_for(tmp_path / "checkpoints" / FINETUNE / str(epoch), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "results.json").exists()
    experiment.train_and_evaluate(make_config(), str(tmp_path))
    assert_same_run(tmp_path, reference[0])


def poison_market(monkeypatch, market: int, from_round: int):
    """From round `from_round` on, market `market`'s item vectors are NaN (bad data)."""
    original = fed_round.CompiledRound.__post_init__

    def patched(self):
        original(self)
        step = self.step

        def poisoned(state, data, values=None):
            if int(np.max(state.round)) + 1 >= from_round:
                data = {**data, "semantics": data["semantics"].at[market].set(jnp.nan)}
            return step(state, data, values)

        self.step = poisoned

    monkeypatch.setattr(fed_round.CompiledRound, "__post_init__", patched)


def test_nan_stops_naming_round_and_market_and_the_checkpoint_resumes(
    reference, tmp_path, monkeypatch
):
    with monkeypatch.context() as m:
        poison_market(m, market=1, from_round=5)
        with pytest.raises(
            checkpoint.NonFiniteError, match=r"round 5: non-finite loss in market\(s\) m0001\."
        ):
            experiment.train_and_evaluate(make_config(), str(tmp_path))
    step, _ = final_state(tmp_path, PRETRAIN)
    assert step == 4
    results = experiment.train_and_evaluate(make_config(), str(tmp_path))
    assert results == reference[1]
    assert_same_run(tmp_path, reference[0])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(
    reference, tmp_path, monkeypatch, damage
):
    with monkeypatch.context() as m:
        poison_market(m, market=0, from_round=6)
        with pytest.raises(checkpoint.NonFiniteError, match="m0000"):
            experiment.train_and_evaluate(make_config(), str(tmp_path))
    newest = tmp_path / "checkpoints" / PRETRAIN / "5" / "state"
    files = sorted(p for p in newest.rglob("*") if p.is_file() and "/d/" in str(p))
    assert files
    for path in files:
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        else:
            path.write_bytes(bytes(b ^ 0x5A for b in data))
    with pytest.warns(UserWarning, match=r"5: checkpoint unreadable or corrupt"):
        experiment.train_and_evaluate(make_config(), str(tmp_path))
    assert_same_run(tmp_path, reference[0])


def test_finished_run_only_reports(reference, tmp_path):
    ref_dir, results = reference
    metrics = (ref_dir / "metrics.jsonl").read_bytes()
    assert experiment.train_and_evaluate(make_config(), str(ref_dir)) == results
    assert (ref_dir / "metrics.jsonl").read_bytes() == metrics


def test_incompatible_config_names_the_fields(reference):
    ref_dir, _ = reference
    config = make_config()
    config.federated.alpha = 0.5
    config.num_rounds = ROUNDS + 1
    with pytest.raises(resume.IncompatibleCheckpoint) as e:
        experiment.train_and_evaluate(config, str(ref_dir))
    assert "federated.alpha (checkpoint 0.2, now 0.5)" in str(e.value)
    assert f"num_rounds (checkpoint {ROUNDS}, now {ROUNDS + 1})" in str(e.value)
    assert "Use a new --workdir, --overwrite to move this run aside" in str(e.value)  # ways out
    # Fields that do not change results may differ.
    config = make_config()
    config.plots = True
    config.checkpoint.keep = 5
    resume.RunCheckpoints(str(ref_dir), config.to_dict(), config.checkpoint.to_dict())


def test_checkpoints_hold_no_pickles(reference):
    ref_dir, _ = reference
    files = [p for p in (ref_dir / "checkpoints").rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        is_pickle = data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        assert not is_pickle and path.suffix not in (".pkl", ".pickle"), path


def test_log_drops_the_steps_a_resumed_phase_repeats(tmp_path):
    log = metrics_log.RunLog(str(tmp_path), tensorboard=False)
    for step in range(1, 6):
        log.log("p", "pretrain", step, {"loss": 1.0 / step}, curve="loss")
    log.log("p", "finetune", 1, {"loss": 0.5})
    log.close()
    log = metrics_log.RunLog(str(tmp_path), tensorboard=False)  # a resume from step 2
    log.log("p", "pretrain", 3, {"loss": 0.25}, curve="loss")
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["step"]) for x in lines] == [
        ("pretrain", 1),
        ("pretrain", 2),
        ("finetune", 1),
        ("pretrain", 3),
    ]
    assert log.curves["p pretrain loss"] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_config_fields_added_later_match_their_default_when_absent():
    old = {"seed": 0, "federated": {"alpha": 0.2}}  # a run made before config.seeds existed
    assert resume.config_differences(old, {**old, "seeds": "1"}) == []
    assert resume.config_differences(old, {**old, "seeds": "3"}) == [
        "seeds (checkpoint '1', now '3')"
    ]
    assert resume.config_differences(old, {**old, "extra": 1}) == [
        "extra (checkpoint '<absent>', now 1)"
    ]
    # Nested fields added later (model.norm) count as their default too.
    saved = {"model": {"hidden": 64}}
    assert resume.config_differences(saved, {"model": {"hidden": 64, "norm": "pre"}}) == []
    assert resume.config_differences(saved, {"model": {"hidden": 64, "norm": "post"}}) == [
        "model.norm (checkpoint 'pre', now 'post')"
    ]
    # A run made before the minimum fine-tuning budget stopped on patience alone: resuming
    # it under today's default would change its rule, so it is refused, naming the field.
    saved = {"finetune": {"patience": 3}}
    assert resume.config_differences(saved, {"finetune": {"patience": 3, "min_budget": 0.0}}) == []
    assert resume.config_differences(saved, {"finetune": {"patience": 3, "min_budget": 0.5}}) == [
        "finetune.min_budget (checkpoint 0.0, now 0.5)"
    ]


# Three seeds on one run axis, with user-level DP on (its noise state is part of the round's).
GROUP = {
    "seeds": "3",
    "federated.dp.enabled": True,
    "federated.dp.public": "catalogues,weights",
    "federated.dp.noise_multiplier": 1.0,
}


def test_sigkill_of_a_group_of_seeds_in_every_phase_then_resume_is_exact(tmp_path_factory, capsys):
    """Three seeds train together (one run axis) with DP on. The same command is killed with
    SIGKILL three times: after a random pretraining round, after a random fine-tuning epoch,
    and once the last seed's last fine-tuning epoch is saved (evaluating the test users, or
    writing the results). The resume then ends with the results.json bytes of the
    uninterrupted group, for each seed and combined, and bitwise-equal final states;
    metrics.jsonl holds every round and epoch once."""
    ref_dir = tmp_path_factory.mktemp("group_reference")
    config = make_config()
    config.update_from_flattened_dict(GROUP)
    experiment.train_and_evaluate(config, str(ref_dir))
    workdir = tmp_path_factory.mktemp("group_killed")
    flags = [f"--config.{k}={v}" for k, v in GROUP.items()]
    kill_after = kill_round()
    epoch = random.Random(kill_after).randint(1, EPOCHS - 1)
    print(f"and after fine-tuning epoch {epoch}")
    seeds = ("seed_0", "seed_1", "seed_2")
    kills = [  # (what, the file it waits for); the seeds save in order: the others may lag
        (
            f"after round {kill_after}",
            workdir / seeds[0] / "checkpoints" / PRETRAIN / str(kill_after),
        ),
        (f"after epoch {epoch}", workdir / seeds[1] / "checkpoints" / FINETUNE / str(epoch)),
        ("in evaluation", workdir / seeds[2] / "checkpoints" / FINETUNE / str(EPOCHS)),
    ]
    for i, (when, saved) in enumerate(kills):
        log = open(f"{workdir}.log", "a")
        proc = subprocess.Popen(
            command(workdir) + flags, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(saved, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"killed {when}"
        assert not (workdir / "results.json").exists(), f"killed {when}"
        assert output(workdir).count("resuming from") >= i, when  # a fresh workdir is no resume
    # Resumed in this process, whose reference run compiled the programs already; the command
    # line's config (the flags) and this one must agree, or the resume is refused.
    capsys.readouterr()
    experiment.train_and_evaluate(config, str(workdir))
    assert "resuming from" in capsys.readouterr().out
    got, want = (workdir / "results.json").read_bytes(), (ref_dir / "results.json").read_bytes()
    assert got == want, f"combined results.json, killed after round {kill_after}, epoch {epoch}"
    for seed in seeds:
        assert_same_run(workdir / seed, ref_dir / seed)
        results = json.loads((workdir / seed / "results.json").read_text())
        assert results["privacy"]["federated_s2ce"]["m0000"]["noise_multiplier"] == 1.0
        # Every step logged once: the same lines as the reference's, but for their times.
        assert logged_steps(workdir / seed) == logged_steps(ref_dir / seed), seed


def logged_steps(workdir) -> list[tuple]:
    """metrics.jsonl's lines as (paradigm, stage, step, curve), sorted."""
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return sorted(
        (x["paradigm"], x["stage"], x["step"], x.get("curve", "")) for x in map(json.loads, lines)
    )


def write_xmrec(folder, changed: bool = False):
    """Two tiny XMRec markets, a and b (8 users of 6 ratings each over 10 shared items);
    `changed` moves one rating of b to another item."""
    folder.mkdir(exist_ok=True)
    for market in ("a", "b"):
        rows = [
            f"{market}{u} i{(u + k) % 10} 5.0 2020-01-{k + 1:02d}"
            for u in range(8)
            for k in range(6)
        ]
        if changed and market == "b":
            rows[3] = rows[3].replace(" i", " i9", 1)
        (folder / f"ratings_{market}_x.txt").write_text("\n".join(rows) + "\n")


def test_a_finished_run_checks_its_inputs_with_checkpoints_off(tmp_path):
    """A finished run records its inputs beside results.json (inputs.json). Re-run, it only
    reports while config and data are the same, and refuses a changed config or data file,
    naming them, with checkpoints off as with them on; nothing in the workdir changes."""
    data = tmp_path / "data"
    write_xmrec(data)
    config = test_config.get_config()
    config.update_from_flattened_dict(
        {"data.format": "xmrec", "data.path": str(data), "data.markets": "a,b",
         "data.semantics": "none",
         "methods": "local", "finetune.max_epochs": 1, "plots": False, "tensorboard": False,
         "checkpoint.enabled": False}
    )  # fmt: skip
    workdir = tmp_path / "w"
    first = experiment.train_and_evaluate(config, str(workdir))
    files = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert {"results.json", "inputs.json", "ranks.npz"} <= set(files)
    assert experiment.train_and_evaluate(config, str(workdir)) == first  # reports
    changed = copy.deepcopy(config)
    changed.finetune.lr = 0.01
    with pytest.raises(
        resume.IncompatibleCheckpoint, match=r"finetune\.lr \(checkpoint 0\.001, now 0\.01\)"
    ):
        experiment.train_and_evaluate(changed, str(workdir))
    write_xmrec(data, changed=True)
    with pytest.raises(resume.IncompatibleCheckpoint, match=r"market\(s\) b changed"):
        experiment.train_and_evaluate(config, str(workdir))
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == files


def test_a_lease_from_another_host_is_live_until_its_heartbeat_stops(tmp_path):
    held = {"host": "elsewhere", "pid": 1, "started": time.time() - 600}
    (tmp_path / lease.LEASE).write_text(json.dumps({**held, "heartbeat": time.time() - 5}))
    with pytest.raises(lease.WorkdirInUse, match="another run is writing here .pid 1 on elsewhere"):
        lease.Lease(tmp_path).acquire()
    stale = time.time() - lease.STALE_S - 1
    (tmp_path / lease.LEASE).write_text(json.dumps({**held, "heartbeat": stale}))
    mine = lease.Lease(tmp_path)
    assert "its heartbeat stopped" in mine.acquire()
    assert json.loads((tmp_path / lease.LEASE).read_text())["pid"] == os.getpid()
    mine.release()
    assert not (tmp_path / lease.LEASE).exists()


def test_a_second_process_on_a_live_workdir_is_refused_then_takes_over_a_killed_one(tmp_path):
    workdir = tmp_path / "w"
    first = subprocess.Popen(
        [
            *command(workdir)[: -len(OVERRIDES)],
            "--config.num_rounds=400",
            "--config.methods=fecosr",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(workdir / lease.LEASE, first)
        second = subprocess.run(command(workdir)[:-len(OVERRIDES)] + [
            "--config.num_rounds=400", "--config.methods=fecosr"], cwd=ROOT, capture_output=True,
            text=True)  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"another run is writing here (pid {first.pid} on " in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    took = lease.Lease(workdir)  # the killed run's lease is left behind, its process gone
    assert "its process is gone" in took.acquire()
    took.release()


def test_threads_that_race_for_a_fresh_lease_never_both_hold_it(tmp_path):
    # The same race between threads, 100 times: thread switches land inside lease creation
    # far more often than process starts do. Each thread owns the lease as another live
    # process (this one, its parent, init). When a lease was created empty and then written,
    # a racer could read it empty, take it for a crash's leftover and take it over: in about
    # half of these races two threads held it (5% of the process races).
    owners = [os.getpid(), os.getppid(), 1]
    for attempt in range(100):
        workdir = tmp_path / str(attempt)
        start, holders = threading.Barrier(len(owners)), []

        def take(pid, workdir=workdir, start=start, holders=holders):
            taken = lease.Lease(workdir)
            taken.owner["pid"] = pid
            start.wait()
            try:
                taken.acquire()
            except lease.WorkdirInUse:
                return
            holders.append(taken)

        racers = [threading.Thread(target=take, args=(pid,)) for pid in owners]
        for t in racers:
            t.start()
        for t in racers:
            t.join()
        assert len(holders) == 1, (attempt, [h.owner["pid"] for h in holders])
        holders[0].release()
        assert not (workdir / lease.LEASE).exists()


def _race(workdir: str, start, done, results) -> None:
    """One of several processes that take a workdir's lease at the same instant."""
    taken = lease.Lease(workdir)
    start.wait()
    try:
        taken.acquire()
    except lease.WorkdirInUse as e:
        results.put(("refused", str(e)))
        done.wait()
        return
    results.put(("took", os.getpid()))
    done.wait()  # hold it until every racer has tried
    taken.release()


@pytest.mark.parametrize("stale", [False, True], ids=["fresh workdir", "stale lease"])
def test_processes_that_start_at_the_same_instant_get_one_lease(tmp_path, stale):
    # Three processes released by one barrier. On a fresh local workdir the lease is created
    # exclusively; over a stale lease (its process gone) each writes, waits and reads back.
    import multiprocessing

    if stale:
        gone = {"host": socket.gethostname(), "pid": 2**22 + 7, "started": 0, "heartbeat": 0}
        (tmp_path / lease.LEASE).write_text(json.dumps(gone))
    ctx = multiprocessing.get_context("spawn")
    start, done, results = ctx.Barrier(3), ctx.Barrier(3), ctx.Queue()
    racers = [
        ctx.Process(target=_race, args=(str(tmp_path), start, done, results)) for _ in range(3)
    ]
    for p in racers:
        p.start()
    outcomes = [results.get(timeout=120) for _ in racers]
    for p in racers:
        p.join(timeout=120)
    took = [who for kind, who in outcomes if kind == "took"]
    assert len(took) == 1, outcomes
    refused = [message for kind, message in outcomes if kind == "refused"]
    assert all("another run is writing here" in m for m in refused) and len(refused) == 2
    assert not (tmp_path / lease.LEASE).exists()  # the holder released it
