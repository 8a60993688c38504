"""The results of a run: the results dict (results.json) of one seed or of several combined,
its statistics against `local` (fecosr_jax.report.significance), and the per-user ranks
(ranks.npz).

results.json is a pure function of the config and seed (no timings); timings and training
curves go to metrics.jsonl and TensorBoard (fecosr_jax.store.metrics_log); its Markdown and
plots are fecosr_jax.report.markdown and fecosr_jax.report.plots.
"""

from __future__ import annotations

import io
import json

import numpy as np
from etils import epath

from fecosr_jax.report import significance
from fecosr_jax.store.files import write_bytes_atomic, write_text_atomic

REPORTED = ("hr@10", "ndcg@10", "mrr@10")
GAIN_METRIC = "ndcg@10"


def write_ranks(path, ranks: dict[str, dict[str, list[int]]]) -> None:
    """Per-user test ranks {method: {market: [U]}} as RANKS.npz, one int32 array per
    "method/market" (what the paired tests and experiments.compare read)."""
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


# What the pooled per-user test answers: whether these trained models rank these test users
# better. It never sets ▲ / ▼ (the seed-aware test does).
TRAINED_MODELS = (
    "these trained models: each user's mean over seeds, paired t-test over the users "
    "(the models taken as fixed)"
)


def trained_models_tests(method_ranks: dict, reference_ranks: dict, names) -> dict:
    """The pooled per-user test of a method against a reference in every market (ranks
    {market: [S, U] or [U]}, each user averaged over seeds), Benjamini-Hochberg over the
    markets: {"test": TRAINED_MODELS, "correction", "markets": {market: {"diff", "p_value",
    "p_adjusted", "users", "verdict"}}}."""
    tests = {}
    for n in names:
        a, b = (
            np.nanmean(np.atleast_2d(significance.per_user(r[n], GAIN_METRIC)), axis=0)
            for r in (method_ranks, reference_ranks)
        )
        tests[n] = significance.paired_test(a, b)
    return {
        "test": TRAINED_MODELS,
        "correction": significance.CORRECTION,
        "markets": {
            n: {
                "diff": clean(t["diff"]),
                "p_value": clean(t["p_value"]),
                "p_adjusted": clean(t["p_adjusted"]),
                "users": t["users"],
                "verdict": t["verdict"],
            }
            for n, t in significance.correct(tests).items()
        },
    }


def comparison(methods: dict, names, reference: str = "local", ranks: dict | None = None) -> dict:
    """Per method: gain in NDCG@10 over `reference` per market, the markets better / worse by
    the sign of the gain and, where both methods' per-user test ranks are known (`ranks`:
    {method: {market: [S, U] or [U] ranks, arrays or lists}}, S seeds), the tests per market
    over the same test users: "seed_aware" (`seed_aware`: the verdicts, ▲ / ▼, and the markets
    significantly better / worse, of which "markets_fragile" change when one seed is left out)
    and "trained_models" (`trained_models_tests`: about these trained models only)."""
    if reference not in methods:
        return {}
    ref = methods[reference]
    ranks = ranks or {}
    aware = seed_aware({m: r for m, r in ranks.items() if m in methods}, names, reference)
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
        if method in aware:
            tests = aware[method]["markets"].values()
            verdicts = [t["verdict"] for t in tests]
            out[method]["seed_aware"] = aware[method]
            out[method]["markets_significantly_better"] = verdicts.count("better")
            out[method]["markets_significantly_worse"] = verdicts.count("worse")
            out[method]["markets_fragile"] = sum(
                t["verdict"] != "same" and t["robust"] is False for t in tests
            )
        if method in ranks and reference in ranks:
            out[method]["trained_models"] = trained_models_tests(
                ranks[method], ranks[reference], names
            )
    return out


# The family of the seed-aware tests: one method's tests against `local` over the run's
# markets, adjusted together (docs/design.md §5). So a method's verdicts do not depend on
# which other methods ran beside it, and a pair of methods compared apart is the same family.
SEED_AWARE_FAMILY = "the method's tests against the reference over the markets"


