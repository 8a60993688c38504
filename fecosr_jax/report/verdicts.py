"""The verdicts: how a method is tested against a reference (docs/design.md §5).

- `seed_aware`: the ▲ / ▼ of every table. Per market, the seed-aware test of the per-user
  GAIN_METRIC (significance.seed_aware_test: seeds and users both random), one method's
  markets a family adjusted together (Benjamini-Hochberg), and whether each verdict survives
  leaving out any one seed.
- `over_seeds_tests`: with SEED_TEST_MIN seeds or more, each method's mean over markets
  against the reference's, paired by seed; the run's methods one family.
- `trained_models_tests`: about these trained models only (each user's mean over seeds, a
  paired t-test over users); it never sets a marker.

results.json's "vs_local" puts them together (fecosr_jax.report.results.comparison).
"""

from __future__ import annotations

import numpy as np

from fecosr_jax.report import significance
from fecosr_jax.store.files import json_float

GAIN_METRIC = "ndcg@10"  # the metric every verdict tests


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
                "diff": json_float(t["diff"]),
                "p_value": json_float(t["p_value"]),
                "p_adjusted": json_float(t["p_adjusted"]),
                "users": t["users"],
                "verdict": t["verdict"],
            }
            for n, t in significance.correct(tests).items()
        },
    }


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
                "diff": json_float(t["diff"]),
                "ci": None if t["ci"] is None else [json_float(x) for x in t["ci"]],
                "detectable": json_float(t["detectable"]),
                "p_value": json_float(t["p_value"]),
                "p_adjusted": json_float(t["p_adjusted"]),
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
    return market_means_test(*(market_means(per_seed, m) for m in (method, reference)))


def market_means(per_seed: list[dict], method: str) -> list[float]:
    """`method`'s market mean of GAIN_METRIC in each seed's results (NaN where it has none)."""
    return [
        np.nan if (v := r["methods"][method]["market_mean"][GAIN_METRIC]) is None else v
        for r in per_seed
    ]


def market_means_test(a: list[float], b: list[float]) -> dict:
    """The test over seeds of market means `a` against `b`, one value per seed, paired by
    index (`seed_test`'s, which returns it)."""
    t = significance.seed_aware_test(np.asarray(a)[None, :], np.asarray(b)[None, :])
    return {
        "metric": f"market_mean {GAIN_METRIC}",
        "test": OVER_SEEDS,
        "diff": json_float(t["diff"]),
        "ci": None if t["ci"] is None else [json_float(x) for x in t["ci"]],
        "detectable": json_float(t["detectable"]),
        "p_value": json_float(t["p_value"]),
        "seeds": t["users"],  # the seeds are the test's units here
        "verdict": t["verdict"],
    }


def with_robust(family, num_seeds: int) -> dict:
    """A family of tests over seeds, `family(seed indices) -> {key: test}`, on every seed, each
    test with "robust": whether its verdict stays when any one seed is left out of the family
    (None with one seed)."""
    full = family(np.arange(num_seeds))
    left_out = [family(np.delete(np.arange(num_seeds), s)) for s in range(num_seeds)]
    return {
        k: {
            **t,
            "robust": all(lo[k]["verdict"] == t["verdict"] for lo in left_out)
            if num_seeds > 1
            else None,
        }
        for k, t in full.items()
    }


def over_seeds_tests(per_seed: list[dict], methods, reference: str = "local") -> dict:
    """`seed_test` of each method against `reference`, one family (OVER_SEEDS_FAMILY) adjusted
    with Benjamini-Hochberg, each verdict by its adjusted p: {method: test + "p_adjusted",
    "family", "correction"}."""
    tests = {m: seed_test(per_seed, m, reference) for m in methods if m != reference}
    return {
        m: {
            **t,
            "p_adjusted": json_float(t["p_adjusted"]),
            "family": OVER_SEEDS_FAMILY,
            "correction": significance.CORRECTION,
        }
        for m, t in significance.correct(tests).items()
    }
