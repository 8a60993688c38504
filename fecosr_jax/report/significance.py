"""Is a method better than `local` in a market? A paired test over the same test users
(docs/design.md §5).

Per-market test sets are small (tens to hundreds of users), so two means differ by chance. Both
methods rank the same test users' targets, so the comparison is paired: per user, the
difference of the metric (NDCG@10 by default) between the method and the reference, averaged
over seeds first when there are several; then a two-sided paired t-test over the users:

    d_u = metric_method(u) - metric_reference(u),   t = mean(d) / (std(d, ddof=1) / sqrt(n))

with n - 1 degrees of freedom (scipy.stats.ttest_rel). A method is tested in every market at
once, so its markets' tests are one family: their p-values are adjusted for multiple
comparisons with Benjamini-Hochberg (`correct`: scipy.stats.false_discovery_control), which
keeps the expected share of wrongly marked markets among the marked ones below ALPHA. An
adjusted p < ALPHA marks the market "better" or "worse" (by the sign of mean(d)); otherwise
"same". float64.
"""

from __future__ import annotations

import numpy as np

from fecosr_jax import metrics

ALPHA = 0.05  # significance level of "better" / "worse"
CORRECTION = "benjamini-hochberg"  # over each family: one method's tests in every market


def verdict(diff: float, p: float | None) -> str:
    """ "better" / "worse" by the sign of `diff` where p < ALPHA, else "same"."""
    if p is None or p >= ALPHA or diff == 0.0:
        return "same"
    return "better" if diff > 0 else "worse"


def per_user(ranks: np.ndarray, metric: str = "ndcg@10") -> np.ndarray:
    """A metric per user from target ranks [..., U] (-1 = no user -> NaN); float64."""
    name, _, k = metric.partition("@")
    if name not in metrics.NAMES or not k.isdigit():
        raise ValueError(f"metric {metric!r}: expected ndcg@K, hr@K or mrr@K")
    r = np.asarray(ranks)
    return np.where(r >= 0, metrics.at_k(name, np.maximum(r, 0), int(k)), np.nan)


def paired_test(method: np.ndarray, reference: np.ndarray) -> dict:
    """Paired two-sided t-test of per-user values [U] (NaN = no user, dropped).

    Returns:
      {"diff": mean difference, "p_value", "users": n, "verdict": "better" | "worse" |
      "same"}; with fewer than 2 users p_value is None and the verdict "same".
    """
    method, reference = np.asarray(method, np.float64), np.asarray(reference, np.float64)
    if method.shape != reference.shape:
        raise ValueError(f"paired values need the same users: {method.shape} vs {reference.shape}")
    keep = np.isfinite(method) & np.isfinite(reference)
    d = method[keep] - reference[keep]
    n = int(d.size)
    if n < 2:
        return {"diff": float(d.mean()) if n else 0.0, "p_value": None, "users": n,
                "verdict": "same"}  # fmt: skip
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # every user moved by the same amount: no spread to test against
        p = 1.0 if mean == 0.0 else 0.0
    else:
        from scipy import stats  # here: importing scipy.stats takes ~1 s of every start-up

        p = float(stats.ttest_rel(method[keep], reference[keep]).pvalue)
    return {"diff": mean, "p_value": p, "users": n, "verdict": verdict(mean, p)}


def correct(tests: dict[str, dict]) -> dict[str, dict]:
    """One family of `paired_test` results ({market: test}) with Benjamini-Hochberg adjusted
    p-values, "p_adjusted" (None where the market had no test), and each verdict taken from
    the adjusted p. The raw "p_value" stays."""
    tested = [n for n, t in tests.items() if t["p_value"] is not None]
    adjusted = {}
    if tested:
        from scipy import stats

        ps = stats.false_discovery_control([tests[n]["p_value"] for n in tested], method="bh")
        adjusted = {n: float(p) for n, p in zip(tested, ps, strict=True)}
    return {
        n: {**t, "p_adjusted": adjusted.get(n), "verdict": verdict(t["diff"], adjusted.get(n))}
        for n, t in tests.items()
    }