def _seed_aware_family(values: dict, reference: str, seeds) -> dict:
    """The seed-aware tests of each method against `reference` ({method: {market: [S, U]
    per-user values}}) on the seeds `seeds` (indices), each method's markets adjusted together
    with Benjamini-Hochberg: {method: {market: test}}."""
    out: dict = {}
    for m, by_market in values.items():
        if m == reference:
            continue
        tests = {
            n: significance.seed_aware_test(v[seeds], values[reference][n][seeds])
            for n, v in by_market.items()
        }
        adjusted = significance.adjust([t["p_value"] for t in tests.values()])
        out[m] = {
            n: {**t, "p_adjusted": q, "verdict": significance.verdict(t["diff"], q)}
            for (n, t), q in zip(tests.items(), adjusted, strict=True)
        }
    return out


def seed_aware(ranks: dict, names, reference: str = "local") -> dict:
    """Per method, the seed-aware test against `reference` in every market
    (significance.seed_aware_test on the per-user GAIN_METRIC of each seed), each method's
    markets one family adjusted together (SEED_AWARE_FAMILY), each test with `robust`: whether
    its verdict stays the same when any one seed is left out (the family adjusted again; None
    with one seed).

    Args:
      ranks: {method: {market: [S, U] or [U] per-user test ranks}}, the same S seeds for
        every method.

    Returns:
      {method: {"test", "family", "correction", "markets": {market: {"diff", "ci",
      "detectable", "p_value", "p_adjusted", "df", "seeds", "users", "verdict", "robust"}}}}.
    """
    if reference not in ranks:
        return {}
    values = {
        m: {n: np.atleast_2d(significance.per_user(by_market[n], GAIN_METRIC)) for n in names}
        for m, by_market in ranks.items()
        if all(n in by_market for n in names)
    }
    if reference not in values:
        return {}
    num_seeds = next(iter(values[reference].values())).shape[0]
    values = {  # a method paired with `reference` seed by seed (joined runs have them all)
        m: by_market
        for m, by_market in values.items()
        if all(v.shape[0] == num_seeds for v in by_market.values())
    }
    full = _seed_aware_family(values, reference, np.arange(num_seeds))
    left_out = [
        _seed_aware_family(values, reference, np.delete(np.arange(num_seeds), s))
        for s in range(num_seeds)
        if num_seeds > 1
    ]
    out = {}
    for m, by_market in full.items():
        markets = {}
        for n, t in by_market.items():
            robust = (
                all(lo[m][n]["verdict"] == t["verdict"] for lo in left_out) if left_out else None
            )
            markets[n] = {
                "diff": clean(t["diff"]),
                "ci": None if t["ci"] is None else [clean(x) for x in t["ci"]],
                "detectable": clean(t["detectable"]),
                "p_value": clean(t["p_value"]),
                "p_adjusted": clean(t["p_adjusted"]),
                "df": None if t["df"] is None else round(float(t["df"]), 2),
                "seeds": t["seeds"],
                "users": t["users"],
                "verdict": t["verdict"],
                "robust": robust,
            }
        test = next(iter(by_market.values()))["test"]
        out[m] = {
            "test": test,
            "family": SEED_AWARE_FAMILY,
            "correction": significance.CORRECTION,
            "markets": markets,
        }
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
    privacy_composed: dict | None = None,
    seeds: list[int] | None = None,
    std: dict | None = None,
    over_seeds: dict | None = None,
    newcomers: list[str] | None = None,
    pretrained: dict | None = None,
) -> dict:
    """The results dict (results.json) of one seed, or of several seeds combined (`seeds`,
    `std` in the shape of `methods`, and with SEED_TEST_MIN or more seeds `over_seeds`,
    {method: the test over seeds}): the one place its fields are put together. "vs_local"
    comes from `methods` and the per-user test ranks `ranks` ({method: {market: [U] or
    [S, U]}}: `comparison`). `newcomers`: the markets that took no part in pretraining
    (config.data.newcomers, or not in config.pretrained's), recorded only when
    there are some; `pretrained`: where a loaded pretraining came from (config.pretrained)."""
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
    if privacy_composed is not None:
        out["privacy_composed"] = privacy_composed
    if newcomers:
        out["newcomers"] = list(newcomers)
    if pretrained is not None:
        out["pretrained"] = pretrained
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
    and "vs_local" the tests of `comparison` on every seed's per-user metric and, with
    SEED_TEST_MIN seeds or more, the tests over seeds of the market means (over_seeds_tests)."""
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
        over_seeds = over_seeds_tests(per_seed, methods)
    return results(
        dataset=first["dataset"],
        protocol=first["protocol"],
        markets=names,
        methods=means,
        ranks=ranks,
        skipped=skipped,
        transfer_source=first.get("transfer_source"),
        soft_labels=first.get("soft_labels", {}),
        newcomers=first.get("newcomers"),
        pretrained=first.get("pretrained"),
        privacy=(
            worst_privacy([r.get("privacy", {}) for r in per_seed])
            if any("privacy" in r for r in per_seed)
            else None
        ),
        privacy_composed=(
            worst_privacy([{"run": r["privacy_composed"]} for r in per_seed])["run"]
            if all("privacy_composed" in r for r in per_seed)
            else None
        ),
        seeds=seeds,
        std=stds,
        over_seeds=over_seeds,
    )


# Seeds from which a method's market-mean is also tested over seeds (combine_seeds).
SEED_TEST_MIN = 5
# The family of the tests over seeds: every method of the run against the reference, adjusted
# together (docs/design.md §5).
OVER_SEEDS_FAMILY = "the run's methods against the reference"
OVER_SEEDS = f"market means paired by seed, t-test over the seeds ({GAIN_METRIC})"


def seed_test(per_seed: list[dict], method: str, reference: str = "local") -> dict:
    """The method against `reference` over seeds: per seed the plain mean over markets of
    the test GAIN_METRIC (each seed's "market_mean"), paired by seed, two-sided t-test with its
    95% interval and the smallest effect it finds with 80% power (significance.seed_aware_test
    over one row of seeds; `over_seeds_tests` adjusts a family of them).

    Returns:
      {"metric": "market_mean <GAIN_METRIC>", "test": OVER_SEEDS, "diff": mean over seeds of
      the difference, "ci", "detectable", "p_value", "seeds": n, "verdict"}.
    """
    a, b = (
        [np.nan if (v := r["methods"][m]["market_mean"][GAIN_METRIC]) is None else v
         for r in per_seed]
        for m in (method, reference)
    )  # fmt: skip
    t = significance.seed_aware_test(np.asarray(a)[None, :], np.asarray(b)[None, :])
    return {
        "metric": f"market_mean {GAIN_METRIC}",
        "test": OVER_SEEDS,
        "diff": clean(t["diff"]),
        "ci": None if t["ci"] is None else [clean(x) for x in t["ci"]],
        "detectable": clean(t["detectable"]),
        "p_value": clean(t["p_value"]),
        "seeds": t["users"],  # the seeds are the test's units here
        "verdict": t["verdict"],
    }


def over_seeds_tests(per_seed: list[dict], methods, reference: str = "local") -> dict:
    """`seed_test` of each method against `reference`, one family (OVER_SEEDS_FAMILY) adjusted
    with Benjamini-Hochberg, each verdict by its adjusted p: {method: test + "p_adjusted",
    "family", "correction"}."""
    tests = {m: seed_test(per_seed, m, reference) for m in methods if m != reference}
    return {
        m: {
            **t,
            "p_adjusted": clean(t["p_adjusted"]),
            "family": OVER_SEEDS_FAMILY,
            "correction": significance.CORRECTION,
        }
        for m, t in significance.correct(tests).items()
    }


def worst_privacy(reports: list[dict]) -> dict:
    """Per pretraining and market, the seed's entry with the largest epsilon (with partial
    participation each seed's markets train in different rounds)."""
    out: dict[str, dict] = {}
    for report in reports:
        for kind, markets in report.items():
            for name, entry in markets.items():
                kept = out.setdefault(kind, {}).get(name)
                if kept is None or _above(entry["epsilon"], kept["epsilon"]):
                    out[kind][name] = entry
    return out


def _above(a: float | None, b: float | None) -> bool:
    """Whether epsilon a is larger than b, None (not private) the largest."""
    return b is not None and (a is None or a > b)
