"""The benchmarks' Markdown tables from their JSON (what each script prints last, and what
experiments.tables regenerates in docs/benchmarks.md from docs/bench/*.json). No flags and no
JAX here, so any script can import it."""

from __future__ import annotations


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

    def versus(r, o) -> str:
        return f"{r['client_steps_per_s'] / o['client_steps_per_s']:.2f}x" if o else "-"

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
