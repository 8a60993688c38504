"""results.md: the Markdown of a results dict (fecosr_jax.report.results builds the dict), and the
writer of a run's result files (results.json, results.md, plots)."""

from __future__ import annotations

import math

from etils import epath

from fecosr_jax.data import summary
from fecosr_jax.federated import privacy
from fecosr_jax.report import significance
from fecosr_jax.report.verdicts import GAIN_METRIC
from fecosr_jax.store.files import write_json_atomic, write_text_atomic

# How the markers decide, for the Markdown: the family's adjusted p
# (fecosr_jax.report.significance).
TESTED = f"p < {significance.ALPHA} after Benjamini-Hochberg over the method's markets"


def p_text(p: float | None) -> str:
    """A p-value as the tables show it: two significant digits, "<1e-6" below what results.json
    keeps (reporting.clean rounds to 6 decimals), "-" when there is none."""
    return "-" if p is None else "<1e-6" if p < 1e-6 else f"{p:.2g}"


def epsilon_text(epsilon: float | None) -> str:
    """An epsilon of results.json (privacy.epsilon_json) as results.md writes it: "inf" for
    sigma 0."""
    epsilon = privacy.epsilon_read(epsilon)
    return "inf" if math.isinf(epsilon) else f"{epsilon:.3g}"


def privacy_markdown(report: dict) -> list[str]:
    """results.md's lines on user-level DP: one per pretraining and market."""
    lines = ["", "User-level differential privacy of what left each market (pretraining):"]
    for kind, markets in report.items():
        for name, e in markets.items():
            epsilon = epsilon_text(e["epsilon"])
            lines.append(
                f"- `{kind}` {name}: epsilon {epsilon} at delta {e['delta']:.2g} "
                f"(sigma {e['noise_multiplier']:.3g}, C {e['clip_norm']:g}, "
                f"q {e['sampling_rate']:.3g}, {e['steps']} steps)"
            )
    return lines


def composed_privacy_markdown(report: dict) -> list[str]:
    """results.md's lines on each market's whole run: every release of its data composed."""
    lines = ["", "Each market over the whole run (every pretraining that used its data, composed):"]
    for name, e in report.items():
        releases = ", ".join(f"`{k}`" for k in e["releases"])
        if e.get("not_private"):
            raw = ", ".join(f"`{k}`" for k in e["not_private"])
            lines.append(f"- {name}: not private ({raw} pools its raw data)")
        else:
            public = e.get("public")
            public = f"; declared public, sent without noise: {', '.join(public)}" if public else ""
            lines.append(
                f"- {name}: epsilon {epsilon_text(e['epsilon'])} at delta {e['delta']:.2g} "
                f"({releases}; {e['steps']} steps{public})"
            )
    return lines


# Markers of a seed-aware test (report.verdicts.seed_aware): ▲ / ▼ with two seeds or more;
# with one seed the verdict is about one trained model and gets hollow markers.
MARKS = {"better": " ▲", "worse": " ▼", "same": ""}
ONE_MODEL_MARKS = {"better": " △", "worse": " ▽", "same": ""}
FRAGILE = " †"  # the verdict changes when any one seed is left out


def mark(test: dict) -> str:
    """A seed-aware test's marker: ▲ / ▼ (△ / ▽ with one seed), and † where leaving out any
    one seed changes the verdict."""
    marks = MARKS if test["seeds"] > 1 else ONE_MODEL_MARKS
    return marks[test["verdict"]] + (FRAGILE if test["robust"] is False else "")


def marks_legend(tests: dict) -> str:
    """What a method's seed-aware markers mean (tests: its report.verdicts.seed_aware entry)."""
    seeds = next(iter(tests["markets"].values()))["seeds"]
    if seeds > 1:
        return (
            f"▲ / ▼: significantly better / worse than `local` in that market over {seeds} "
            f"seeds and its test users (seed-aware test: {tests['test']}; {TESTED}); † the "
            "verdict changes when any one seed is left out"
        )
    return (
        "△ / ▽: better / worse than `local` in that market for this one trained model (one "
        f"seed: {tests['test']}; {TESTED}). The training's randomness is not counted: a "
        "verdict about the method needs two seeds or more (`--config.seeds`), which mark "
        "▲ / ▼"
    )


