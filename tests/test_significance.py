"""Paired tests against `local`: per-user metrics from ranks, the Student-t tail against closed
forms, paired t-tests by hand, and seeds combined by hand."""

import math

import numpy as np
import pytest

from fecosr_jax.report import markdown, significance, verdicts
from fecosr_jax.report import results as results_lib


def test_per_user_metrics_from_ranks_by_hand():
    ranks = np.array([0, 1, 9, 10, -1])
    ndcg = significance.per_user(ranks, "ndcg@10")
    np.testing.assert_allclose(ndcg[:4], [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0])
    assert np.isnan(ndcg[4])
    np.testing.assert_array_equal(significance.per_user(ranks, "hr@10")[:4], [1, 1, 1, 0])
    np.testing.assert_allclose(significance.per_user(ranks, "mrr@5")[:4], [1, 0.5, 0, 0])
    with pytest.raises(ValueError, match="map@10"):
        significance.per_user(ranks, "map@10")


def differences_with_t(t: float, n: int) -> np.ndarray:
    """n paired differences whose t statistic is t: mean t / sqrt(n), standard deviation 1."""
    dev = np.arange(n, dtype=np.float64)
    dev = (dev - dev.mean()) / dev.std(ddof=1)
    return t / math.sqrt(n) + dev


@pytest.mark.parametrize("t", [0.3, 1.0, 2.0, 3.182446, 10.0])
def test_p_values_match_the_student_t_closed_forms(t):
    # df = 1 (Cauchy): p = 1 - (2 / pi) atan(t); df = 2: p = 1 - t / sqrt(2 + t^2);
    # df = 3: p = 1 - (2 / pi) (x / (1 + x^2) + atan(x)), x = t / sqrt(3).
    def p(df):
        return significance.paired_test(differences_with_t(t, df + 1), np.zeros(df + 1))["p_value"]

    x = t / math.sqrt(3)
    assert p(1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
    assert p(2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert p(3) == pytest.approx(1 - 2 / math.pi * (x / (1 + x * x) + math.atan(x)), rel=1e-9)


def test_student_t_critical_values():
    # Two-sided 5% critical values from the t table.
    for t, df in ((12.706205, 1), (2.228139, 10)):
        out = significance.paired_test(differences_with_t(t, df + 1), np.zeros(df + 1))
        assert out["p_value"] == pytest.approx(0.05, abs=1e-6)


def test_paired_test_by_hand():
    # d = [1, 2, 3, 4]: mean 2.5, sd sqrt(5/3), t = 2.5 / (sd / 2) = 3.873, df 3.
    out = significance.paired_test(np.array([1.0, 2, 3, 4]), np.zeros(4))
    t = 2.5 / (math.sqrt(5 / 3) / 2)
    x = t / math.sqrt(3)
    assert out["p_value"] == pytest.approx(1 - 2 / math.pi * (x / (1 + x * x) + math.atan(x)))
    assert out["p_value"] < 0.05 and out["verdict"] == "better" and out["users"] == 4
    assert significance.paired_test(np.zeros(4), np.array([1.0, 2, 3, 4]))["verdict"] == "worse"
    # Noisy small differences are not significant, and NaN (no user) is dropped in pairs.
    out = significance.paired_test(np.array([1.0, 0, 1, 0, np.nan]), np.array([0.0, 1, 0, 0, 5]))
    assert out["users"] == 4 and out["verdict"] == "same" and out["p_value"] > 0.05
    assert significance.paired_test(np.ones(3), np.ones(3)) == {
        "diff": 0.0, "p_value": 1.0, "users": 3, "verdict": "same"
    }  # fmt: skip
    assert significance.paired_test(np.ones(1), np.zeros(1))["p_value"] is None
    with pytest.raises(ValueError, match="same users"):
        significance.paired_test(np.ones(3), np.ones(4))


def table(values: dict) -> dict:
    def row(v):
        return {"ndcg@10": v, "hr@10": 2 * v, "mrr@10": v / 2}

    return {**{n: row(v) for n, v in values.items()}, "mean": row(0.0), "market_mean": row(0.0)}


def test_comparison_marks_only_significant_markets():
    names = ["a", "b"]
    hits, misses = np.zeros(50, int), np.full(50, 30)
    noisy = np.where(np.arange(50) % 2 == 0, 0, 30)  # half the users hit
    ranks = {
        "local": {"a": misses, "b": noisy},
        "fecosr": {"a": hits, "b": np.roll(noisy, 1)},  # b: same mean, other users
    }
    methods = {"local": table({"a": 0.0, "b": 0.5}), "fecosr": table({"a": 1.0, "b": 0.5})}
    comp = results_lib.comparison(methods, names, ranks=ranks)["fecosr"]
    aware = comp["seed_aware"]["markets"]
    assert aware["a"]["verdict"] == "better" and aware["b"]["verdict"] == "same"
    assert comp["markets_significantly_better"] == 1 and comp["markets_significantly_worse"] == 0
    # One seed: the seed-aware test is the paired test over users, about one trained model,
    # so it agrees with the per-user test here, and the table marks it hollow (△, not ▲).
    assert comp["seed_aware"]["test"] == significance.ONE_MODEL and aware["a"]["robust"] is None
    assert comp["trained_models"]["markets"]["a"]["p_value"] == aware["a"]["p_value"]
    md = markdown.results_markdown(
        {"dataset": "d", "markets": names, "protocol": "full", "methods": methods,
         "vs_local": {"fecosr": comp}}
    )  # fmt: skip
    assert "| a | 0.0000 | 1.0000 △ |" in md and "▲" not in md.split("\n\n")[3]
    assert "△ / ▽: better / worse than `local` in that market for this one trained model" in md
    # Without ranks: gains only.
    plain = results_lib.comparison(methods, names)["fecosr"]
    assert "seed_aware" not in plain and "trained_models" not in plain


def test_benjamini_hochberg_over_a_methods_markets_by_hand():
    """Four markets tested, p = 0.01, 0.04, 0.03, 0.2 (and one without a test): sorted,
    p_(i) m / i = 0.04, 0.06, 0.0533, 0.2, then the running minimum from the top gives
    0.04, 0.0533, 0.0533, 0.2. Only the first market stays below 0.05, where uncorrected
    three did."""
    ps = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2, "e": None}
    tests = {n: {"diff": -0.1, "p_value": p, "users": 9, "verdict": "?"} for n, p in ps.items()}
    out = significance.correct(tests)
    want = {"a": 0.04, "b": 0.16 / 3, "c": 0.16 / 3, "d": 0.2, "e": None}
    for n, p in want.items():
        assert out[n]["p_adjusted"] == (None if p is None else pytest.approx(p, rel=1e-12)), n
        assert out[n]["p_value"] == ps[n]  # the raw p stays
    assert [out[n]["verdict"] for n in ps] == ["worse", "same", "same", "same", "same"]
    assert [significance.verdict(-0.1, p) for p in ps.values()].count("worse") == 3


def test_results_keep_raw_and_adjusted_p_and_name_the_correction():
    names = ["a", "b", "c"]
    users = np.arange(40)
    ranks = {  # a: a large gain; b: a small one (p = 0.044 raw); c: none (p = 1)
        "local": {n: np.full(40, 30) for n in names},
        "fecosr": {
            "a": np.zeros(40, int),
            "b": np.where(users < 4, 0, 30),
            "c": np.full(40, 30),
        },
    }
    methods = {m: table(dict.fromkeys(names, 0.0)) for m in ranks}
    comp = results_lib.comparison(methods, names, ranks=ranks)["fecosr"]
    assert comp["seed_aware"]["correction"] == "benjamini-hochberg"
    tests = comp["seed_aware"]["markets"]
    raw = {n: tests[n]["p_value"] for n in names}
    adjusted = {n: tests[n]["p_adjusted"] for n in names}
    assert raw["b"] < 0.05 <= adjusted["b"] == pytest.approx(1.5 * raw["b"], rel=1e-5)
    assert tests["a"]["verdict"] == "better"
    assert tests["b"]["verdict"] == "same"  # significant only uncorrected
    assert comp["markets_significantly_better"] == 1
    md = markdown.results_markdown(
        {"dataset": "d", "markets": names, "protocol": "full", "methods": methods,
         "vs_local": {"fecosr": comp}}
    )  # fmt: skip
    assert "p < 0.05 after Benjamini-Hochberg over the method's markets" in md


def test_combine_seeds_by_hand():
    names = ["a"]

    def result(v):
        return {
            "dataset": "d",
            "protocol": "full",
            "markets": names,
            "methods": {"local": table({"a": v})},
            "skipped": {},
        }

    ranks = {"local": {"a": np.array([[0, 5], [1, 50]])}}
    out = results_lib.combine_seeds([result(0.2), result(0.4)], [0, 1], ranks)
    assert out["seeds"] == [0, 1]
    assert out["methods"]["local"]["a"]["ndcg@10"] == pytest.approx(0.3)
    assert out["std"]["local"]["a"]["ndcg@10"] == pytest.approx(
        math.sqrt(0.02), abs=1e-6
    )  # ddof 1, rounded
    assert "0.3000 ± 0.1414" in markdown.results_markdown(out)


@pytest.mark.parametrize("num_seeds", [4, 5])
def test_five_seeds_or_more_test_the_market_mean_over_seeds(num_seeds):
    """Per seed, fecosr's mean over markets beats local's by 0.01, 0.02, ..., 0.05: paired
    by seed, d = 0.01 k, mean 0.03, sd 0.0158, t = 4.243 with 4 degrees of freedom, p =
    0.013. Below five seeds: no test."""
    names = ["a", "b"]

    def result(seed):
        local, fecosr = table({"a": 0.1, "b": 0.1}), table({"a": 0.1, "b": 0.1})
        local["market_mean"]["ndcg@10"] = 0.2 + 0.1 * (seed % 2)  # seed noise, shared
        fecosr["market_mean"]["ndcg@10"] = local["market_mean"]["ndcg@10"] + 0.01 * (seed + 1)
        return {"dataset": "d", "protocol": "full", "markets": names, "skipped": {},
                "methods": {"local": local, "fecosr": fecosr}}  # fmt: skip

    seeds = list(range(num_seeds))
    ranks = {m: {n: np.zeros((num_seeds, 3), int) for n in names} for m in ("local", "fecosr")}
    out = results_lib.combine_seeds([result(s) for s in seeds], seeds, ranks)
    if num_seeds < verdicts.SEED_TEST_MIN:
        assert "over_seeds" not in out["vs_local"]["fecosr"]
        return
    t = out["vs_local"]["fecosr"]["over_seeds"]
    # t = 0.03 / (sd / sqrt 5), sd = 0.01 sqrt(2.5). Student's t with 4 degrees of freedom
    # has a closed-form two-sided tail: p = 1 - x (3 - x^2) / 2, x = t / sqrt(t^2 + 4).
    tt = 0.03 / (0.01 * math.sqrt(2.5) / math.sqrt(5))
    x = tt / math.sqrt(tt * tt + 4)
    assert t["diff"] == pytest.approx(0.03, abs=1e-6) and t["seeds"] == 5
    assert t["p_value"] == pytest.approx(1 - x * (3 - x * x) / 2, abs=2e-6)
    assert t["verdict"] == "better" and t["metric"] == "market_mean ndcg@10"
    # The interval: 0.03 ± t_{0.975, 4} sd / sqrt 5, t_{0.975, 4} = 2.7764451.
    half = 2.7764451 * 0.01 * math.sqrt(2.5) / math.sqrt(5)
    assert t["ci"] == pytest.approx([0.03 - half, 0.03 + half], abs=2e-6)
    assert t["p_adjusted"] == t["p_value"]  # one method against local: a family of one
    md = markdown.results_markdown(out)
    assert "| fecosr | +0.0300 [+0.0104, +0.0496] | 0.013 | 0.013 |" in md


def test_the_tests_over_seeds_are_one_family_over_the_runs_methods():
    """Three methods against local over 5 seeds, their market means above local's by
    d_k(s): raw p 0.013 (the test above), 0.013 and 1 (d = 0). Benjamini-Hochberg over the
    three: sorted p_(1) = p_(2) = 0.0131, p_(3) = 1 -> adjusted 0.0131 x 3 / 2 = 0.0197 for
    both, 1 for the third."""
    names = ["a"]

    def result(seed):
        base = 0.2 + 0.1 * (seed % 2)
        methods = {m: table({"a": 0.1}) for m in ("local", "x", "y", "z")}
        for m, gain in (("local", 0.0), ("x", 0.01 * (seed + 1)), ("y", 0.01 * (seed + 1)),
                        ("z", 0.0)):  # fmt: skip
            methods[m]["market_mean"]["ndcg@10"] = base + gain
        return {"dataset": "d", "protocol": "full", "markets": names, "skipped": {},
                "methods": methods}  # fmt: skip

    seeds = list(range(5))
    ranks = {m: {"a": np.zeros((5, 3), int)} for m in ("local", "x", "y", "z")}
    out = results_lib.combine_seeds([result(s) for s in seeds], seeds, ranks)["vs_local"]
    raw = out["x"]["over_seeds"]["p_value"]
    assert out["y"]["over_seeds"]["p_value"] == raw and out["z"]["over_seeds"]["p_value"] == 1.0
    for m in ("x", "y"):
        assert out[m]["over_seeds"]["p_adjusted"] == pytest.approx(raw * 3 / 2, abs=2e-6)
        assert out[m]["over_seeds"]["family"] == verdicts.OVER_SEEDS_FAMILY
    assert out["z"]["over_seeds"]["p_adjusted"] == 1.0


def test_transfer_matrix_rows_are_sources_and_columns_targets():
    names = ["a", "b", "c"]
    hits, misses = np.zeros(50, int), np.full(50, 30)
    ranks = {
        "local": {"a": misses, "b": misses, "c": hits},
        "transfer_id@a": {"a": hits, "b": hits, "c": misses},  # helps a, b; hurts c
        "transfer_id@b": {"a": misses, "b": misses, "c": hits},  # changes nothing
    }
    methods = {
        "local": table({"a": 0.0, "b": 0.0, "c": 1.0}),
        "transfer_id@a": table({"a": 1.0, "b": 1.0, "c": 0.0}),
        "transfer_id@b": table({"a": 0.0, "b": 0.0, "c": 1.0}),
    }
    results = {
        "dataset": "d",
        "protocol": "full",
        "markets": names,
        "methods": methods,
        "vs_local": results_lib.comparison(methods, names, ranks=ranks),
    }
    text = markdown.results_markdown(results)
    assert "| source | a | b | c | targets better (marked) | targets worse (marked) |" in text
    # The source's own cell in brackets; its targets counted without it. One seed: the
    # markers are about one trained model (△ / ▽).
    assert "| a | [+1.0000 △] | +1.0000 △ | -1.0000 ▽ | 1 (1) | 1 (1) |" in text
    assert "| b | +0.0000 | [+0.0000] | +0.0000 | 0 (0) | 0 (0) |" in text


def test_p_values_as_the_tables_show_them():
    from fecosr_jax.report import markdown

    assert markdown.p_text(0.012345) == "0.012"
    assert markdown.p_text(3.2e-5) == "3.2e-05"
    assert markdown.p_text(0.0) == "<1e-6"  # below what results.json keeps, not zero
    assert markdown.p_text(None) == "-"


def test_the_t_test_is_scipys_student_t_exactly():
    """_t_test calls scipy.special's Student t functions directly: the same numbers, bit for
    bit, as scipy.stats.t's sf and ppf (which call them after checking their arguments)."""
    from scipy import stats

    for diff in (-0.03, 0.0, 1e-4, 2.5):
        for variance in (1e-8, 0.01, 4 / 3):
            for df in (1.0, 64 / 38, 4.0, 37.5, 1e6):
                p, ci, detectable = significance._t_test(diff, variance, df)
                se = math.sqrt(variance)
                critical = float(stats.t.ppf(1 - significance.ALPHA / 2, df))
                assert p == float(2 * stats.t.sf(abs(diff) / se, df))
                assert ci == [diff - critical * se, diff + critical * se]
                power = float(stats.t.ppf(significance.POWER, df))
                assert detectable == (critical + power) * se


def test_seed_aware_interval_by_hand():
    # D = [[1, 2, 3], [3, 4, 5]] (S = 2 seeds, U = 3 users): mean 3; seed means 2, 4 ->
    # MS_seed = 3 ((-1)^2 + 1^2) / 1 = 6; user means 2, 3, 4 -> MS_user = 2 (1 + 0 + 1) / 2 = 2;
    # every residual is 0 -> MS_error = 0. Var = (6 + 2 - 0) / 6 = 4/3, and Satterthwaite's
    # df = 8^2 / (6^2 / 1 + 2^2 / 2) = 64 / 38.
    d = np.array([[1.0, 2, 3], [3, 4, 5]])
    out = significance.seed_aware_test(d, np.zeros_like(d))
    assert out["diff"] == 3.0 and out["df"] == pytest.approx(64 / 38)
    assert (out["seeds"], out["users"], out["test"]) == (2, 3, significance.SEED_AWARE)
    from scipy import stats

    half = stats.t.ppf(0.975, 64 / 38) * math.sqrt(4 / 3)
    assert out["ci"] == pytest.approx([3 - half, 3 + half])
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(3 / math.sqrt(4 / 3), 64 / 38))
    # the smallest effect found with 80% power: (t_0.975 + t_0.8) x SE
    power = stats.t.ppf(0.975, 64 / 38) + stats.t.ppf(0.8, 64 / 38)
    assert out["detectable"] == pytest.approx(power * math.sqrt(4 / 3))
    # One seed: the paired t-test over users, said to be about one trained model.
    one = significance.seed_aware_test(d[:1], np.zeros((1, 3)))
    assert one["test"] == significance.ONE_MODEL and one["df"] == 2
    assert one["p_value"] == pytest.approx(significance.paired_test(d[0], np.zeros(3))["p_value"])


