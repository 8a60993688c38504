"""A sweep's results (launch/sweep.py): one row per run from the run's own files, the rows
grouped over seeds (mean ± std, results_lib.mean_std), and the Markdown table."""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np

from fecosr_jax import errors
from fecosr_jax.report import markdown as markdown_lib
from fecosr_jax.report import results as results_lib
from fecosr_jax.report import significance, verdicts
from fecosr_jax.store import metrics_log
from fecosr_jax.store.files import json_float, read_json

METRICS = ("ndcg@10", "hr@10", "valid_ndcg@10")  # test, test, validation (fine-tuned methods)
FEDERATED = ("federated_s2ce", "federated_ce", "federated_id_ce")  # pretrainings over markets


def collect(run_dir: pathlib.Path, point: dict) -> dict:
    """One row: the grid values; per method the mean test metrics and the markets
    significantly better / worse than local, and with DP each private pretraining's largest
    epsilon over markets (results.json); the validation NDCG@10, seconds per round and
    client-update cosines (training.json, fecosr_jax.store.metrics_log; from the run's
    metrics.jsonl for a run made before it had one)."""
    row = {"run": run_dir.name, **point, "status": "missing", "methods": {}}
    results_path = run_dir / "results.json"
    if not results_path.exists():
        return row
    results = read_json(results_path)
    training_path = run_dir / metrics_log.TRAINING
    training = (
        read_json(training_path)
        if training_path.exists()
        else metrics_log.training_record(metrics_log.read_lines(run_dir))
    )
    row["status"] = "done"
    row["num_markets"] = len(results["markets"])
    row["methods"] = {
        m: {k: table["mean"].get(k) for k in METRICS} for m, table in results["methods"].items()
    }
    for method, valid in training["validation"].items():
        if method in row["methods"]:
            row["methods"][method]["valid_ndcg@10"] = valid["mean"]
    row["vs_local"] = {
        m: [c.get("markets_significantly_better"), c.get("markets_significantly_worse")]
        for m, c in results.get("vs_local", {}).items()
    }
    pretraining = training["pretraining"].items()
    row["round_s"] = {
        k: p["seconds_per_round"] for k, p in pretraining if p["seconds_per_round"] is not None
    }
    row["delta_cosine"] = {
        k: p["delta_cosine"] for k, p in pretraining if p["delta_cosine"] is not None
    }
    row["run_s"] = training["seconds"]
    # With DP on: the largest epsilon any market spent, per private pretraining.
    row["epsilon_spent"] = {
        k: max(m["epsilon"] for m in markets.values())
        for k, markets in results.get("privacy", {}).items()
    }
    return row