def transfer_matrix(results: dict) -> list[str]:
    """Markdown lines: for each one-to-one method run from several sources (METHOD@MARKET),
    its gain over `local` with one row per source and one column per target market, the
    source's own cell in brackets, and the targets made better / worse (by sign, and by the
    seed-aware test in brackets). Empty when `local` did not run."""
    names, comp = results["markets"], results.get("vs_local", {})
    bases = dict.fromkeys(m.partition("@")[0] for m in comp if "@" in m)
    lines = []
    for base in bases:
        sources = [n for n in names if f"{base}@{n}" in comp]
        lines += [
            "",
            f"One-to-one `{base}` from each source (rows) to each target market (columns): "
            f"{GAIN_METRIC} gain over `local`, [the source itself], markers as above.",
            "",
            "| source | "
            + " | ".join(names)
            + " | targets better (marked) | targets worse (marked) |",
            "| --- |" + " ---: |" * (len(names) + 2),
        ]
        for source in sources:
            c = comp[f"{base}@{source}"]
            tests = c.get("seed_aware", {}).get("markets", {})
            cells, better, worse, up, down = [], 0, 0, 0, 0
            for n in names:
                gain, test = c["gain"][n], tests.get(n)
                verdict = test["verdict"] if test else "same"
                cell = "-" if gain is None else f"{gain:+.4f}" + (mark(test) if test else "")
                if n == source:
                    cells.append(f"[{cell}]")
                    continue
                cells.append(cell)
                better += gain is not None and gain > 0
                worse += gain is not None and gain < 0
                up += verdict == "better"
                down += verdict == "worse"
            lines.append(
                f"| {source} | " + " | ".join(cells) + f" | {better} ({up}) | {worse} ({down}) |"
            )
    return lines


def interval_cell(test: dict) -> str:
    """A seed-aware test as a cell: the mean difference, its 95% interval and its marker
    (`mark`: by the adjusted p)."""
    if test["ci"] is None:
        return f"{test['diff']:+.4f}"
    low, high = test["ci"]
    return f"{test['diff']:+.4f} [{low:+.4f}, {high:+.4f}]{mark(test)}"


def seed_aware_about(tests: dict) -> str:
    """What one method's seed-aware tests (report.verdicts.seed_aware) count, for the line
    above their table."""
    seeds = next(iter(tests["markets"].values()))["seeds"]
    if seeds > 1:
        return (
            f"over {seeds} seeds and the test users ({tests['test']}), so the training's "
            "randomness counts; † = the verdict changes when any one seed is left out"
        )
    return (
        "about one trained model: one seed, so the test counts the test users and not the "
        "training's randomness"
    )


