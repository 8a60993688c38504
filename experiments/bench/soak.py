r"""Faults at random moments: a grouped job of several runs killed with SIGKILL again and again,
resumed by the same command each time, must end with the bytes of the uninterrupted job.

  python -m experiments.bench.soak --kills=20 --json=docs/bench/soak_DATE.json

The job is the test config with `--config.seeds=3` (three runs on one run axis: pretraining,
fine-tuning, evaluation and the writing of results, every method). First it runs once
uninterrupted (the reference, and its wall time T). Then, in a fresh workdir, the same command
is started and killed with SIGKILL, and started again, until it finishes on its own. The
kills take turns (`trigger`): at a time drawn uniformly from [0, T] after the start; as soon
as a new fine-tuning epoch is saved; at a random time again; as soon as the first seed's
results.json exists, while the rest of the results are written. Each such job is a trial,
and trials follow one another until `--kills` kills have been made. A kill's moment is
recorded by the phase the process had printed last (`phase`: start-up, pretraining,
fine-tuning, evaluation, between groups of methods, or writing the results). At the end of
every trial each results.json (combined and per seed) and each seed's ranks.npz must
equal the reference's byte for byte, and each metrics.jsonl must hold every round and epoch
once (a resumed phase drops the steps it repeats). The script prints a table
(experiments.tables.bench.soak_table) and exits 1 on any difference.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments.tables import bench as bench_tables
from fecosr_jax.store.files import write_text_atomic

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined when it runs, so that tests can import its functions
    beside other benchmarks' flags)."""
    flags.DEFINE_integer("kills", 20, "SIGKILLs to make in all")
    flags.DEFINE_integer("seeds", 3, "runs of the grouped job (--config.seeds)")
    flags.DEFINE_integer("seed", 0, "seed of the kill times")
    flags.DEFINE_string("json", None, "write the record here")
    flags.DEFINE_string("workdir", None, "where the jobs run (default: a temporary one)")


ROOT = pathlib.Path(__file__).resolve().parents[2]


def command(workdir: pathlib.Path, seeds: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/test.py",
        f"--workdir={workdir}",
        f"--config.seeds={seeds}",
        "--config.plots=False",
        "--config.tensorboard=False",
    ]


def phase(log: str) -> str:
    """Where a run was when it was killed (one of bench_tables.SOAK_PHASES), by the last line
    it had printed: a pretraining
    round; a fine-tuning epoch (its last epoch: evaluation follows); the header of the next
    group of methods; the results tables printed at the end (writing); or nothing of those
    yet (start-up: loading, the data summary, compiling the first program)."""
    lines = [line for line in log.splitlines() if line.strip()]
    started = any(line.startswith("== [") for line in lines)
    for line in reversed(lines):
        if match := re.search(r" finetune (\d+)/(\d+)", line):
            return "evaluation" if match[1] == match[2] else "fine-tuning"
        if "pretrain" in line:
            return "pretraining"
        if line.startswith("== ["):
            return "between groups"
        if line.startswith("|") and started:
            return "writing"
    return "start-up"


def outputs(workdir: pathlib.Path, seeds: int) -> dict[str, bytes]:
    """The files a finished job must reproduce byte for byte."""
    files = {"results.json": workdir / "results.json"}
    for s in range(seeds):
        for name in ("results.json", "ranks.npz"):
            files[f"seed_{s}/{name}"] = workdir / f"seed_{s}" / name
    return {k: p.read_bytes() for k, p in files.items()}


def logged_steps(workdir: pathlib.Path, seeds: int) -> list[list[tuple]]:
    """Each seed's metrics.jsonl as its (stage, paradigm, curve, step) keys, in order."""
    out = []
    for s in range(seeds):
        lines = (workdir / f"seed_{s}" / "metrics.jsonl").read_text().splitlines()
        keys = [
            (x["stage"], x["paradigm"], x.get("curve"), x["step"]) for x in map(json.loads, lines)
        ]
        out.append(keys)
    return out


