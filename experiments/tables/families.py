"""docs/results.md's tables of one claim's tests gathered from several runs and adjusted as one
family (docs/design.md §5): claim 2's S²CE-vs-CE tests over seeds."""

from __future__ import annotations

from experiments.tables import runs as run_tables
from experiments.tables.cells import plain, row, signed
from experiments.tables.results import DEFAULT_SEEDS, ML100K_SEEDS
from experiments.tables.sweeps import CLAIM2_POINTS, CLAIM2_SEEDS
from fecosr_jax.report import markdown, significance, verdicts


def s2ce_family() -> str:
    """Every test of S²CE against CE over seeds the document makes, as one family (claim 2,
    docs/design.md §5): the 6 points of the heterogeneity x overlap grid, the main job, and
    ml-100k regions with and without the adaptation module; per test the market-mean
    difference [95% interval] paired by seed, p, the Benjamini-Hochberg p over the 9 and the
    smallest difference it finds with 80% power."""
    seeds = range(5)
    folders = {f"grid h {h}, overlap {o}": CLAIM2_SEEDS / f"h{h}_o{o}" for h, o in CLAIM2_POINTS}
    folders["the main job (8 markets)"] = DEFAULT_SEEDS
    tests = {}
    for label, folder in folders.items():
        per_seed, _ = run_tables.seed_runs(folder, seeds)
        tests[(label, "fecosr")] = verdicts.seed_test(per_seed, "fecosr", "fecosr_no_s2ce")
    per_seed, _ = run_tables.seed_runs(ML100K_SEEDS, seeds)
    for a, b, what in (("fecosr", "fecosr_no_s2ce", "fecosr"),
                       ("fecosr_no_adapt", "fedavg_ce", "fecosr_no_adapt")):  # fmt: skip
        tests[("ml-100k regions", what)] = verdicts.seed_test(per_seed, a, b)
    lines = [
        row(["where", "S²CE method", "S²CE − CE [95% interval]", "p", "adjusted p (of 9)",
             "detectable"]),
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for (where, method), t in significance.correct(tests).items():
        low, high = t["ci"]
        lines.append(
            row(
                [
                    where,
                    f"`{method}`",
                    f"{signed(t['diff'])} [{signed(low)}, {signed(high)}]",
                    markdown.p_text(t["p_value"]),
                    markdown.p_text(t["p_adjusted"]),
                    plain(t["detectable"]),
                ]
            )
        )
    return "\n".join(lines) + "\n"