def seed_aware_markdown(results: dict) -> list[str]:
    """The seed-aware tests against `local` (report.verdicts.seed_aware): a row per method, a
    column per market."""
    comp = {m: c["seed_aware"] for m, c in results.get("vs_local", {}).items() if "seed_aware" in c}
    if not comp:
        return []
    names = results["markets"]
    lines = [
        "",
        f"Seed-aware tests against `local` ({GAIN_METRIC}, mean difference [95% interval]), "
        f"{seed_aware_about(next(iter(comp.values())))}; markers as above.",
        "",
        "| seed-aware | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for method, test in comp.items():
        cells = [interval_cell(test["markets"][n]) for n in names]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def results_markdown(results: dict) -> str:
    methods = results["methods"]
    names = results["markets"]
    std = results.get("std")
    seeds = results.get("seeds")
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}" if seeds else "one seed"
    lines = [
        f"# {results['dataset']}",
        "",
        f"Test {GAIN_METRIC}, {results['protocol']} ranking, {over} ({len(names)} markets).",
        "",
    ]
    if loaded := results.get("pretrained"):
        lines += [
            f"The pretrained methods start from `{loaded['key']}` of {loaded['directory']} "
            f"(config.pretrained), pretrained on markets {', '.join(loaded['trained_on'])}.",
            "",
        ]
    if results.get("newcomers"):
        lines += [
            f"Newcomer markets: {', '.join(results['newcomers'])}. They took no part in "
            "pretraining and fine-tune from the model the other markets pretrained.",
            "",
        ]
    comp = results.get("vs_local", {})
    aware = next((c["seed_aware"] for c in comp.values() if "seed_aware" in c), None)
    if aware is not None:
        lines += [f"{marks_legend(aware)}.", ""]
    cols = list(methods)
    lines += ["| market | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for row in [*names, "mean", "market_mean"]:
        cells = []
        for c in cols:
            v = methods[c][row][GAIN_METRIC]
            cell = "-" if v is None else f"{v:.4f}"
            if v is not None and std and std[c][row][GAIN_METRIC]:
                cell += f" ± {std[c][row][GAIN_METRIC]:.4f}"
            test = comp.get(c, {}).get("seed_aware", {}).get("markets", {}).get(row)
            cells.append(cell + (mark(test) if test else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if comp:
        lines += [
            "",
            f"Against `local` ({GAIN_METRIC} per market; 'significantly': the seed-aware test "
            f"of the markers above, † of them fragile; 'these models': the per-user test of "
            f"these trained models, which never marks a cell):",
            "",
            "| method | mean gain | markets better | markets worse | significantly better "
            "| significantly worse | fragile (†) | these models: better / worse |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for method, c in comp.items():
            pooled = [t["verdict"] for t in c.get("trained_models", {}).get("markets", {}).values()]
            these = f"{pooled.count('better')} / {pooled.count('worse')}" if pooled else "-"
            lines.append(
                f"| {method} | {c['mean_gain']:+.4f} | {c['markets_better']} | "
                f"{c['markets_worse']} | {c.get('markets_significantly_better', '-')} | "
                f"{c.get('markets_significantly_worse', '-')} | {c.get('markets_fragile', '-')} | "
                f"{these} |"
            )
    tested = {m: c["over_seeds"] for m, c in comp.items() if "over_seeds" in c}
    if tested:
        lines += [
            "",
            f"Over seeds (each method's mean over markets of {GAIN_METRIC} against `local`'s, "
            f"paired by seed, two-sided t-test over {len(seeds)} seeds; p < "
            f"{significance.ALPHA} after Benjamini-Hochberg over the run's methods; detectable: "
            f"the smallest difference the test finds with {significance.POWER:.0%} power):",
            "",
            "| method | mean difference [95% interval] | p | adjusted p | detectable | verdict |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for method, t in tested.items():
            low, high = t["ci"]
            lines.append(
                f"| {method} | {t['diff']:+.4f} [{low:+.4f}, {high:+.4f}] | "
                f"{p_text(t['p_value'])} | {p_text(t['p_adjusted'])} | "
                f"{t['detectable']:.4f} | {t['verdict']} |"
            )
    lines += seed_aware_markdown(results)
    lines += transfer_matrix(results)
    if results.get("transfer_source"):
        lines += [
            "",
            f"`transfer` / `transfer_id` pretrain on the source market "
            f"`{results['transfer_source']}` only (`METHOD@m`: on market m); the source's row "
            "shows what transfer gives the source itself.",
        ]
    for method, reason in results.get("skipped", {}).items():
        lines += ["", f"Skipped `{method}`: {reason}"]
    if results.get("soft_labels"):
        lines += ["", summary.soft_labels_markdown(results["soft_labels"])]
    if results.get("privacy"):
        lines += privacy_markdown(results["privacy"])
    if results.get("privacy_composed"):
        lines += composed_privacy_markdown(results["privacy_composed"])
    lines += [
        "",
        "HR@10 / MRR@10 (user-weighted mean): "
        + ", ".join(
            f"{m} {methods[m]['mean']['hr@10']:.4f} / {methods[m]['mean']['mrr@10']:.4f}"
            for m in cols
        ),
    ]
    return "\n".join(lines) + "\n"


def write_results(workdir: str, results: dict, curves: dict, *, plots: bool) -> str:
    """Writes results.json, results.md and (with `plots`) the plots; returns the Markdown."""
    root = epath.Path(workdir)
    table = results_markdown(results)
    write_json_atomic(root / "results.json", results)
    write_text_atomic(root / "results.md", table)
    if plots:
        from fecosr_jax.report import plots as plots_lib  # matplotlib: only when plotting

        plots_lib.plot(results, curves, workdir)
    return table
