"""The tables of a run's folder (one seed, or seed_<s>/ per seed) from its raw files:
results.json, ranks.npz (per-user test ranks) and config.json. The statistics are the run's own
(fecosr_jax.report.results: the paired tests made again from the ranks, combine_seeds, the
multiple-comparison control), so a table says what the run reported; experiments.tables.results
uses them for docs/results.md."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np

from experiments.tables.cells import row, signed
from fecosr_jax.federated import privacy
from fecosr_jax.report import markdown, method_pairs, significance, verdicts
from fecosr_jax.report import results as results_lib
from fecosr_jax.runs import paradigms
from fecosr_jax.store import resume
from fecosr_jax.store.files import read_json


def read_run(folder: pathlib.Path) -> tuple[dict, dict]:
    """One seed's results.json and per-user test ranks (ranks.npz)."""
    return read_json(folder / "results.json"), results_lib.read_ranks(folder / "ranks.npz")


def config_changes(a: pathlib.Path, b: pathlib.Path) -> dict[str, tuple]:
    """The config fields that change results in which two runs' config.json differ:
    {dotted name: (a's value, b's value)} (resume.changed_fields, as a resume checks them)."""
    return resume.changed_fields(*(read_json(f / "config.json") for f in (a, b)))


@dataclasses.dataclass(frozen=True)
class Joined:
    """Methods a table joins to a run over seeds from another run of the same seeds, config
    and test users (folder/seed_<s>/): methods trained apart (one-to-one transfer from each
    source market in its own run) are compared with the run's own without training those
    again."""

    folder: pathlib.Path
    methods: tuple[str, ...]


def seed_runs(
    folder: pathlib.Path, seeds, joined: tuple[Joined, ...] = ()
) -> tuple[list[dict], dict]:
    """Each seed's results (folder/seed_<s>/) and their per-user ranks pooled over seeds;
    each seed also has the `joined` methods of the same seed, after its own (run_order). A
    joined run whose config differs from the run's in more than the methods, or whose markets
    or test users differ, is refused (ValueError)."""
    runs = [read_run(folder / f"seed_{s}") for s in seeds]
    for other in reversed(joined):  # with_local puts them first: the first one leads
        for s in seeds:
            changes = config_changes(folder / f"seed_{s}", other.folder / f"seed_{s}")
            if set(changes) - {"methods"}:
                raise ValueError(f"{other.folder}/seed_{s}: its config differs in {changes}")
        runs = [
            with_local(run, read_run(other.folder / f"seed_{s}"), other.methods)
            for s, run in zip(seeds, runs, strict=True)
        ]
    return pooled(runs)


def pooled(runs: list[tuple[dict, dict]]) -> tuple[list[dict], dict]:
    """Runs' (results, ranks) as their results and their per-user ranks pooled."""
    return [r for r, _ in runs], results_lib.pool_ranks([k for _, k in runs])


def combined(folder: pathlib.Path, seeds) -> dict:
    """The results of `seeds` (folder/seed_<s>/) combined as the run combines them."""
    per_seed, ranks = seed_runs(folder, seeds)
    return results_lib.combine_seeds(per_seed, list(seeds), ranks)


# results.md's parts the docs show: the per-market table, the summary against `local` and,
# with 5 seeds or more, the test over seeds, and a one-to-one method's matrix of sources and
# targets (not the market sizes or the soft labels).
RUN_PARTS = (
    "▲ / ▼", "△ / ▽", "| market |", "Against `local`", "| method |", "Over seeds", "One-to-one",
    "| source |",
)  # fmt: skip


def run_order(folder: pathlib.Path, raw: dict) -> dict:
    """raw's methods in the run's order (its config.json's; results.json sorts its keys), then
    the others in raw's order, popularity last."""
    listed = paradigms.parse_methods(read_json(folder / "config.json")["methods"])
    order = [m for m in listed if m in raw["methods"]]
    order += [m for m in raw["methods"] if m not in order and m != "popularity"] + ["popularity"]
    return {m: raw["methods"][m] for m in order}


