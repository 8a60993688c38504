"""Is a method better than `local` in a market? A paired test over the same test users
(DESIGN.md §5).

Per-market test sets are small (tens to hundreds of users), so two means differ by chance. Both
methods rank the same test users' targets, so the comparison is paired: per user, the
difference of the metric (NDCG@10 by default) between the method and the reference, averaged
over seeds first when there are several; then a two-sided paired t-test over the users:

    d_u = metric_method(u) - metric_reference(u),   t = mean(d) / (std(d, ddof=1) / sqrt(n))

with n - 1 degrees of freedom. p < ALPHA marks the market "better" or "worse" (by the sign of
mean(d)); otherwise "same". Pure numpy (the Student-t tail through the regularised incomplete
beta function), float64.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05  # significance level of "better" / "worse"


def per_user(ranks: np.ndarray, metric: str = "ndcg@10") -> np.ndarray:
    """A metric per user from target ranks [..., U] (-1 = no user -> NaN); float64."""
    name, _, k = metric.partition("@")
    r = np.asarray(ranks, np.float64)
    hit = (r >= 0) & (r < int(k))
    if name == "ndcg":
        value = np.where(hit, 1.0 / np.log2(np.maximum(r, 0.0) + 2.0), 0.0)
    elif name == "hr":
        value = hit.astype(np.float64)
    elif name == "mrr":
        value = np.where(hit, 1.0 / (np.maximum(r, 0.0) + 1.0), 0.0)
    else:
        raise ValueError(f"metric {metric!r}: expected ndcg@K, hr@K or mrr@K")
    return np.where(r >= 0, value, np.nan)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_test_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic with df degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


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
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = t_test_p(mean / (sd / math.sqrt(n)), n - 1)
    verdict = "same" if p >= ALPHA or mean == 0.0 else ("better" if mean > 0 else "worse")
    return {"diff": mean, "p_value": p, "users": n, "verdict": verdict}
