"""docs/benchmarks.md's runs-as-data tables: seeds and sweep points as one process, one group or
one compiled round, before and after (experiments.bench.runs and experiments.bench.round
--runs, docs/bench/runs_*.json). No JAX here."""

from __future__ import annotations

from experiments.tables.bench import BENCH
from experiments.tables.cells import row
from fecosr_jax.store.files import read_json


def _runs_rows(name: str, section: str) -> list[dict]:
    """experiments.bench.runs' rows of one section (docs/bench/NAME.json)."""
    return [r for r in read_json(BENCH / f"{name}.json")["rows"] if r["section"] == section]


def _programs(r: dict) -> list[str]:
    return [f"×{r[f'jit({n}) x']}" for n in ("step", "_epoch", "_evaluate_jit")]


def _seeds_rows(label, r: dict) -> str:
    return row([label, f"{r['wall_s']:.1f}", f"{r['compile_s']:.1f}", *_programs(r)])


SEEDS_HEAD = [
    "| run | wall s | compile s | round `step` | fine-tuning `_epoch` | `_evaluate_jit` |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
]


def bench_runs_seeds() -> str:
    """Seeds before and after the run axis (experiments.bench.runs --sections=seeds,
    docs/bench/runs_before.json and runs_after.json)."""
    lines = list(SEEDS_HEAD)
    for name, when in (("runs_before", "before"), ("runs_after", "after")):
        for r in _runs_rows(name, "seeds"):
            n = int(r["what"].split()[2])
            label = f"{when}, {n} seed{'s' if n > 1 else ''}"
            if when == "after" and n > 1:
                label += " (grouped on the run axis)"
            lines.append(_seeds_rows(label, r))
    return "\n".join(lines) + "\n"


def bench_runs_sweep() -> str:
    """A sweep of 3 seeds x 3 alpha, one process per point, before and after (runs_before,
    runs_after, runs_after_cache_all .json)."""
    rows = {}
    for name in ("runs_before", "runs_after", "runs_after_cache_all"):
        for r in _runs_rows(name, "sweep"):
            rows[(name, "9 points" in r["what"], "no cache" in r["what"])] = r

    def pair(key_one, key_nine, label):
        one, nine = rows[key_one], rows[key_nine]
        return row([
            label, f"{one['wall_s']:.1f} / {nine['wall_s']:.1f}",
            f"{one['compile_s']:.1f} / {nine['compile_s']:.1f}",
            f"{one['cache_hits']:,} / {nine['cache_hits']:,}",
        ])  # fmt: skip

    return "\n".join([
        "| run: one point / 9 points | wall s | compile s | cache hits |",
        "| --- | ---: | ---: | ---: |",
        pair(("runs_before", False, True), ("runs_before", True, True), "before (no cache)"),
        pair(("runs_after", False, True), ("runs_after", True, True), "after, cache off"),
        pair(
            ("runs_after", False, False), ("runs_after", True, False),
            "after, cache keeping programs ≥ 1 s (JAX's default)",
        ),
        pair(
            ("runs_after_cache_all", False, False), ("runs_after_cache_all", True, False),
            "after, cache keeping every program (the default now)",
        ),
    ]) + "\n"  # fmt: skip


def bench_runs_axis_cpu() -> str:
    """The run axis on the CPU (experiments.bench.round --runs=1,4,16, runs_round_cpu.json)."""
    lines = ["| R | client-steps/s | round s |", "| ---: | ---: | ---: |"]
    for r in read_json(BENCH / "runs_round_cpu.json")["runs"]:
        lines.append(row([r["runs"], f"{r['client_steps_per_s']:.1f}", f"{r['round_s']:.3f}"]))
    return "\n".join(lines) + "\n"


def bench_groups_seeds() -> str:
    """Seeds as one group (experiments.bench.runs --sections=seeds, runs_groups.json)."""
    lines = list(SEEDS_HEAD)
    for r in _runs_rows("runs_groups", "seeds"):
        n = int(r["what"].split()[2])
        lines.append(_seeds_rows("1 seed" if n == 1 else f"{n} seeds (one group)", r))
    return "\n".join(lines) + "\n"


def _sweep_table(name: str, section: str, with_compiles: bool) -> str:
    """A sweep's points grouped against a process per point (experiments.bench.runs)."""
    rows = _runs_rows(name, section)
    head = ["run", "wall s", "compile s", "× one point (wall)"]
    head += ["compiles"] * with_compiles + ["s / S²CE round"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    one = {}
    for r in rows:
        cache = "off" if "no cache" in r["what"] else "on"
        if r["what"].startswith("one point"):
            one[cache] = r["wall_s"]
            label, ratio = f"one point, cache {cache}", "1"
        else:
            grouped = "(grouped" in r["what"]
            label = "9 points grouped" if grouped else "9 points, a process per point"
            ratio = f"{r['wall_s'] / one[cache]:.2f}×"
            label += f", cache {cache}" if with_compiles else ""
        if not with_compiles:
            label = label.replace(", cache on", "")
        compiles = f"{r['compiles']:,}"
        if r["compiles"] == r["cache_hits"]:
            compiles += " (all cache hits)"
        cells = [label, f"{r['wall_s']:.1f}", f"{r['compile_s']:.1f}", ratio]
        cells += [compiles] * with_compiles + [f"{r['round_s']:.3f}" if "round_s" in r else ""]
        lines.append(row(cells))
    return "\n".join(lines) + "\n"


def bench_groups_sweep() -> str:
    """The test config's sweep, grouped (runs_groups.json)."""
    return _sweep_table("runs_groups", "sweep", with_compiles=True)


def bench_groups_synthetic() -> str:
    """synthetic_sweep.py's sweep, grouped (runs_synthetic.json)."""
    return _sweep_table("runs_synthetic", "synthetic", with_compiles=False)


def bench_epsilon_sweep() -> str:
    """The privacy-budget sweep before and after the budget became a per-run value
    (experiments.bench.runs --sections=epsilon, runs_epsilon_{before,after}.json)."""
    before, after = (_runs_rows(f"runs_epsilon_{w}", "epsilon")[0] for w in ("before", "after"))
    lines = [
        "| sweep (8 points) | processes | wall s | compile s | compiles | wall / after |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in (
        ("before: a process per budget", before),
        ("after: the finite budgets one group", after),
    ):
        cells = [r["processes"], f"{r['wall_s']:.1f}", f"{r['compile_s']:.1f}", r["compiles"]]
        lines.append(row([label, *cells, f"{r['wall_s'] / after['wall_s']:.2f}×"]))
    return "\n".join(lines) + "\n"