def retested(folder: pathlib.Path) -> dict:
    """A one-seed run's results dict with its paired tests made again from its per-user ranks
    (results_lib.results, as the run made them)."""
    raw, ranks = read_run(folder)
    return results_lib.results(
        **{k: raw[k] for k in ("dataset", "protocol", "markets", "skipped")},
        methods=run_order(folder, raw),
        ranks=ranks,
        transfer_source=raw.get("transfer_source"),
        soft_labels=raw.get("soft_labels", {}),
    )


def tables(results: dict) -> str:
    """The RUN_PARTS of a run's results.md, made from its results dict."""
    text = markdown.results_markdown(results)
    parts = [p for p in text.split("\n\n") if p.startswith(RUN_PARTS)]
    return "\n\n".join(p for p in parts if not p.startswith("| market | items |")) + "\n"


def over_seeds(folder: pathlib.Path, seeds, joined: tuple[Joined, ...] = ()) -> str:
    """A run over `seeds` (folder/seed_<s>/; with the `joined` methods) combined as the run
    combines them: per market the mean ± std over seeds and the pooled per-user tests, then
    each method's market mean against `local`'s over seeds, and the one-to-one matrix of a
    method run from each source."""
    per_seed, ranks = seed_runs(folder, seeds, joined)
    for s, raw in zip(seeds, per_seed, strict=True):
        raw["methods"] = run_order(folder / f"seed_{s}", raw)
    return tables(results_lib.combine_seeds(per_seed, list(seeds), ranks))


def seed_aware_over_seeds(
    folder: pathlib.Path, seeds, joined: tuple[Joined, ...] = (), methods: tuple[str, ...] = ()
) -> str:
    """The seed-aware tests against `local` of a run over `seeds` (with the `joined`
    methods; only `methods` when given): a row per method, a column per market, each cell
    the mean difference [95% interval] with ▲ / ▼ and † (report.markdown.interval_cell),
    then what the per-user test of these trained models finds in the same cells (it marks
    nothing), and the smallest effect each market's test finds with 80% power."""
    per_seed, ranks = seed_runs(folder, seeds, joined)
    names = per_seed[0]["markets"]
    against = results_lib.combine_seeds(per_seed, list(seeds), ranks)["vs_local"]
    rows = [m for m in ranks if m in against and (not methods or m in methods)]
    lines = [
        "| method | " + " | ".join(names) + " | these models: better / worse | detectable |",
        "| --- |" + " ---: |" * len(names) + " ---: | ---: |",
    ]
    for m in rows:
        tests = against[m]["seed_aware"]["markets"]
        marks = [against[m]["trained_models"]["markets"][n]["verdict"] for n in names]
        detectable = [tests[n]["detectable"] for n in names]
        lines.append(
            row(
                [
                    m,
                    *(markdown.interval_cell(tests[n]) for n in names),
                    f"{marks.count('better')} / {marks.count('worse')}",
                    f"{min(detectable):.4f} to {max(detectable):.4f}",
                ]
            )
        )
    return "\n".join(lines).replace("-0.", "−0.") + "\n"


def pairs_over_seeds(
    folder: pathlib.Path,
    seeds,
    pairs: list[tuple[str, str, str]],
    joined: tuple[Joined, ...] = (),
) -> str:
    """Method A against method B for each (A, B, question): the market-mean A − B over seeds,
    paired by seed (its 95% interval, p, Benjamini-Hochberg over the table's pairs, and the
    smallest difference it finds with 80% power), and per market the
    seed-aware tests (method_pairs, Benjamini-Hochberg over the markets): how many markets A
    is above B by sign, and which it is significantly better / worse in (†: fragile). With
    `joined` runs, their methods join each seed's (seed_runs)."""
    per_seed, ranks = seed_runs(folder, seeds, joined)
    results = results_lib.combine_seeds(per_seed, list(seeds), ranks)
    names = results["markets"]
    compared = method_pairs.pair_comparison(results, ranks, [(a, b) for a, b, _ in pairs])
    over = significance.correct(
        {(a, b): verdicts.seed_test(per_seed, a, reference=b) for a, b, _ in pairs}
    )
    lines = [
        row(["A", "B", "question", "A − B over seeds [95% interval] (p; adj.)", "detectable",
             "markets A > B by sign", "▲ (markets)", "▼ (markets)"]),
        "| --- | --- | --- |" + " ---: |" * 5,
    ]  # fmt: skip

    def markets(pair: dict, verdict: str) -> str:
        tests = pair["seed_aware"]["markets"]
        named = [
            m + (markdown.FRAGILE if tests[m]["robust"] is False else "")
            for m in names
            if tests[m]["verdict"] == verdict
        ]
        return f"{len(named)} ({', '.join(named)})" if named else "0"

    for (a, b, question), pair in zip(pairs, compared, strict=True):
        t = over[(a, b)]
        low, high = t["ci"]
        test = f"{signed(t['diff'])} [{signed(low)}, {signed(high)}] "
        test += f"({markdown.p_text(t['p_value'])}; {markdown.p_text(t['p_adjusted'])})"
        by_sign = f"{pair['markets_better']} of {len(names)}"
        lines.append(
            row(
                [
                    a,
                    b,
                    question,
                    test,
                    f"{t['detectable']:.4f}",
                    by_sign,
                    markets(pair, "better"),
                    markets(pair, "worse"),
                ]
            )  # fmt: skip
        )
    return "\n".join(lines) + "\n"


