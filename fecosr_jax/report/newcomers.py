"""Leave-one-market-out (launch/sweep.py's newcomers axis, config.data.newcomers): each
market held out of pretraining and fine-tuned from the model of the others (a newcomer),
against the same market as a member of the whole federation; the tests per market and over
the markets' mean, and their Markdown table."""

from __future__ import annotations

import numpy as np

from fecosr_jax import errors
from fecosr_jax.report import markdown as markdown_lib
from fecosr_jax.report import results as results_lib
from fecosr_jax.report import significance, verdicts
from fecosr_jax.store.files import json_float


def compare(rows: list[dict], axes: list[str], ranks: dict) -> list[dict]:
    """Leave-one-market-out (the sweep's newcomers axis, config.data.newcomers): each market
    held out of pretraining (a newcomer) against the same market as a member of the whole
    federation (the point "none" with the same other axes, seeds and splits).

    Per set of the other axes' values, and per method that ran at every point (but local
    and popularity): for each held-out market its seed-aware gain over `local` as a member
    (verdicts.seed_aware, the markets of the point none one family, as in its own table)
    and as a newcomer (against the `local` of its own point, the held-out markets one
    family), the seed-aware test of newcomer against member (the held-out markets one
    family), and "kept", the newcomer's gain as a share of the member's (None unless the
    member's gain is significant: a share of a gain not shown to exist says nothing). A
    held-out point needs only its newcomer's ranks: launch/sweep.py fine-tunes it alone
    (config.data.finetune_markets). The point none may be several runs per seed, each
    fine-tuning some of its markets (_seed_ranks): the whole federation's fine-tuning split
    over processes or sessions; a held-out market with no member yet is left out (and the
    member's family is the markets the point none has).

    Under the markets, "mean" is the same four over the plain mean of the held-out markets
    (`_mean_row`): per seed, tested over the seeds, its three tests one family.

    Returns:
      [{**other axes, "seeds": [...], "methods": {method: {"test", "markets": {market:
      {"member", "newcomer", "newcomer_vs_member", "kept"}}, "mean": {the same four}}}}]; []
      without the axis, the point none or the ranks.
    """
    if "newcomers" not in axes:
        return []
    others = [a for a in axes if a not in ("seeds", "newcomers")]
    points: dict[tuple, dict[str, list[dict]]] = {}
    for row in rows:
        if row["status"] == "done":
            key = tuple(row[k] for k in others)
            points.setdefault(key, {}).setdefault(row["newcomers"], []).append(row)
    out = []
    for key, by_value in points.items():
        if "none" not in by_value or len(by_value) < 2:
            continue
        pooled = {}
        for value, members in by_value.items():
            by_seed: dict = {}
            for r in members:
                by_seed.setdefault(r.get("seeds", 0), []).append(r)
            per_seed = [_seed_ranks(by_seed[s], ranks) for s in sorted(by_seed)]
            if any(r is None for r in per_seed):
                break
            pooled[value] = (sorted(by_seed), results_lib.pool_ranks(per_seed))
        seeds = {tuple(s) for s, _ in pooled.values()}
        if len(pooled) != len(by_value) or len(seeds) != 1:
            continue  # a point without ranks, or points over other seeds: nothing paired
        whole = pooled.pop("none")[1]
        member = verdicts.seed_aware(whole, list(whole["local"]))
        held = [m for m in pooled if m in whole.get("local", {})]  # members run so far
        if not held:
            continue
        methods: dict[str, dict] = {}
        for method in member:
            if method == "popularity" or not all(
                {method, "local"} <= set(pooled[m][1]) for m in held
            ):
                continue
            newcomer = {m: pooled[m][1][method][m] for m in held}
            gains = _versus(newcomer, {m: pooled[m][1]["local"][m] for m in held})  # own point's
            below = _versus(newcomer, {m: whole[method][m] for m in held})
            by_market = {}
            for m in held:
                cell = {
                    "member": member[method]["markets"][m],
                    "newcomer": gains[m],
                    "newcomer_vs_member": below.get(m),
                }
                cell["kept"] = _kept(cell["member"], cell["newcomer"])
                by_market[m] = cell
            means = _market_means(
                {
                    "member": {m: whole[method][m] for m in held},
                    "newcomer": newcomer,
                    "local": {m: whole["local"][m] for m in held},
                    "own local": {m: pooled[m][1]["local"][m] for m in held},
                }
            )
            methods[method] = {
                "test": member[method]["test"],
                "markets": by_market,
                "mean": _mean_row(means),
            }
        out.append(
            {**dict(zip(others, key, strict=True)), "seeds": list(seeds.pop()), "methods": methods}
        )
    return out


def _seed_ranks(runs: list[dict], ranks: dict) -> dict | None:
    """One seed's ranks at one point ({method: {market: [U]}}) from its runs, which may each
    have fine-tuned some of its markets (config.data.finetune_markets: the whole
    federation's point run market by market): None where a run has no ranks. A market
    that two runs fine-tuned raises BadInput (a run repeated: which one counts?)."""
    merged: dict = {}
    owner: dict = {}
    for run in runs:
        got = ranks.get(run["run"])
        if got is None:
            return None
        for method, by_market in got.items():
            for market, r in by_market.items():
                if (method, market) in owner:
                    raise errors.BadInput(
                        f"runs {owner[method, market]} and {run['run']} both fine-tuned "
                        f"{method} in {market} with seed {run.get('seeds', 0)}: keep one"
                    )
                owner[method, market] = run["run"]
                merged.setdefault(method, {})[market] = r
    return merged


