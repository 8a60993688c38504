r"""What a new market costs on top of an existing export, against a full run that includes it,
side by side in one script (docs/benchmarks.md, "A new market").

  python -m experiments.bench.newcomer --json=docs/bench/newcomer_DATE.json

Three commands of experiments.main on one config (default: the main job's, 8 synthetic
markets), each with a cold compilation cache of its own and its own workdir:

  full        every market pretrains and fine-tunes (--config.methods, default local,fecosr):
              what a market that joins costs when the federation is trained again with it;
  federation  the others pretrain without the newcomer (--config.data.newcomers), writing the
              export WORKDIR/pretrained/federated_s2ce/ (done once, whatever joins later);
  newcomer    the newcomer alone (--config.data.markets) from that export
              (--config.pretrained).

Each step's wall time is the command's; its phases come from the run's training.json. The
script prints a table (experiments.tables.bench.newcomer_table) and checks that the newcomer
run loaded the export (its results.json names it).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments.bench import common
from experiments.tables import bench as bench_tables
from fecosr_jax.store import files, metrics_log

_CONFIG = flags.DEFINE_string("config", "experiments/configs/default.py", "the config file")
_NEWCOMER = flags.DEFINE_string("newcomer", "m0007", "the market that joins")
_METHODS = flags.DEFINE_string("methods", "local,fecosr", "the methods of the runs")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the runs go (default: a temporary one)")
_JSON = flags.DEFINE_string("json", None, "write the record here")

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPORT = "pretrained/federated_s2ce"


def steps(newcomer: str, methods: str) -> dict[str, list[str]]:
    """Each step's --config flags (module docstring); {workdir} is the federation's."""
    return {
        "full": [f"--config.methods={methods}"],
        "federation": [f"--config.data.newcomers={newcomer}", "--config.methods=fecosr"],
        "newcomer": [
            f"--config.data.markets={newcomer}",
            f"--config.methods={methods}",
            f"--config.pretrained={{federation}}/{EXPORT}",
        ],
    }


def run_step(name: str, flags_: list[str], root: pathlib.Path, config: str) -> dict:
    """One step's command with a cold compilation cache: its wall time and phases."""
    workdir = root / name
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / f"cache_{name}")}
    command = [
        sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
        "--config.plots=False", "--config.tensorboard=False",
        *(f.format(federation=root / "federation") for f in flags_),
    ]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{name} exited {out.returncode}:\n{out.stderr[-3000:]}")
    training = files.read_json(workdir / metrics_log.TRAINING)
    results = files.read_json(workdir / "results.json")
    return {
        "flags": flags_,
        "wall_s": round(wall, 1),
        "time": training["time"],
        "markets": results["markets"],
        "pretrained": results.get("pretrained"),
    }


def main(argv):
    del argv
    folder = _WORKDIR.value or tempfile.mkdtemp(prefix="fecosr_newcomer_")
    root = pathlib.Path(folder).absolute()
    record = {
        "config": _CONFIG.value,
        "newcomer": _NEWCOMER.value,
        "methods": _METHODS.value,
        "machine": common.machine(),
        "steps": {},
    }
    for name, flags_ in steps(_NEWCOMER.value, _METHODS.value).items():
        print(f"== {name}", flush=True)
        record["steps"][name] = run_step(name, flags_, root, _CONFIG.value)
    loaded = record["steps"]["newcomer"]["pretrained"]
    assert loaded and loaded["directory"].endswith(EXPORT), "the newcomer did not load the export"
    print(bench_tables.newcomer_table(record))
    if _JSON.value:
        files.write_text_atomic(_JSON.value, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