def epsilon_label(epsilon: float) -> str:
    """A privacy budget as the tables write it: 1, 2.5, ∞ (DP off)."""
    return "∞" if math.isinf(epsilon) else f"{epsilon:g}"


def spent_label(epsilon: float | None) -> str:
    """An epsilon spent as the tables write it: "-" without DP, "∞ (σ = 0)" for DP's mechanism
    without noise (launch/sweep.py --epsilon_inf=noiseless), else two decimals."""
    return "-" if epsilon is None else "∞ (σ = 0)" if math.isinf(epsilon) else f"{epsilon:.2f}"


def with_local(
    run: tuple[dict, dict], baseline: tuple[dict, dict], methods: tuple[str, ...] = ("local",)
) -> tuple[dict, dict]:
    """A run's (results, ranks) with `methods` taken from `baseline`, a run of the same seed on
    the same markets and test users, and put first (local trains nothing shared, so a setting
    of the federated stage does not change it: a sweep over such settings trains it once)."""
    (results, ranks), (base, base_ranks) = run, baseline
    users = base_ranks[methods[0]]
    if results["markets"] != base["markets"] or any(
        len(ranks[m][n]) != len(users[n]) for m in ranks for n in ranks[m]
    ):
        raise ValueError("the other run's markets or test users differ from the run's")
    taken = {m: base["methods"][m] for m in methods}
    rest = {m: v for m, v in results["methods"].items() if m not in taken}
    kept = {m: r for m, r in ranks.items() if m not in taken}
    return results | {"methods": taken | rest}, {m: base_ranks[m] for m in methods} | kept


def privacy_points(
    columns: dict[float, list[pathlib.Path]],
    seeds,
    method: str,
    local: list[pathlib.Path] | None = None,
) -> dict:
    """`method` against `local` at each privacy budget: columns {epsilon (inf: DP off): the run
    folders of its seeds}; `local`: run folders (one per seed, in the same order) whose `local`
    every budget is compared with (None: each run's own). Per budget: per market the
    seed-aware test against `local` (verdicts.seed_aware: its "diff", "verdict" after
    Benjamini-Hochberg over the markets, "robust", "users"), the per-user test of these
    trained models ("trained_models"), the market-mean gain of each seed and its [mean, std]
    over seeds ("gain"), `local`'s market mean over seeds as [mean, half-width of its 95%
    t-interval] ("local": what the seeds of `local` alone allow; half-width None with one
    seed), and the epsilon spent (the largest over markets and seeds; None without DP). With
    verdicts.SEED_TEST_MIN seeds or more, "mean": the market mean's test over seeds
    (`curve_mean_tests`), and where the ∞ column is the finite budgets' recipe at σ = 0
    (`one_recipe`), each finite budget's "noise": its cost against ∞ (`noise_cost_tests`)."""
    baselines = None if local is None else [read_run(f) for f in local]
    points, per_budget = {}, {}
    for epsilon, folders in columns.items():
        runs = [read_run(f) for f in folders]
        if baselines is not None:
            runs = [with_local(r, b) for r, b in zip(runs, baselines, strict=True)]
        per_seed, ranks = pooled(runs)
        per_budget[epsilon] = per_seed
        results = results_lib.combine_seeds(per_seed, list(seeds), ranks)
        worst = results_lib.worst_privacy([r.get("privacy", {}) for r in per_seed])
        budgets = [
            privacy.epsilon_read(e["epsilon"])
            for markets in worst.values()
            for e in markets.values()
        ]
        own = [r["methods"]["local"]["market_mean"]["ndcg@10"] for r in per_seed]
        gains = [
            r["methods"][method]["market_mean"]["ndcg@10"] - o
            for r, o in zip(per_seed, own, strict=True)
        ]
        points[epsilon] = {
            "markets": results["vs_local"][method]["seed_aware"]["markets"],
            "trained_models": results["vs_local"][method]["trained_models"]["markets"],
            "seed_gains": gains,
            "gain": results_lib.mean_std(gains),
            "local": [float(np.mean(own)), _half_width(own)],  # the plot's band
            "spent": max(budgets) if budgets else None,
        }
    if len(seeds) >= verdicts.SEED_TEST_MIN:
        for epsilon, test in curve_mean_tests(per_budget, method).items():
            points[epsilon]["mean"] = test
        if one_recipe(columns):
            for epsilon, test in noise_cost_tests(per_budget, method).items():
                points[epsilon]["noise"] = test
    return points