def steps_once(workdir: pathlib.Path, want: list[list[tuple]]) -> bool:
    """Every seed's metrics.jsonl holds each round and epoch of the reference's once."""
    got = logged_steps(workdir, len(want))
    return all(len(g) == len(set(g)) and set(g) == set(w) for g, w in zip(got, want, strict=True))


def checkpoints(workdir: pathlib.Path, prefix: str) -> int:
    """How many saved steps the phases `prefix*` of every seed hold (their step folders)."""
    return sum(
        1
        for phase in workdir.glob(f"seed_*/checkpoints/{prefix}*")
        for step in phase.iterdir()
        if step.name.isdigit()
    )


def trigger(kind: str, workdir: pathlib.Path, after: float):
    """When to kill: "time" `after` seconds from the start; "fine-tuning" as soon as a new
    fine-tuning epoch is saved; "writing" as soon as the first seed's results.json exists
    (the other seeds' and the combined results are being written; never if it existed at the
    start)."""
    if kind == "time":
        start = time.perf_counter()
        return lambda: time.perf_counter() - start >= after
    if kind == "fine-tuning":
        saved = checkpoints(workdir, "finetune_")
        return lambda: checkpoints(workdir, "finetune_") > saved
    written = workdir / "seed_0" / "results.json"
    if written.exists():  # written before this start: nothing of the kind left to hit
        return lambda: False
    return written.exists


def run_once(workdir: pathlib.Path, seeds: int, kill) -> tuple[int, str]:
    """The job's command in `workdir`, killed with SIGKILL as soon as `kill()` is true (None:
    not killed). Returns its exit code (-9 when killed) and its output."""
    log_path = workdir.parent / f"{workdir.name}.log"
    with open(log_path, "w") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # every line out before a kill
        proc = subprocess.Popen(
            command(workdir, seeds), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        while proc.poll() is None:
            if kill is not None and kill():
                proc.kill()
                break
            time.sleep(0.01)
        rc = proc.wait()
    return rc, log_path.read_text()


def soak(root: pathlib.Path, kills: int, seeds: int, seed: int) -> dict:
    """The reference job, then trials of killed and resumed jobs until `kills` kills."""
    rng = random.Random(seed)
    kinds = ("time", "fine-tuning", "time", "writing")  # in turn: every phase is reached
    reference = root / "reference"
    start = time.perf_counter()
    rc, log = run_once(reference, seeds, None)
    wall = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"the reference job failed (exit {rc}):\n{log[-2000:]}")
    want, want_steps = outputs(reference, seeds), logged_steps(reference, seeds)
    trials, made = [], 0
    while made < kills:
        workdir = root / f"trial_{len(trials)}"
        trial = {"kills": []}
        while True:
            kind, after = kinds[made % len(kinds)], rng.uniform(0.0, wall)
            started = time.perf_counter()
            rc, log = run_once(
                workdir, seeds, trigger(kind, workdir, after) if made < kills else None
            )
            if rc == -9:
                made += 1
                elapsed = round(time.perf_counter() - started, 2)
                trial["kills"].append({"trigger": kind, "after_s": elapsed, "phase": phase(log)})
                continue
            if rc != 0:
                raise RuntimeError(f"{workdir}: exit {rc} after a kill:\n{log[-2000:]}")
            break
        got = outputs(workdir, seeds)
        trial["differ"] = sorted(k for k in want if got[k] != want[k])
        trial["steps_once"] = steps_once(workdir, want_steps)
        trials.append(trial)
    return {"seeds": seeds, "reference_s": round(wall, 1), "kills": made, "trials": trials}


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(FLAGS.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        record = soak(root, FLAGS.kills, FLAGS.seeds, FLAGS.seed)
    print(bench_tables.soak_table(record))
    if FLAGS.json:
        write_text_atomic(FLAGS.json, json.dumps(record, indent=1) + "\n")
    ok = all(not t["differ"] and t["steps_once"] for t in record["trials"])
    return 0 if ok else 1


if __name__ == "__main__":
    define_flags()
    app.run(main)
