"""The run's log: metrics.jsonl (one line per pretraining round and fine-tuning epoch),
TensorBoard scalars, the progress lines a person reads (step of total, rate, ETA), and at the
run's end training.json, what the log says about the training (seconds per round, the
validation NDCG@10 that early stopping kept) for sweeps to read."""

from __future__ import annotations

import functools
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import time
from importlib import metadata

from etils import epath

from fecosr_jax import progress as progress_lib
from fecosr_jax.store.files import is_remote, write_text_atomic

TRAINING = "training.json"  # a run's training record (`training_record`), beside results.json


def read_lines(workdir) -> list[dict]:
    """The lines of WORKDIR/metrics.jsonl ([] when there is none)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def training_record(lines: list[dict]) -> dict:
    """What a run's log says about its training (written as WORKDIR/training.json):

    pretraining: {kind: {"rounds": rounds logged, "seconds_per_round": the median gap
                 between consecutive rounds (round 1 compiles; checkpoints included),
                 "delta_cosine": the mean pairwise cosine of the client updates}}
    validation:  {method: {"markets": {market: its best logged validation NDCG@10, what
                 early stopping keeps}, "mean": the mean over markets}}
    seconds:     the run's last logged time.

    The run adds "time": the process's seconds per phase (`progress.PhaseTimes.record`), when
    its results are written (with several runs in one process, each run's file has the same),
    and "host", the machine (`host`).
    """
    rounds: dict[str, list[dict]] = {}
    best: dict[str, dict[str, float]] = {}
    for x in lines:
        if x["stage"] == "pretrain":
            rounds.setdefault(x["paradigm"], []).append(x)
        elif x["stage"] == "finetune" and x.get("market_valid_ndcg@10"):
            by_market = best.setdefault(x["paradigm"], {})
            for market, v in x["market_valid_ndcg@10"].items():
                if v is not None:
                    by_market[market] = max(v, by_market.get(market, v))
    pretraining = {}
    for kind, xs in rounds.items():
        xs = sorted(xs, key=lambda x: x["step"])
        gaps = [
            b["seconds"] - a["seconds"]
            for a, b in itertools.pairwise(xs)
            if b["step"] == a["step"] + 1
        ]
        cosines = [x["delta_cosine"] for x in xs if x.get("delta_cosine") is not None]
        pretraining[kind] = {
            "rounds": len(xs),
            "seconds_per_round": round(statistics.median(gaps), 4) if gaps else None,
            "delta_cosine": round(statistics.fmean(cosines), 6) if cosines else None,
        }
    validation = {
        method: {"markets": by_market, "mean": round(statistics.fmean(by_market.values()), 6)}
        for method, by_market in best.items()
        if by_market
    }
    return {
        "pretraining": pretraining,
        "validation": validation,
        "seconds": lines[-1]["seconds"] if lines else None,
    }


ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def host() -> dict:
    """The machine a run trained on (training.json "host"): a run reproduces its bytes on the
    same CPU model, instruction set, devices and JAX version. XLA compiles for the host's
    instruction set, so another CPU rounds differently (docs/results.md, "Runs as data").

    {"cpu": the model name (with its family and model numbers where /proc/cpuinfo has them),
     "isa": the vector extensions XLA uses that the CPU has, "cores", "devices": count x
     kind, "jax", "jaxlib"}.
    """
    import jax  # the report modules read training.json without JAX
    import jaxlib

    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:  # not Linux
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    devices = jax.devices()
    return {
        "cpu": cpu,
        "isa": " ".join(f for f in ISA if f in flags),
        "cores": os.cpu_count(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
    }


PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]  # holds fecosr_jax/


@functools.cache
def code(root: pathlib.Path = PACKAGE_ROOT) -> dict:
    """The code a run trained with (training.json "code"), read once per process: a run calls
    it when it starts, so a checkout changed while it trains does not change the record.

    {"commit": the git commit of the checkout `root` that the package is imported from,
    "modified": whether its tracked files differed from that commit} in a checkout, else
    {"version": the installed package's version}. A resumed run records the code of the
    process that finished it.
    """

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
        )
        if out.returncode:
            raise OSError(out.stderr.strip())
        return out.stdout.strip()

    try:
        if pathlib.Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            raise OSError("the package is not this checkout's")  # e.g. a venv inside a repo
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": git("rev-parse", "HEAD"), "modified": modified}
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, no commit yet
        try:
            return {"version": metadata.version("fecosr_jax")}
        except metadata.PackageNotFoundError:
            return {"version": "unknown"}


def steps(lines: list[dict]) -> list[dict]:
    """The run's steps from its log lines: a step is a run of consecutive lines of one stage
    whose methods trained together (each round or epoch logged by each of them in turn). Per
    step its stage, methods, rounds or epochs (the most any of its methods logged), the
    (market, epoch) pairs still training (fine-tuning), and its first and last seconds."""
    out: list[dict] = []
    previous = None
    for x in lines:
        last = out[-1] if out else None
        same = last is not None and last["stage"] == x["stage"]
        if same and x["paradigm"] not in last["methods"]:
            # a method trained with the last one logs the same round or epoch right after it
            same = x["step"] == previous["step"]
        previous = x
        if not same:
            last = {"stage": x["stage"], "methods": [], "steps": 0, "active": 0}
            last["first"] = x["seconds"]
            out.append(last)
        if x["paradigm"] not in last["methods"]:
            last["methods"].append(x["paradigm"])
        last["steps"] = max(last["steps"], x["step"])
        last["active"] += x.get("markets_active") or 0
        last["last"] = x["seconds"]
    return out


class RunLog:
    """metrics.jsonl (one line per round / epoch), TensorBoard scalars, progress lines.

    An existing metrics.jsonl is continued. A resumed phase repeats the steps after its
    checkpoint: logging step s of a (paradigm, stage) drops that phase's old lines from s on,
    so the file holds each round and epoch once. On an object store (gs://) the file is
    rewritten at most every 30 s and at close (objects cannot be appended to)."""

    def __init__(
        self, workdir: str, *, tensorboard: bool = True, writes: bool = True, label: str = ""
    ):
        self.label = label  # printed before each progress line (e.g. "seed 1")
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.remote = is_remote(self.path)
        self.writes = writes  # False: keep the lines in memory only (processes other than 0)
        self.lines = read_lines(workdir)
        last = self.lines[-1]["seconds"] if self.lines else 0.0
        self.start = time.perf_counter() - last
        self.synced = time.perf_counter()
        self.started: dict[tuple[str, str], tuple[float, int]] = {}  # phase -> (time, step)
        self.writer = None
        if tensorboard and writes:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: the JSONL log is the source of truth
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    @property
    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """{"paradigm stage metric": [(step, value)]} of the logged curves."""
        out: dict[str, list[tuple[int, float]]] = {}
        for line in self.lines:
            curve = line.get("curve")
            if curve is not None and line.get(curve) is not None:
                key = f"{line['paradigm']} {line['stage']} {curve}"
                out.setdefault(key, []).append((line["step"], line[curve]))
        return out

    def _rewrite(self):
        if not self.writes:
            return
        write_text_atomic(self.path, "".join(json.dumps(x) + "\n" for x in self.lines))
        self.synced = time.perf_counter()

    def log(
        self,
        paradigm: str,
        stage: str,
        step: int,
        values: dict,
        *,
        curve: str | None = None,
        progress: bool = False,
        total: int | None = None,
    ):
        """Logs one step; with `progress` also prints it, with the rate since this process
        first logged the phase and, given the phase's `total` steps, an ETA."""
        line = {
            "paradigm": paradigm,
            "stage": stage,
            "step": step,
            **values,
            "seconds": round(time.perf_counter() - self.start, 3),
        }
        if curve is not None:
            line["curve"] = curve
        if any(
            x["paradigm"] == paradigm and x["stage"] == stage and x["step"] >= step
            for x in self.lines
        ):
            # A resumed phase repeats the steps after its checkpoint: drop their old lines.
            self.lines = [
                x
                for x in self.lines
                if not (x["paradigm"] == paradigm and x["stage"] == stage and x["step"] >= step)
            ]
            self._rewrite()
        self.lines.append(line)
        if not self.writes:
            pass
        elif not self.remote:
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        elif time.perf_counter() - self.synced > 30:
            self._rewrite()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and v is not None:
                    tag = f"{paradigm}/{stage}/{k}".replace("@", "_at_")
                    self.writer.add_scalar(tag, v, step)
        now = time.perf_counter()
        first_time, first_step = self.started.setdefault((paradigm, stage), (now, step))
        if progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
            label = f"{self.label} " if self.label else ""
            of = f"/{total}" if total else ""
            unit = "rounds" if stage == "pretrain" else "epochs"
            pace = progress_lib.rate_and_eta(
                step - first_step, now - first_time, (total or step) - step, unit
            )
            print(
                f"[{line['seconds']:7.1f}s] {label}{paradigm} {stage} {step}{of}: {shown}"
                + (f" ({pace})" if pace else ""),
                flush=True,
            )

    def close(self):
        if self.remote:
            self._rewrite()
        if self.writer is not None:
            self.writer.close()