# What a curve's finite budgets may differ in from its ∞ run of the same seed for the drop
# between them to be the noise's: its amount, and which other methods the process trained.
NOISE_ONLY = {"federated.dp.noise_multiplier", "federated.dp.target_epsilon", "methods"}
NOISE_FAMILY = "the curve's budgets against ∞"


CURVE_FAMILY = "the curve's budgets"


def curve_mean_tests(per_budget: dict[float, list[dict]], method: str) -> dict[float, dict]:
    """Per budget, `method`'s market mean against `local`'s over seeds (verdicts.seed_test:
    paired by seed, t-test over the seeds, its interval and detectable effect), the budgets
    one family (CURVE_FAMILY, `_budgets_family`)."""
    pairs = {
        e: (verdicts.market_means(runs, method), verdicts.market_means(runs, "local"))
        for e, runs in per_budget.items()
    }
    return _budgets_family(pairs, CURVE_FAMILY)


def _budgets_family(pairs: dict[float, tuple[list, list]], name: str) -> dict[float, dict]:
    """Per budget, market means a against b over seeds (verdicts.market_means_test), the
    budgets one family `name` (Benjamini-Hochberg), each with "robust" (verdicts.with_robust:
    its verdict when any one seed is left out of every budget)."""
    pairs = {e: (np.asarray(a), np.asarray(b)) for e, (a, b) in pairs.items()}

    def family(keep) -> dict[float, dict]:
        return significance.correct(
            {e: verdicts.market_means_test(a[keep], b[keep]) for e, (a, b) in pairs.items()}
        )

    num_seeds = len(next(iter(pairs.values()))[0])
    return {e: {**t, "family": name} for e, t in verdicts.with_robust(family, num_seeds).items()}


def one_recipe(columns: dict[float, list[pathlib.Path]]) -> bool:
    """Whether the ∞ column (launch/sweep.py --epsilon_inf=noiseless) is the finite budgets'
    runs at σ = 0: each of their config.json differs from the ∞ run of its seed in NOISE_ONLY
    alone (DP off, or another recipe, differs in more)."""
    if math.inf not in columns:
        return False
    return all(
        set(config_changes(folder, inf)) <= NOISE_ONLY
        for epsilon, folders in columns.items()
        if not math.isinf(epsilon)
        for folder, inf in zip(folders, columns[math.inf], strict=True)
    )


def noise_cost_tests(per_budget: dict[float, list[dict]], method: str) -> dict[float, dict]:
    """Per finite budget, `method`'s market mean at it against at ∞ over seeds (paired by
    seed): with one recipe (`one_recipe`), the noise's cost. The finite budgets one family
    (NOISE_FAMILY, `_budgets_family`)."""
    means = {e: verdicts.market_means(runs, method) for e, runs in per_budget.items()}
    inf = means.pop(math.inf)
    return _budgets_family({e: (m, inf) for e, m in means.items()}, NOISE_FAMILY)