# The row under the per-market cells: the plain mean over the held-out markets, per seed, its
# three tests over seeds one family (MEAN_FAMILY).
MEAN_ROW = "mean over markets"
MEAN_FAMILY = "the mean row's three tests"
MEAN_ABOUT = (
    "per seed the plain mean over the held-out markets, paired by seed, t-test over the "
    "seeds, the row's three tests adjusted together (Benjamini-Hochberg)"
)


def _market_means(values: dict) -> dict:
    """{name: {market: [S, U] ranks}} -> {name: [S]}: per seed the plain mean over the
    markets of each market's mean per-user GAIN_METRIC (NaN where a market has no user)."""
    return {
        name: np.mean(
            [
                np.nanmean(np.atleast_2d(significance.per_user(r, verdicts.GAIN_METRIC)), axis=1)
                for r in by_market.values()
            ],
            axis=0,
        )
        for name, by_market in values.items()
    }


def _mean_tests(means: dict, seeds: np.ndarray) -> dict:
    """The mean row's tests on the seeds `seeds` (indices): the member and the newcomer each
    against `local` (the newcomer against its own point's), and the newcomer against the
    member; paired by seed, t-test over the seeds (significance.seed_aware_test with the
    seeds as its units), the three adjusted together (Benjamini-Hochberg)."""
    pairs = {
        "member": ("member", "local"),
        "newcomer": ("newcomer", "own local"),
        "newcomer_vs_member": ("newcomer", "member"),
    }
    return significance.correct(
        {
            k: significance.seed_aware_test(means[a][None, seeds], means[b][None, seeds])
            for k, (a, b) in pairs.items()
        }
    )


def _mean_row(means: dict) -> dict:
    """The mean row (`_mean_tests` on every seed), each test with `robust` (its verdict when
    any one seed is left out) and `seeds` (the units: seeds, not users), and "kept" as in a
    market's row: {"member", "newcomer", "newcomer_vs_member", "kept"}."""
    num_seeds = len(means["member"])
    tested = verdicts.with_robust(lambda seeds: _mean_tests(means, seeds), num_seeds)
    row: dict = {}
    for k, t in tested.items():
        row[k] = {
            "test": verdicts.OVER_SEEDS,
            "family": MEAN_FAMILY,
            "diff": json_float(t["diff"]),
            "ci": None if t["ci"] is None else [json_float(x) for x in t["ci"]],
            "detectable": json_float(t["detectable"]),
            "p_value": json_float(t["p_value"]),
            "p_adjusted": json_float(t["p_adjusted"]),
            "seeds": num_seeds,
            "verdict": t["verdict"],
            "robust": t["robust"],
        }
    row["kept"] = _kept(row["member"], row["newcomer"])
    return row


def _kept(member: dict, newcomer: dict) -> float | None:
    """The newcomer's gain as a share of the member's; None unless the member's gain is
    significant (a share of a gain not shown to exist says nothing)."""
    shown = member["verdict"] == "better"
    return json_float(newcomer["diff"] / member["diff"]) if shown else None


def _versus(newcomer: dict, reference: dict) -> dict:
    """{market: ranks} of newcomers against `reference`'s, the seed-aware test in each
    market, the markets one family: {market: test}."""
    markets = list(newcomer)
    test = verdicts.seed_aware(
        {"reference": reference, "newcomer": newcomer}, markets, reference="reference"
    )
    return test.get("newcomer", {"markets": {}})["markets"]


def markdown(lomo: list[dict], axes: list[str]) -> list[str]:
    """Markdown lines of `compare`: per method a row per held-out market, its gain over
    `local` as a member and as a newcomer (mean difference [95% interval] and marker), the
    newcomer's difference from the member, and the share of the gain it kept."""
    others = [a for a in axes if a not in ("seeds", "newcomers")]
    lines = []
    for point in lomo:
        where = ", ".join(f"{a} {point[a]}" for a in others)
        for method, entry in point["methods"].items():
            by_market = entry["markets"]
            legend = markdown_lib.marks_legend(
                {"test": entry["test"], "markets": {m: c["member"] for m, c in by_market.items()}}
            )
            lines += [
                "",
                f"Leave-one-market-out, `{method}`{f' ({where})' if where else ''}: each market "
                "held out of pretraining (a newcomer), and the same market as a member of the "
                "whole federation, on the same splits and seeds. Gains over `local` in "
                f"NDCG@10, mean difference [95% interval] ({legend}); newcomer - member: the "
                "same test with the member in place of `local`; kept: the newcomer's gain as a "
                "share of the member's, where the member's is significant (▲). "
                f"{MEAN_ROW.capitalize()}: {MEAN_ABOUT}. A held-out point fine-tunes its "
                "newcomer alone, so its row in the table above is that market's, not every "
                "market's.",
                "",
                *table(by_market, entry.get("mean")),
            ]
    return lines


def table(by_market: dict, mean: dict | None = None) -> list[str]:
    """One method's leave-one-market-out cells (`compare`: {market: {"member", "newcomer",
    "newcomer_vs_member", "kept"}}) as Markdown table lines, and its `mean` row (MEAN_ROW)
    where given."""
    lines = [
        "| market | gain as a member | gain as a newcomer | newcomer - member | kept |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = {**by_market, **({f"**{MEAN_ROW}**": mean} if mean else {})}
    for market, cell in rows.items():
        versus = cell["newcomer_vs_member"]
        kept = "-" if cell["kept"] is None else f"{cell['kept']:.0%}"
        lines.append(
            f"| {market} | {markdown_lib.interval_cell(cell['member'])} | "
            f"{markdown_lib.interval_cell(cell['newcomer'])} | "
            f"{'-' if versus is None else markdown_lib.interval_cell(versus)} | {kept} |"
        )
    return lines
