r"""Benchmark: what seeds and sweeps cost in compiling, measured from JAX's compile log.

  python -m experiments.bench.runs [--repo=PATH] [--sections=seeds,sweep] [--json=FILE]

Runs the real entry points as separate processes with JAX_LOG_COMPILES=1 and sums the
"Finished XLA compilation of NAME in S sec" lines (a persistent-cache hit logs one too, with
its load time), per named program (the round `step`, the fine-tuning `_epoch`,
`_evaluate_jit`) and in all, next to the wall time:
  seeds: the test config (every method), 1 seed against 3 seeds, persistent cache off.
  sweep: launch/sweep.py over 3 seeds x 3 alpha of the test config (methods local,fecosr),
    against one point of it alone; grouped (the 9 points as runs of one process) and with a
    process per point; with the persistent compilation cache (a fresh folder) and without it
    (every process compiles everything).
  synthetic: the same sweep of experiments/configs/synthetic_sweep.py (larger markets: the
    2 CPU cores' compute bounds it), with the mean seconds per S²CE round of its runs.
  epsilon: launch/sweep.py --epsilon=2,4,8,inf --seeds=0,1 of the test config (methods
    local,fecosr, DP's expected batch 4), persistent cache off: its processes and compiles.
`--repo` measures another checkout the same way (e.g. the commit before runs as data), so
before and after come from the same script on the same machine. It prints a table last.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_REPO = flags.DEFINE_string("repo", ".", "The checkout to measure (its experiments.main).")
_SECTIONS = flags.DEFINE_list("sections", ["seeds", "sweep"], "seeds, sweep, synthetic, epsilon.")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON to this file.")
_CACHE = flags.DEFINE_list(
    "cache", ["on", "off"], "sweep: with the persistent compilation cache (on), without (off)."
)

_COMPILED = re.compile(r"Finished XLA compilation of (\S+) in ([0-9.]+) sec")
NAMED = ("jit(step)", "jit(_epoch)", "jit(_evaluate_jit)")
TEST = "experiments/configs/test.py"
SYNTHETIC = "experiments/configs/synthetic_sweep.py"


def compile_stats(text: str) -> dict:
    """Compiles and seconds in all, and per named program, from a JAX_LOG_COMPILES log."""
    count, seconds = collections.Counter(), collections.Counter()
    for name, s in _COMPILED.findall(text):
        count[name] += 1
        seconds[name] += float(s)
    return {
        "compiles": sum(count.values()),
        "compile_s": round(sum(seconds.values()), 2),
        "cache_hits": text.count("Persistent compilation cache hit"),
        **{f"{n} x": count[n] for n in NAMED},
        **{f"{n} s": round(seconds[n], 2) for n in NAMED},
    }


def has_cache_field(repo: pathlib.Path) -> bool:
    return "compilation_cache" in (repo / "experiments/configs/default.py").read_text()


def run(repo: pathlib.Path, args: list[str], logs: list[pathlib.Path] | None = None) -> dict:
    """Runs `python ARGS` in repo with the compile log on; the stats of its output (and of
    the `logs` files it writes, for a sweep's runs) and the wall time."""
    # PYTHONPATH: the checkout's own fecosr_jax also for launch/sweep.py, which runs as a
    # script (an editable install of another checkout would otherwise answer the import)
    env = {**os.environ, "JAX_LOG_COMPILES": "1", "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    text = proc.stdout + proc.stderr + "".join(p.read_text() for p in logs or [])
    return {"wall_s": round(wall, 1), **compile_stats(text)}


def seeds_section(repo: pathlib.Path, tmp: pathlib.Path) -> list[dict]:
    off = ["--config.compilation_cache="] if has_cache_field(repo) else []
    rows = []
    for seeds in (1, 3):
        workdir = tmp / f"seeds{seeds}"
        args = ["-m", "experiments.main", f"--config={TEST}", f"--workdir={workdir}"]
        stats = run(repo, [*args, f"--config.seeds={seeds}", *off])
        rows.append(record({"section": "seeds", "what": f"test config, {seeds} seed(s)", **stats}))
    return rows


def sweep_logs(workdir: pathlib.Path) -> list[pathlib.Path]:
    """The output (with the compile logs) of a sweep's processes: DIR/logs/*.log, or before
    groups each run's runs/<name>/sweep.log (today these link to the logs)."""
    own = [p for p in workdir.glob("runs/*/sweep.log") if not p.is_symlink()]
    return sorted(workdir.glob("logs/*.log")) + own


def round_seconds(workdir: pathlib.Path) -> float | None:
    """The mean over a sweep's runs of its seconds per S²CE federated round (sweep.json)."""
    rows = json.loads((workdir / "sweep.json").read_text())["rows"]
    values = [r["round_s"]["federated_s2ce"] for r in rows if "federated_s2ce" in r["round_s"]]
    return round(sum(values) / len(values), 3) if values else None


def sweep_rows(repo: pathlib.Path, tmp: pathlib.Path, config: str, section: str) -> list[dict]:
    """One point of `config` alone, then the 3 seeds x 3 alpha sweep of it, grouped and with
    a process per point, per cache variant of --cache."""
    cache = has_cache_field(repo)
    common = ["--config.methods=local,fecosr"]
    rows = []
    variants = [("cache", True)] if cache and "on" in _CACHE.value else []
    variants += [("no cache", False)] if "off" in _CACHE.value or not cache else []
    for label, on in variants:
        tag = f"{section}_{label.replace(' ', '_')}"
        flag = [f"--config.compilation_cache={tmp / f'xla_{tag}' if on else ''}"] if cache else []
        one = tmp / f"one_{tag}"
        stats = run(
            repo,
            ["-m", "experiments.main", f"--config={config}", f"--workdir={one}", *common, *flag],
        )
        rows.append(record({"section": section, "what": f"one point ({label})", **stats}))
        modes = [("", [])]  # a checkout before groups: one process per point
        text = (repo / "launch/sweep.py").read_text()
        for flag in ("--runs_per_process", "--runs-per-process"):  # absl's, then argparse's
            if flag in text:
                modes = [("grouped, ", []), ("a process per point, ", [f"{flag}=1"])]
                break
        for mode, extra in modes:
            workdir = tmp / f"sweep_{tag}_{len(extra)}"
            args = [
                "launch/sweep.py",
                "--seeds=0,1,2",
                "--alpha=0.2,0.5,0.8",
                f"--config={config}",
                f"--workdir={workdir}",
                *extra,
                *common,
                *flag,
            ]
            stats = run(repo, args)
            stats.update(compile_stats("".join(p.read_text() for p in sweep_logs(workdir))))
            stats["round_s"] = round_seconds(workdir)
            what = f"9 points, 3 seeds x 3 alpha ({mode}{label})"
            rows.append(record({"section": section, "what": what, **stats}))
    return rows


def sweep_section(repo: pathlib.Path, tmp: pathlib.Path) -> list[dict]:
    return sweep_rows(repo, tmp, TEST, "sweep")


def synthetic_section(repo: pathlib.Path, tmp: pathlib.Path) -> list[dict]:
    return sweep_rows(repo, tmp, SYNTHETIC, "synthetic")


def epsilon_section(repo: pathlib.Path, tmp: pathlib.Path) -> list[dict]:
    workdir = tmp / "epsilon"
    args = [
        "launch/sweep.py",
        "--epsilon=2,4,8,inf",
        "--seeds=0,1",
        f"--config={TEST}",
        f"--workdir={workdir}",
        "--config.methods=local,fecosr",
        "--config.federated.dp.expected_batch_size=4",
        "--config.federated.dp.public=catalogues,weights",  # as measured before it existed
        "--config.compilation_cache=",
    ]
    stats = run(repo, args)
    logs = sweep_logs(workdir)
    text = "".join(p.read_text() for p in logs)
    stats.update(compile_stats(text))
    stats["processes"] = len(logs)
    what = "8 points, epsilon 2,4,8,inf x seeds 0,1"
    return [record({"section": "epsilon", "what": what, **stats})]


def table(rows: list[dict]) -> str:
    cols = ["section", "what", "wall_s", "compile_s", "compiles", "cache_hits", "processes"]
    cols += [f"{n} x" for n in NAMED] + ["round_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


_RECORDED: list[dict] = []


def record(row: dict) -> dict:
    """Keeps a measured row and rewrites --json at once: a run cut short keeps its rows."""
    _RECORDED.append(row)
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(
            json.dumps(
                {"repo": str(pathlib.Path(_REPO.value).resolve()), "rows": _RECORDED}, indent=1
            )
        )
    return row


def main(argv):
    del argv
    repo = pathlib.Path(_REPO.value).resolve()
    sections = {
        "seeds": seeds_section,
        "sweep": sweep_section,
        "synthetic": synthetic_section,
        "epsilon": epsilon_section,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for section in _SECTIONS.value:
            sections[section](repo, pathlib.Path(tmp))
    print(f"repo: {repo}\n\n{table(_RECORDED)}")


if __name__ == "__main__":
    app.run(main)