def _half_width(values) -> float | None:
    """The half-width of the 95% t-interval of the mean of `values` (None for one value)."""
    interval = significance.mean_interval(values)
    return None if interval is None else (interval[1] - interval[0]) / 2


def privacy_curve(
    columns: dict[float, list[pathlib.Path]],
    seeds,
    method: str,
    local: list[pathlib.Path] | None = None,
) -> str:
    """privacy_points as a table: a column per budget; a cell is the NDCG@10 gain over
    `local` with the seed-aware test's marker (markdown.mark); then the market-mean gain
    (mean over seeds, and on how many seeds it is positive) and the epsilon spent (the most of
    any market; `spent_label`). With a test over seeds ("mean", verdicts.SEED_TEST_MIN seeds or
    more) the market mean has its marker and a row of its 95% interval and the smallest
    effect it detects (what a level point could have missed); with one recipe, a row of each
    budget's market mean minus ∞'s (the noise's cost, `noise_cost_tests`) and its marker."""
    points = privacy_points(columns, seeds, method, local)
    first = next(iter(points.values()))["markets"]
    lines = [
        row(["market (test users)", *(f"ε = {epsilon_label(e)}" for e in points)]),
        "| --- |" + " ---: |" * len(points),
    ]
    for market, test in first.items():
        cells = [
            signed(p["markets"][market]["diff"]) + markdown.mark(p["markets"][market])
            for p in points.values()
        ]
        lines.append(row([f"{market} ({test['users']:,})", *cells]))
    cells = []
    for p in points.values():
        gains = p["seed_gains"]
        marker = markdown.mark(p["mean"]) if "mean" in p else ""
        cells.append(f"{signed(p['gain'][0])}{marker} ({sum(g > 0 for g in gains)}/{len(gains)})")
    lines.append(row(["market mean (seeds above local)", *cells]))
    if all("mean" in p for p in points.values()):
        cells = [
            f"[{signed(p['mean']['ci'][0])}, {signed(p['mean']['ci'][1])}] "
            f"({p['mean']['detectable']:.4f})"
            for p in points.values()
        ]
        lines.append(row(["market mean: 95% interval over seeds (detectable)", *cells]))
    if any("noise" in p for p in points.values()):
        cells = [
            f"{signed(t['diff'])}{markdown.mark(t)} [{signed(t['ci'][0])}, {signed(t['ci'][1])}]"
            if (t := p.get("noise"))
            else "-"
            for p in points.values()
        ]
        lines.append(row(["noise's cost: market mean minus ∞'s [95% interval]", *cells]))
    spent = [spent_label(p["spent"]) for p in points.values()]
    lines.append(row(["epsilon spent (most of any market)", *spent]))
    return "\n".join(lines) + "\n"


def stop_epochs(folder: pathlib.Path, seeds, joined: tuple[Joined, ...] = ()) -> str:
    """Per market, each fine-tuned method's stop epoch (the last it trained) and kept epoch
    (its best validation), mean over seeds with the range; results.json's `stop_epoch` and
    `best_epoch` (with the `joined` runs' methods, seed_runs)."""
    per_seed, _ = seed_runs(folder, seeds, joined)
    first = per_seed[0]
    methods = [m for m in run_order(folder / f"seed_{seeds[0]}", first)
               if "stop_epoch" in first["methods"][m][first["markets"][0]]]  # fmt: skip
    lines = [
        row(["market", *(f"{m} {what}" for m in methods for what in ("stop", "kept"))]),
        "| --- |" + " ---: |" * (2 * len(methods)),
    ]

    def epochs(values) -> str:
        v = np.asarray(values)
        spread = f" ({v.min():.0f}-{v.max():.0f})" if v.min() != v.max() else ""
        return f"{v.mean():.1f}{spread}"

    for market in first["markets"]:
        cells = [
            epochs([r["methods"][m][market][key] for r in per_seed])
            for m in methods
            for key in ("stop_epoch", "best_epoch")
        ]
        lines.append(row([market, *cells]))
    return "\n".join(lines) + "\n"
