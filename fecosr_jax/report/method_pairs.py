"""Any two methods of a finished run compared per market, from its per-user test ranks
(experiments.compare; launch/sweep.py --compare parses its pairs here): the NDCG@10
difference and the tests, as results.json compares every method with `local`."""

from __future__ import annotations

from fecosr_jax.report import markdown
from fecosr_jax.report import results as results_lib
from fecosr_jax.report.verdicts import GAIN_METRIC


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Method pairs from text: A:B,C:D -> [(A, B), (C, D)]; ValueError on a malformed one."""
    pairs = [tuple(p.strip().split(":")) for p in text.split(",") if p.strip()]
    bad = [":".join(p) for p in pairs if len(p) != 2 or not all(p) or p[0] == p[1]]
    if bad or not pairs:
        raise ValueError(
            f"expected comma-separated METHOD:METHOD pairs of two different methods, got {text!r}"
        )
    return pairs


def pair_comparison(results: dict, ranks: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """Method A against method B (not `local`) for each pair (A, B): per market the NDCG@10
    gain and the tests over the same test users, as `comparison` computes them against
    `local` (ranks: {method: {market: [S, U] or [U]}}; each pair a family).

    Returns:
      [{"method": A, "reference": B, "gain", "mean_gain", "markets_better", "markets_worse",
      "seed_aware", "markets_significantly_better", "markets_significantly_worse",
      "markets_fragile", "trained_models"}], in the order of `pairs`.
    """
    methods, names = results["methods"], results["markets"]
    for name in {m for pair in pairs for m in pair}:
        if name not in methods:
            raise ValueError(f"no method {name!r} in this run; it has {', '.join(methods)}")
        if name not in ranks:
            raise ValueError(f"no per-user test ranks of {name!r} (its run did not finish)")
    out = []
    for a, b in pairs:
        both = {a: methods[a], b: methods[b]}
        pair_ranks = {a: ranks[a], b: ranks[b]}
        comp = results_lib.comparison(both, names, reference=b, ranks=pair_ranks)
        out.append({"method": a, "reference": b, **comp[a]})
    return out


def pairs_markdown(pairs: list[dict], names: list[str]) -> str:
    """One row per pair A:B, one column per market: the NDCG@10 difference A - B, the
    seed-aware test's marker (markdown.mark) and its p-value."""
    legend = markdown.marks_legend(pairs[0]["seed_aware"]).replace("`local`", "B")
    lines = [
        f"Method A against method B, per market: {GAIN_METRIC} of A − B. {legend}; each pair "
        "a family; p in brackets, before the adjustment.",
        "",
        "| A | B | " + " | ".join(names) + " | mean | A better | A worse |",
        "| --- | --- |" + " ---: |" * (len(names) + 3),
    ]
    for c in pairs:
        cells = []
        for n in names:
            t = c["seed_aware"]["markets"][n]
            gain = c["gain"][n]
            cells.append(
                "-"
                if gain is None
                else f"{gain:+.4f}{markdown.mark(t)} ({markdown.p_text(t['p_value'])})"
            )
        lines.append(
            f"| {c['method']} | {c['reference']} | "
            + " | ".join(cells)
            + f" | {c['mean_gain']:+.4f} | {c['markets_better']} "
            f"({c['markets_significantly_better']}) | {c['markets_worse']} "
            f"({c['markets_significantly_worse']}) |"
        )
    lines += [
        "",
        "mean: the mean over markets of the per-market differences. A better / worse: markets "
        "by the sign of the difference (marked ones in brackets).",
    ]
    return "\n".join(lines) + "\n"


def pairs_seed_aware_markdown(pairs: list[dict], names: list[str]) -> str:
    """One row per pair A:B, one column per market: the seed-aware test of A − B (mean
    difference [95% interval] and its marker, markdown.interval_cell)."""
    about = markdown.seed_aware_about(pairs[0]["seed_aware"])
    lines = [
        f"Seed-aware tests of A − B ({GAIN_METRIC}, mean difference [95% interval]), {about}; "
        "each pair a family.",
        "",
        "| A | B | " + " | ".join(names) + " |",
        "| --- | --- |" + " ---: |" * len(names),
    ]
    for c in pairs:
        tests = c["seed_aware"]["markets"]
        cells = [markdown.interval_cell(tests[n]) for n in names]
        lines.append(f"| {c['method']} | {c['reference']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