def one_market_results(method: np.ndarray, local: np.ndarray) -> dict:
    """The results dict of one market "a" where a method and `local` have these [S, U] test
    ranks (the metric tables are placeholders: the tests read only the ranks)."""
    ranks = {m: {"a": r} for m, r in (("m", method), ("local", local))}
    table = {"a": {"ndcg@10": 0.0}, "mean": {}, "market_mean": {}}
    return results_lib.results(
        dataset="d", protocol="full", markets=["a"], skipped={}, transfer_source=None,
        soft_labels={}, ranks=ranks, methods={m: table for m in ranks},
    )  # fmt: skip


def test_seeds_that_disagree_are_significant_pooled_but_not_seed_aware():
    # 40 users, `local` at rank 3 on every seed. Seed 0 puts every user at rank 0 (+0.569);
    # seeds 1-4 put half the users at rank 4 (-0.022 each). Averaged over the seeds first,
    # every user is above `local`: the per-user test is sure. The seeds are not.
    local = np.full((5, 40), 3)
    method = np.tile(np.resize([3, 4], 40), (5, 1))
    method[0] = 0
    results = one_market_results(method, local)
    pooled = results["vs_local"]["m"]["trained_models"]["markets"]["a"]
    aware = results["vs_local"]["m"]["seed_aware"]["markets"]["a"]
    assert pooled["verdict"] == "better" and pooled["p_adjusted"] < 1e-6
    assert aware["verdict"] == "same" and aware["p_adjusted"] > 0.05
    assert aware["ci"][0] < 0 < aware["ci"][1] and aware["seeds"] == 5
    assert aware["diff"] == pytest.approx(pooled["diff"])
    # Without seed 0 the four agreeing seeds are significantly worse: the verdict is fragile.
    assert aware["robust"] is False
    assert "-0." in markdown.interval_cell(aware) and markdown.interval_cell(aware).endswith("†")
    # The run's table marks nothing: ▲ / ▼ come from the seed-aware test only.
    methods = {"local": table({"a": 0.0}), "m": table({"a": 0.1})}
    vs_local = results_lib.comparison(
        methods, ["a"], ranks={"m": {"a": method}, "local": {"a": local}}
    )
    md = markdown.results_markdown(
        {"dataset": "d", "markets": ["a"], "protocol": "full", "methods": methods,
         "vs_local": vs_local}
    )  # fmt: skip
    assert "| a | 0.0000 | 0.1000 † |" in md
    assert "| m | +0.1000 | 1 | 0 | 0 | 0 | 0 | 1 / 0 |" in md  # these models: better


def test_seeds_that_agree_are_seed_aware_significant():
    # Seed s puts 16 + 2 s of the 40 users at rank 2 (the rest at `local`'s rank 3): every
    # seed gains 0.028 to 0.042.
    local = np.full((5, 40), 3)
    method = np.array([[2] * (16 + 2 * s) + [3] * (24 - 2 * s) for s in range(5)])
    aware = one_market_results(method, local)["vs_local"]["m"]["seed_aware"]
    test = aware["markets"]["a"]
    assert test["verdict"] == "better" and test["ci"][0] > 0 and test["robust"] is True
    assert aware["test"] == significance.SEED_AWARE
    assert aware["family"] == verdicts.SEED_AWARE_FAMILY
