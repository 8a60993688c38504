"""Run outputs: per-market result tables (JSON + Markdown), plots, and the metrics log.

results.json is a pure function of the config and seed (no timings); timings and training
curves go to metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from fecosr_jax import significance
from fecosr_jax.data import summary
from fecosr_jax.files import write_bytes_atomic, write_text_atomic

REPORTED = ("hr@10", "ndcg@10", "mrr@10")
GAIN_METRIC = "ndcg@10"


def write_ranks(path, ranks: dict[str, dict[str, list[int]]]) -> None:
    """Per-user test ranks {method: {market: [U]}} as RANKS.npz, one int32 array per
    "method/market" (what the paired tests and experiments.compare read)."""
    import io

    buffer = io.BytesIO()
    arrays = {f"{m}/{n}": np.asarray(r, np.int32) for m, by in ranks.items() for n, r in by.items()}
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def read_ranks(path) -> dict[str, dict[str, list[int]]]:
    """The inverse of write_ranks."""
    out: dict[str, dict[str, list[int]]] = {}
    with np.load(epath.Path(path).open("rb")) as data:
        for key in data.files:
            method, _, market = key.partition("/")
            out.setdefault(method, {})[market] = data[key].tolist()
    return out


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# How the markers decide, for the Markdown: the family's adjusted p (fecosr_jax.significance).
TESTED = f"p < {significance.ALPHA} after Benjamini-Hochberg over the method's markets"


def clean(x) -> float | None:
    """A JSON-safe rounded float (None for None, NaN or Inf)."""
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def per_market_table(names, metrics: dict[str, np.ndarray]) -> dict:
    """{market: {metric: value}, "mean": user-weighted mean, "market_mean": plain mean}."""
    m = len(names)
    counts = np.asarray(metrics["count"][:m], np.float64)
    keys = sorted(k for k in metrics if k != "count")
    out = {n: {k: clean(metrics[k][i]) for k in keys} for i, n in enumerate(names)}
    w = counts / max(counts.sum(), 1.0)
    out["mean"] = {k: clean(np.sum(np.asarray(metrics[k][:m]) * w)) for k in keys}
    out["market_mean"] = {k: clean(np.mean(metrics[k][:m])) for k in keys}
    return out


def comparison(methods: dict, names, reference: str = "local", ranks: dict | None = None) -> dict:
    """Per method: gain in NDCG@10 over `reference` per market, the markets better / worse by
    the sign of the gain and, where both methods' per-user test ranks are known (`ranks`:
    {method: {market: [S, U] or [U] ranks}}, S seeds), a paired t-test per market over the
    same test users (fecosr_jax.significance) with the markets significantly better / worse."""
    if reference not in methods:
        return {}
    ref = methods[reference]
    ranks = ranks or {}
    out = {}
    for method, table in methods.items():
        if method == reference:
            continue
        gains = {n: clean(table[n][GAIN_METRIC] - ref[n][GAIN_METRIC]) for n in names}
        values = np.asarray([g for g in gains.values()], np.float64)
        out[method] = {
            "gain": gains,
            "mean_gain": clean(values.mean()),
            "markets_better": int((values > 0).sum()),
            "markets_worse": int((values < 0).sum()),
        }
        if method in ranks and reference in ranks:
            tests = {}
            for n in names:
                a, b = (
                    np.nanmean(np.atleast_2d(significance.per_user(r[n], GAIN_METRIC)), axis=0)
                    for r in (ranks[method], ranks[reference])
                )
                tests[n] = significance.paired_test(a, b)
            tests = {
                n: {
                    "diff": clean(t["diff"]),
                    "p_value": clean(t["p_value"]),
                    "p_adjusted": clean(t["p_adjusted"]),
                    "users": t["users"],
                    "verdict": t["verdict"],
                }
                for n, t in significance.correct(tests).items()
            }
            verdicts = [t["verdict"] for t in tests.values()]
            out[method]["correction"] = significance.CORRECTION
            out[method]["significance"] = tests
            out[method]["markets_significantly_better"] = verdicts.count("better")
            out[method]["markets_significantly_worse"] = verdicts.count("worse")
    return out


def pool_ranks(per_seed: list[dict]) -> dict:
    """Per-user test ranks of several seeds, {method: {market: [ranks]}} each, as
    {method: {market: [S_m, U] array}} (S_m: the seeds that have the method)."""
    pooled: dict = {}
    for ranks in per_seed:
        for method, by_market in ranks.items():
            for market, r in by_market.items():
                pooled.setdefault(method, {}).setdefault(market, []).append(r)
    return {m: {n: np.asarray(r) for n, r in by.items()} for m, by in pooled.items()}


def results(
    *,
    dataset: str,
    protocol: str,
    markets: list[str],
    methods: dict,
    ranks: dict,
    skipped: dict,
    transfer_source: str | None,
    soft_labels: dict,
    privacy: dict | None = None,
    seeds: list[int] | None = None,
    std: dict | None = None,
    over_seeds: dict | None = None,
) -> dict:
    """The results dict (results.json) of one seed, or of several seeds combined (`seeds`,
    `std` in the shape of `methods`, and with SEED_TEST_MIN or more seeds `over_seeds`,
    {method: the test over seeds}): the one place its fields are put together. "vs_local"
    comes from `methods` and the per-user test `ranks` ({method: {market: [U] or [S, U]}}:
    `comparison`)."""
    out = {
        "dataset": dataset,
        "protocol": protocol,
        "markets": markets,
        "methods": methods,
        "vs_local": comparison(methods, markets, ranks=ranks),
        "skipped": skipped,
        "transfer_source": transfer_source,
        "soft_labels": soft_labels,
    }
    if seeds is not None:
        out["seeds"], out["std"] = list(seeds), std
    for method, test in (over_seeds or {}).items():
        out["vs_local"][method]["over_seeds"] = test
    if privacy is not None:
        out["privacy"] = privacy
    return out


def mean_std(values) -> tuple[float | None, float | None]:
    """The mean over seeds and the standard deviation (ddof 1; 0 for one seed), rounded; a
    mean of None where a seed lacks the value (None or NaN): nothing is averaged over fewer
    seeds than were run."""
    v = np.asarray([np.nan if x is None else x for x in values], np.float64)
    return clean(v.mean()), clean(v.std(ddof=1)) if len(v) > 1 else 0.0


def combine_seeds(per_seed: list[dict], seeds: list[int], ranks: dict) -> dict:
    """One results dict from the results of several seeds on the same markets and users:
    "methods" holds the mean over seeds of every metric, "std" the standard deviation (ddof 1),
    and "vs_local" the paired tests on the per-user metric averaged over seeds."""
    first = per_seed[0]
    names = first["markets"]
    rows = [*names, "mean", "market_mean"]
    methods = [m for m in first["methods"] if all(m in r["methods"] for r in per_seed)]
    means, stds = {}, {}
    for m in methods:
        means[m], stds[m] = {}, {}
        for row in rows:
            means[m][row], stds[m][row] = {}, {}
            for k in first["methods"][m][row]:
                v = [r["methods"][m][row][k] for r in per_seed]
                means[m][row][k], stds[m][row][k] = mean_std(v)
    skipped = {}
    for r in per_seed:
        skipped.update(r.get("skipped", {}))
    over_seeds = None
    if len(per_seed) >= SEED_TEST_MIN and "local" in methods:
        over_seeds = {m: seed_test(per_seed, m) for m in methods if m != "local"}
    return results(
        dataset=first["dataset"],
        protocol=first["protocol"],
        markets=names,
        methods=means,
        ranks=ranks,
        skipped=skipped,
        transfer_source=first.get("transfer_source"),
        soft_labels=first.get("soft_labels", {}),
        privacy=(
            worst_privacy([r.get("privacy", {}) for r in per_seed])
            if any("privacy" in r for r in per_seed)
            else None
        ),
        seeds=seeds,
        std=stds,
        over_seeds=over_seeds,
    )


# Seeds from which a method's market-mean is also tested over seeds (combine_seeds).
SEED_TEST_MIN = 5


def seed_test(per_seed: list[dict], method: str, reference: str = "local") -> dict:
    """The method against `reference` over seeds: per seed the plain mean over markets of
    the test GAIN_METRIC (each seed's "market_mean"), paired by seed, two-sided t-test
    (significance.paired_test; one test per method, so no family to adjust).

    Returns:
      {"metric": "market_mean <GAIN_METRIC>", "diff": mean over seeds of the difference,
      "p_value", "seeds": n, "verdict"}.
    """
    a, b = (
        [np.nan if (v := r["methods"][m]["market_mean"][GAIN_METRIC]) is None else v
         for r in per_seed]
        for m in (method, reference)
    )  # fmt: skip
    t = significance.paired_test(np.asarray(a), np.asarray(b))
    return {
        "metric": f"market_mean {GAIN_METRIC}",
        "diff": clean(t["diff"]),
        "p_value": clean(t["p_value"]),
        "seeds": t["users"],
        "verdict": t["verdict"],
    }


def worst_privacy(reports: list[dict]) -> dict:
    """Per pretraining and market, the seed's entry with the largest epsilon (with partial
    participation each seed's markets train in different rounds)."""
    out: dict[str, dict] = {}
    for report in reports:
        for kind, markets in report.items():
            for name, entry in markets.items():
                kept = out.setdefault(kind, {}).get(name)
                if kept is None or entry["epsilon"] > kept["epsilon"]:
                    out[kind][name] = entry
    return out


def privacy_markdown(report: dict) -> list[str]:
    """results.md's lines on user-level DP: one per pretraining and market."""
    lines = ["", "User-level differential privacy of what left each market (pretraining):"]
    for kind, markets in report.items():
        for name, e in markets.items():
            lines.append(
                f"- `{kind}` {name}: epsilon {e['epsilon']:.3g} at delta {e['delta']:.2g} "
                f"(sigma {e['noise_multiplier']:.3g}, C {e['clip_norm']:g}, "
                f"q {e['sampling_rate']:.3g}, {e['steps']} steps)"
            )
    return lines


MARKS = {"better": " ▲", "worse": " ▼", "same": ""}


def transfer_matrix(results: dict) -> list[str]:
    """Markdown lines: for each one-to-one method run from several sources (METHOD@MARKET),
    its gain over `local` with one row per source and one column per target market, the
    source's own cell in brackets, and the targets made better / worse (paired test). Empty
    when `local` did not run."""
    names, comp = results["markets"], results.get("vs_local", {})
    bases = dict.fromkeys(m.partition("@")[0] for m in comp if "@" in m)
    lines = []
    for base in bases:
        sources = [n for n in names if f"{base}@{n}" in comp]
        lines += [
            "",
            f"One-to-one `{base}` from each source (rows) to each target market (columns): "
            f"{GAIN_METRIC} gain over `local`, [the source itself], ▲ / ▼ as above.",
            "",
            "| source | " + " | ".join(names) + " | targets better (▲) | targets worse (▼) |",
            "| --- |" + " ---: |" * (len(names) + 2),
        ]
        for source in sources:
            c = comp[f"{base}@{source}"]
            tests = c.get("significance", {})
            cells, better, worse, up, down = [], 0, 0, 0, 0
            for n in names:
                gain, verdict = c["gain"][n], tests.get(n, {}).get("verdict", "same")
                cell = "-" if gain is None else f"{gain:+.4f}{MARKS[verdict]}"
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
    comp = results.get("vs_local", {})
    if any("significance" in c for c in comp.values()):
        lines += [
            f"▲ / ▼: significantly better / worse than `local` in that market (paired t-test "
            f"over its test users' {GAIN_METRIC}; {TESTED}).",
            "",
        ]
    cols = list(methods)
    lines += ["| market | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for row in [*names, "mean", "market_mean"]:
        cells = []
        for c in cols:
            v = methods[c][row][GAIN_METRIC]
            cell = "-" if v is None else f"{v:.4f}"
            if v is not None and std and std[c][row][GAIN_METRIC]:
                cell += f" ± {std[c][row][GAIN_METRIC]:.4f}"
            test = comp.get(c, {}).get("significance", {}).get(row)
            cells.append(cell + (MARKS[test["verdict"]] if test else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if comp:
        lines += [
            "",
            f"Against `local` ({GAIN_METRIC} per market; 'significantly': paired t-test, "
            f"{TESTED}):",
            "",
            "| method | mean gain | markets better | markets worse | significantly better "
            "| significantly worse |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for method, c in comp.items():
            lines.append(
                f"| {method} | {c['mean_gain']:+.4f} | {c['markets_better']} | "
                f"{c['markets_worse']} | {c.get('markets_significantly_better', '-')} | "
                f"{c.get('markets_significantly_worse', '-')} |"
            )
    tested = {m: c["over_seeds"] for m, c in comp.items() if "over_seeds" in c}
    if tested:
        lines += [
            "",
            f"Over seeds (each method's mean over markets of {GAIN_METRIC} against `local`'s, "
            f"paired by seed, two-sided t-test over {len(seeds)} seeds, p < "
            f"{significance.ALPHA}):",
            "",
            "| method | mean difference | p | verdict |",
            "| --- | ---: | ---: | --- |",
        ]
        for method, t in tested.items():
            p = "-" if t["p_value"] is None else f"{t['p_value']:.2g}"
            lines.append(f"| {method} | {t['diff']:+.4f} | {p} | {t['verdict']} |")
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
        from fecosr_jax import plots as plots_lib  # matplotlib: only when plotting

        plots_lib.plot(results, curves, workdir)
    return table
