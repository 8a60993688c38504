"""The benchmarks' Markdown tables from their JSON (what each script prints last, and what
experiments.tables regenerates in docs/benchmarks.md from docs/bench/*.json). No flags and no
JAX here, so any script can import it."""

from __future__ import annotations

import pathlib

from experiments.tables.cells import row
from fecosr_jax.progress import PHASES
from fecosr_jax.store.files import read_json


def versus(r: dict, o: dict | None) -> str:
    """Run r's client-steps/s as a multiple of run o's ("-" without o)."""
    return f"{r['client_steps_per_s'] / o['client_steps_per_s']:.2f}x" if o else "-"


def round_table(results: dict) -> str:
    """experiments.bench.round's table: one row per backend, M, R and DP setting."""
    rows = [
        "| backend | M | R | DP | client-steps/s | sequences/s | round s | compile s | GFLOP/s | "
        "% of matmul | peak MiB | vs torch | vs loop | vs no DP |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    plain = [r for r in results["runs"] if not r.get("dp", False)]
    by = {(r["backend"], r["markets"]): r for r in plain if r.get("runs", 1) == 1}
    same = {(r["backend"], r["markets"], r.get("runs", 1)): r for r in plain}

    for r in results["runs"]:
        dp = r.get("dp", False)
        ratio = {
            other: versus(r, by.get((other, r["markets"]))) if r["backend"] != other else "-"
            for other in ("torch", "loop")
        }
        ratio["dp"] = versus(r, same.get((r["backend"], r["markets"], r.get("runs", 1))))
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "-"
        share = 100 * r["achieved_gflops"] / results["matmul_gflops"]
        rows.append(
            f"| {r['backend']} | {r['markets']} | {r.get('runs', 1)} | {'on' if dp else 'off'} | "
            f"{r['client_steps_per_s']:.1f} | "
            f"{r['sequences_per_s']:.0f} | {r['round_s']:.3f} | {r['compile_s']:.1f} | "
            f"{r['achieved_gflops']:.1f} | {share:.0f}% "
            f"| {peak} | {ratio['torch']} | {ratio['loop']} | {ratio['dp'] if dp else '-'} |"
        )
    return "\n".join(rows)


def scaling_table(results: dict) -> str:
    """experiments.bench.round --memory's scaling table: per M the round's time and rate, the
    ahead-of-time compile, XLA's peak memory and the traces."""
    rows = [
        "| M | round s | client-steps/s | AOT compile s | peak MiB (XLA) | traces |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["runs"]:
        rows.append(
            f"| {r['markets']} | {r['round_s']:.3f} | {r['client_steps_per_s']:.1f} | "
            f"{r['aot_compile_s']:.1f} | {r['peak_bytes'] / 2**20:,.0f} | {r['traces']} |"
        )
    return "\n".join(rows)


def s2ce_table(runs: list[dict]) -> str:
    """experiments.bench.s2ce's table: dense against blockwise per (N, P)."""
    rows = [
        "| N items | P positions | dense peak MiB | blockwise peak MiB | item tables MiB | "
        "dense s | blockwise s | blockwise / dense time |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by = {(r["impl"], r["items"], r["positions"]): r for r in runs}
    for n, p in sorted({(r["items"], r["positions"]) for r in runs}):
        d, b = by[("dense", n, p)], by[("blockwise", n, p)]

        def sec(r):
            return "does not fit" if r["seconds"] is None else f"{r['seconds']:.4f}"

        ratio = f"{b['seconds'] / d['seconds']:.2f}x" if d["seconds"] and b["seconds"] else "-"
        rows.append(
            f"| {n:,} | {p:,} | {d['peak_bytes'] / 2**20:,.0f} | {b['peak_bytes'] / 2**20:,.0f} | "
            f"{b['item_table_bytes'] / 2**20:,.0f} | {sec(d)} | {sec(b)} | {ratio} |"
        )
    return "\n".join(rows)


def dropout_table(rows: list[dict]) -> str:
    """experiments.bench.dropout's table: per program and dropout masks, best and median ms."""
    lines = [
        "| program | dropout masks | best ms | median ms | median × flax bits |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['dropout']} | {r['best_ms']:.2f} | {r['median_ms']:.2f} | "
            f"{r['median_vs_flax_bits']:.3f} |"
        )
    return "\n".join(lines)


def main_job_table(result: dict) -> str:
    """experiments.bench.main_job's table: each step of the run (methods trained together),
    the seconds before its first logged line and over its span, then the run's phases."""
    lines = [
        "| step | methods | rounds / epochs | (market, epoch) pairs | s before | s span |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    end = 0.0
    for s in result["steps"]:
        pairs = s["active"] if s["stage"] == "finetune" else "-"
        lines.append(
            row([
                s["stage"], ", ".join(s["methods"]), s["steps"], pairs,
                f"{s['first'] - end:.1f}", f"{s['last'] - s['first']:.1f}",
            ])
        )  # fmt: skip
        end = s["last"]
    t = result["time"]
    phases = ", ".join(f"{p} {t[p]:.1f}" for p in (*PHASES, "other") if p in t)
    lines.append(
        row(["**run**", f"{phases}; compiling {t['compiling']:.1f} of it", "", "", "",
             f"**{t['total']:.1f}**"])
    )  # fmt: skip
    if result.get("wall_s"):
        wall = result["wall_s"]
        lines.append(
            row(["**command**", "installation included", "", "", "",
                 f"**{wall:.0f}** ({wall // 60:.0f} min {wall % 60:.0f} s)"])
        )  # fmt: skip
    return "\n".join(lines)


def accountant_table(result: dict) -> str:
    """experiments.bench.accountant's table: epsilon and seconds per PLD discretisation."""
    lines = [
        "| discretisation | U, T, steps | epsilon (truncated) | seconds | epsilon (plain Poisson) "
        "| seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        plain = (
            [f"{r['epsilon_plain']:.4f}", f"{r['seconds_plain']:.2f}"]
            if "epsilon_plain" in r
            else ["", ""]
        )
        lines.append(
            row([f"{r['interval']:.0e}".replace("e-0", "e-")
                 + (" (library default)" if r["interval"] == 1e-4 else ""),
                 f"{r['users']}, {r['truncated']}, {r['steps']}",
                 f"{r['epsilon_truncated']:.4f}", f"{r['seconds_truncated']:.2f}", *plain])
        )  # fmt: skip
    return "\n".join(lines)


# -- docs/benchmarks.md's tables from the scripts' JSON in docs/bench/ (experiments.tables) ----

BENCH = pathlib.Path(__file__).resolve().parents[2] / "docs" / "bench"


def bench_round_reference() -> str:
    """experiments.bench.round --config=reference (docs/bench/round_reference.json)."""
    return round_table(read_json(BENCH / "round_reference.json")) + "\n"


def bench_round_small() -> str:
    """experiments.bench.round --config=small (docs/bench/round_small.json)."""
    return round_table(read_json(BENCH / "round_small.json")) + "\n"


def bench_round_reference_scan() -> str:
    """The reference round with the markets in sequence inside the one jit (scan), a run of
    its own; its ratios and % of matmul are against the run above (round_reference.json: its
    torch and loop rows, its 211 GFLOP/s ceiling)."""
    above = read_json(BENCH / "round_reference.json")
    by = {(r["backend"], r["markets"]): r for r in above["runs"]}
    lines = [
        "| backend | M | client-steps/s | round s | GFLOP/s | % of matmul | vs torch (run above) "
        "| vs loop (run above) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in read_json(BENCH / "round_reference_scan.json")["runs"]:
        lines.append(
            row(
                [
                    r["backend"],
                    r["markets"],
                    f"{r['client_steps_per_s']:.1f}",
                    f"{r['round_s']:.3f}",
                    f"{r['achieved_gflops']:.1f}",
                    f"{100 * r['achieved_gflops'] / above['matmul_gflops']:.0f}%",
                    *(versus(r, by[(b, r["markets"])]) for b in ("torch", "loop")),
                ]
            )  # fmt: skip
        )
    return "\n".join(lines) + "\n"


def bench_scaling_small() -> str:
    """experiments.bench.round --config=small --memory over M (docs/bench/scaling_small.json)."""
    return scaling_table(read_json(BENCH / "scaling_small.json")) + "\n"


def bench_s2ce() -> str:
    """experiments.bench.s2ce (docs/bench/s2ce.json)."""
    return s2ce_table(read_json(BENCH / "s2ce.json")["runs"]) + "\n"


def bench_dp(day: str = "") -> str:
    """The round with and without DP, per config and M (docs/bench/round_{reference,small}_dp
    [_DAY].json, experiments.bench.round --dp=off,on: both measured in one run per config)."""
    lines = [
        "| config | M | client-steps/s, DP off | client-steps/s, DP on | DP / no DP "
        "| compile s, off / on |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("reference", "small"):
        runs = read_json(BENCH / f"round_{name}_dp{f'_{day}' if day else ''}.json")["runs"]
        by = {(r["markets"], r.get("dp", False)): r for r in runs}
        for m in sorted({r["markets"] for r in runs}):
            off, on = by[(m, False)], by[(m, True)]
            lines.append(
                row([
                    name, m, f"{off['client_steps_per_s']:.1f}", f"{on['client_steps_per_s']:.1f}",
                    f"{on['client_steps_per_s'] / off['client_steps_per_s']:.2f}x",
                    f"{off['compile_s']:.1f} / {on['compile_s']:.1f}",
                ])
            )  # fmt: skip
    return "\n".join(lines) + "\n"


def bench_dropout() -> str:
    """experiments.bench.dropout (docs/bench/dropout_2026-11-30.json)."""
    return dropout_table(read_json(BENCH / "dropout_2026-11-30.json")["rows"]) + "\n"


def bench_main_job(date: str) -> str:
    """experiments.bench.main_job on the main job's fresh-clone run of that date
    (main_job_DATE.json)."""
    return main_job_table(read_json(BENCH / f"main_job_{date}.json")) + "\n"


def bench_accountant() -> str:
    """experiments.bench.accountant (docs/bench/accountant_2026-11-30.json)."""
    return accountant_table(read_json(BENCH / "accountant_2026-11-30.json")) + "\n"


SOAK_PHASES = ("start-up", "pretraining", "fine-tuning", "evaluation", "between groups", "writing")


def soak_table(record: dict) -> str:
    """experiments.bench.soak's record as a table: per trial the kills by the phase each
    landed in, and whether the job ended byte-identical to the uninterrupted one with each
    round and epoch logged once."""
    lines = [
        row(["trial", "kills", *SOAK_PHASES, "byte-identical", "steps once"]),
        "| --- | ---: |" + " ---: |" * len(SOAK_PHASES) + " --- | --- |",
    ]
    for i, trial in enumerate(record["trials"]):
        counts = [sum(k["phase"] == n for k in trial["kills"]) for n in SOAK_PHASES]
        same = "yes" if not trial["differ"] else "no: " + ", ".join(trial["differ"])
        lines.append(
            row([i, len(trial["kills"]), *counts, same, "yes" if trial["steps_once"] else "no"])
        )
    total = [
        sum(k["phase"] == n for t in record["trials"] for k in t["kills"]) for n in SOAK_PHASES
    ]
    lines.append(row(["all", record["kills"], *total, "", ""]))
    return "\n".join(lines)


def bench_soak() -> str:
    """experiments.bench.soak (docs/bench/soak_2026-12-06.json)."""
    return soak_table(read_json(BENCH / "soak_2026-12-06.json")) + "\n"


NEWCOMER_STEPS = {
    "full": "every market pretrains and fine-tunes (the federation trained again with it)",
    "federation": "the others pretrain without it, writing the export (once; fine-tunes all)",
    "newcomer": "the new market alone, from the export",
}


def newcomer_table(record: dict) -> str:
    """experiments.bench.newcomer's record: per step the markets it trains, its wall seconds
    with a cold compilation cache, its phases, and its wall time as a share of the full
    run's."""
    phases = ("compiling", "pretraining", "fine-tuning", "evaluating")
    lines = [
        row(
            [
                "step",
                "what it runs",
                "markets",
                "wall s",
                *(f"{p} s" for p in phases),
                "of the full run",
            ]
        ),  # fmt: skip
        "| --- | --- | ---: | ---: |" + " ---: |" * len(phases) + " ---: |",
    ]
    full = record["steps"]["full"]["wall_s"]
    for name, step in record["steps"].items():
        cells = [f"{step['time'].get(p, 0.0):.1f}" for p in phases]
        share = f"{step['wall_s'] / full:.0%}"
        lines.append(
            row(
                [
                    name,
                    NEWCOMER_STEPS[name],
                    len(step["markets"]),
                    f"{step['wall_s']:.1f}",
                    *cells,
                    share,
                ]
            )  # fmt: skip
        )
    return "\n".join(lines)


def bench_newcomer() -> str:
    """experiments.bench.newcomer (docs/bench/newcomer_2026-12-06.json)."""
    return newcomer_table(read_json(BENCH / "newcomer_2026-12-06.json")) + "\n"