def read_ranks(run_dir: pathlib.Path) -> dict | None:
    """A finished run's per-user test ranks (ranks.npz), None where it has none."""
    path = run_dir / "ranks.npz"
    if not path.exists():
        return None
    try:
        return results_lib.read_ranks(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise errors.BadInput(f"{path}: unreadable ({e}); re-run that point") from e


def seed_aware(members: list[dict], ranks: dict) -> dict:
    """A group's seed-aware tests against `local` (verdicts.seed_aware) over its members'
    seeds, from each run's ranks ({run name: {method: {market: [U]}}}): {} where a member has
    no ranks or the members' test users differ."""
    per_run = [ranks.get(r["run"]) for r in members]
    if not per_run or any(r is None or "local" not in r for r in per_run):
        return {}
    names = list(per_run[0]["local"])
    users = {n: len(per_run[0]["local"][n]) for n in names}
    if any({n: len(v) for n, v in r["local"].items()} != users for r in per_run):
        return {}
    return verdicts.seed_aware(results_lib.pool_ranks(per_run), names)


def newcomers(rows: list[dict], axes: list[str], ranks: dict) -> list[dict]:
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
    full = _mean_tests(means, np.arange(num_seeds))
    left_out = [_mean_tests(means, np.delete(np.arange(num_seeds), s)) for s in range(num_seeds)]
    row: dict = {}
    for k, t in full.items():
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
            "robust": all(lo[k]["verdict"] == t["verdict"] for lo in left_out)
            if num_seeds > 1
            else None,
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


def summarise(
    rows: list[dict],
    axes: list[str],
    pairs: list[tuple[str, str]] | None = None,
    ranks: dict | None = None,
) -> list[dict]:
    """Rows grouped over seeds: per group the mean and std over seeds (results_lib.mean_std:
    ddof 1, 0 for one seed; None where a seed lacks the value) of every method's metrics,
    the seconds per round, the update cosines, per pair (A, B) the NDCG@10 gap A - B and,
    given the runs' per-user ranks ({run name: ranks}, `read_ranks`), every method's
    seed-aware tests against `local` over the group's seeds ("vs_local", `seed_aware`)."""
    keys = [a for a in axes if a != "seeds"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)

    def stats(values):
        mean, std = results_lib.mean_std(values)
        return None if mean is None else [mean, std]

    out = []
    for values, members in groups.items():
        methods = sorted({m for r in members for m in r["methods"]})
        kinds = sorted({k for r in members for k in r["round_s"]})
        out.append(
            {
                **dict(zip(keys, values, strict=True)),
                "seeds": len(members),
                "methods": {
                    m: {
                        k: stats([r["methods"].get(m, {}).get(k) for r in members]) for k in METRICS
                    }
                    for m in methods
                },
                "round_s": {k: stats([r["round_s"].get(k) for r in members]) for k in kinds},
                "delta_cosine": {
                    k: stats([r["delta_cosine"].get(k) for r in members])
                    for k in sorted({k for r in members for k in r["delta_cosine"]})
                },
                "gaps": {
                    f"{a} - {b}": stats([_gap(r, a, b) for r in members]) for a, b in pairs or []
                },
                "vs_local": seed_aware(members, ranks or {}),
            }
        )
    return out


def _gap(row: dict, a: str, b: str) -> float | None:
    va = row["methods"].get(a, {}).get("ndcg@10")
    vb = row["methods"].get(b, {}).get("ndcg@10")
    return None if va is None or vb is None else va - vb


def _marks(test: dict | None) -> str:
    """A method's seed-aware verdicts at one grid point: ▲ n / ▼ n (fragile ones)."""
    if not test:
        return "-"
    tests = test["markets"].values()
    seeds = next(iter(tests))["seeds"]
    counts = []
    for verdict in ("better", "worse"):
        symbol = markdown_lib.mark({"seeds": seeds, "verdict": verdict, "robust": None}).strip()
        marked = [t for t in tests if t["verdict"] == verdict]
        fragile = sum(t["robust"] is False for t in marked)
        counts.append(f"{symbol} {len(marked)}" + (f" ({fragile} †)" if fragile else ""))
    return " / ".join(counts)


def _cell(s) -> str:
    if s is None:
        return "-"
    return f"{s[0]:.4f}" if s[1] == 0 else f"{s[0]:.4f} ± {s[1]:.4f}"


def _per_point(summary: list[dict], keys: list[str], about: str, methods: list[str], cell) -> list:
    """Markdown lines of a table with a row per grid point (its axis values and seeds) and a
    column per method, each cell `cell(point, method)`, under the line `about`; none without
    methods."""
    if not methods:
        return []
    lines = [
        "",
        about,
        "",
        "| " + " | ".join([*keys, "seeds", *methods]) + " |",
        "|" + " --- |" * (len(keys) + 1 + len(methods)),
    ]
    for s in summary:
        cells = [str(s[k]) for k in keys] + [str(s["seeds"])] + [cell(s, m) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def newcomers_markdown(lomo: list[dict], axes: list[str]) -> list[str]:
    """Markdown lines of `newcomers`: per method a row per held-out market, its gain over
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
                *newcomers_table(by_market, entry.get("mean")),
            ]
    return lines


def newcomers_table(by_market: dict, mean: dict | None = None) -> list[str]:
    """One method's leave-one-market-out cells (`newcomers`: {market: {"member", "newcomer",
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


def markdown(summary: list[dict], rows: list[dict], axes: list[str], config: str, lomo=()) -> str:
    """sweep.md: the grid points' table, their validation NDCG@10 and markers against
    `local`, and with the newcomers axis the leave-one-market-out tables (`lomo`,
    `newcomers`)."""
    keys = [a for a in axes if a != "seeds"]
    methods = sorted({m for s in summary for m in s["methods"]})
    # The federated pretrainings' timings and cosines (sweep.json has every pretraining's).
    kinds = sorted({k for s in summary for k in s["round_s"] if k in FEDERATED})
    cosines = sorted({k for s in summary for k in s["delta_cosine"] if k in FEDERATED})
    lines = [
        f"# Sweep of {config}",
        "",
        "Mean test NDCG@10 (user-weighted over markets; mean ± std over seeds), seconds per "
        "federated round (median gap between rounds, checkpointing included) and the mean "
        "pairwise cosine of the client updates.",
        "",
    ]
    header = [*keys, "seeds", *methods, *(f"s/round {k}" for k in kinds)]
    gaps = list(summary[0]["gaps"]) if summary else []
    header += [f"cosine {k}" for k in cosines] + gaps
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for s in summary:
        cells = [str(s[k]) for k in keys] + [str(s["seeds"])]
        cells += [_cell(s["methods"].get(m, {}).get("ndcg@10")) for m in methods]
        cells += [_cell(s["round_s"].get(k)) for k in kinds]
        cells += [_cell(s["delta_cosine"].get(k)) for k in cosines]
        cells += [_cell(s["gaps"][g]) for g in gaps]
        lines.append("| " + " | ".join(cells) + " |")
    valid = [
        m for m in methods if any(s["methods"].get(m, {}).get("valid_ndcg@10") for s in summary)
    ]
    lines += _per_point(
        summary,
        keys,
        "Validation NDCG@10 of the fine-tuned methods (per market its best epoch, mean over "
        "markets): the one to choose settings by.",
        valid,
        lambda s, m: _cell(s["methods"].get(m, {}).get("valid_ndcg@10")),
    )
    aware = sorted({m for s in summary for m in s.get("vs_local", {})})
    if aware:
        first = next(s["vs_local"] for s in summary if s.get("vs_local"))
        lines += _per_point(
            summary,
            keys,
            "Against `local`, per grid point: the markets significantly better / worse "
            f"({markdown_lib.marks_legend(next(iter(first.values())))}; "
            "fragile ones in brackets).",
            aware,
            lambda s, m: _marks(s.get("vs_local", {}).get(m)),
        )
    lines += newcomers_markdown(list(lomo), axes)
    failed = [r["run"] for r in rows if r["status"] != "done"]
    if failed:
        lines += ["", f"Runs without results: {', '.join(failed)} (see runs/<name>/sweep.log)."]
    return "\n".join(lines) + "\n"
