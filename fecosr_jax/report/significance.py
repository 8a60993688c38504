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

That test averages each user over the seeds first, so it asks whether these trained models are
better for these users: it treats the models as fixed. `seed_aware_test` also counts the
training's randomness. With S seeds and U users, the differences D[s, u] form a crossed
design, and their mean's variance has a seed part, a user part and their interaction:

    Var(mean D) = s2_seed / S + s2_user / U + s2_error / (S U)

From the two-way analysis of variance without replication (mean squares MS_seed, MS_user,
MS_error; E[MS_seed] = s2_error + U s2_seed, E[MS_user] = s2_error + S s2_user,
E[MS_error] = s2_error) the unbiased estimate is

    Var = (MS_seed + MS_user - MS_error) / (S U)       (a variance component below 0 set to 0)

with Satterthwaite's degrees of freedom. This is the linear mixed model with crossed random
intercepts for seeds and users (its REML estimates, for this balanced design), in closed form.
When the seeds agree it is close to the per-user test; when they disagree the seed part
dominates and the test has about S - 1 degrees of freedom, as a test over the per-seed mean
differences does. It gives the mean difference with a 95% interval beside the verdict, and the
smallest effect it would have found with 80% power: (t_{0.975, df} + t_{0.8, df}) x SE.
"""

from __future__ import annotations

import numpy as np

from fecosr_jax import metrics

ALPHA = 0.05  # significance level of "better" / "worse"
CORRECTION = "benjamini-hochberg"  # over each family: one method's tests in every market
SEED_AWARE = "seeds x users, crossed random effects (Satterthwaite df)"  # seed_aware_test
ONE_MODEL = "users, one trained model (paired t-test)"  # seed_aware_test with one seed


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
    adjusted = dict(zip(tests, adjust([t["p_value"] for t in tests.values()]), strict=True))
    return {
        n: {**t, "p_adjusted": adjusted.get(n), "verdict": verdict(t["diff"], adjusted.get(n))}
        for n, t in tests.items()
    }


POWER = 0.8  # the power at which `detectable` is the smallest effect


def _t_test(diff: float, variance: float, df: float) -> tuple[float, list[float], float]:
    """Two-sided p, 95% interval and smallest detectable effect (POWER) of a mean difference
    with this variance and Student-t degrees of freedom."""
    # scipy.stats.t's sf(x, df) and ppf(q, df) are these two functions, called through
    # ~0.1 ms of argument checks each (a table of many tests spent most of its time there).
    from scipy.special import stdtr, stdtrit

    if variance <= 0.0:  # no spread to test against
        return (1.0 if diff == 0.0 else 0.0), [diff, diff], 0.0
    se = float(np.sqrt(variance))
    p = float(2 * stdtr(df, -abs(diff) / se))
    critical = float(stdtrit(df, 1 - ALPHA / 2))
    detectable = (critical + float(stdtrit(df, POWER))) * se
    return p, [diff - critical * se, diff + critical * se], detectable


def mean_interval(values) -> list[float] | None:
    """The (1 - ALPHA) Student-t interval [low, high] of the mean of `values` (say, a
    method's market mean over seeds); None for fewer than 2 values."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return None
    return _t_test(float(v.mean()), float(v.var(ddof=1)) / v.size, v.size - 1.0)[1]


def seed_aware_test(method: np.ndarray, reference: np.ndarray) -> dict:
    """The method against the reference over seeds and users (module docstring): per-user
    values [S, U] of each (NaN = no user; a user missing in any seed is dropped).

    Returns:
      {"test": SEED_AWARE, or ONE_MODEL with one seed, "diff": mean difference, "ci": its 95%
      interval [low, high], "detectable": the smallest effect this test finds with
      probability POWER at level ALPHA (before any adjustment; what a "same" could have
      missed), "p_value", "df", "seeds": S, "users": U, "verdict"}; with fewer than 2 users
      p_value, ci, detectable and df are None and the verdict "same".
    """
    a = np.atleast_2d(np.asarray(method, np.float64))
    b = np.atleast_2d(np.asarray(reference, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds and users: {a.shape} vs {b.shape}")
    keep = np.all(np.isfinite(a) & np.isfinite(b), axis=0)
    d = (a - b)[:, keep]  # [S, U]
    seeds, users = d.shape
    out = {"test": SEED_AWARE if seeds > 1 else ONE_MODEL, "seeds": seeds, "users": users}
    if users < 2:
        diff = float(d.mean()) if d.size else 0.0
        return {
            **out,
            "diff": diff,
            "ci": None,
            "detectable": None,
            "p_value": None,
            "df": None,
            "verdict": "same",
        }
    diff = float(d.mean())
    if seeds == 1:
        variance, df = float(d.var(ddof=1)) / users, users - 1.0
    else:
        by_seed, by_user = d.mean(axis=1), d.mean(axis=0)
        ms_seed = users * float(((by_seed - diff) ** 2).sum()) / (seeds - 1)
        ms_user = seeds * float(((by_user - diff) ** 2).sum()) / (users - 1)
        residual = d - by_seed[:, None] - by_user[None, :] + diff
        ms_error = float((residual**2).sum()) / ((seeds - 1) * (users - 1))
        ms_seed, ms_user = max(ms_seed, ms_error), max(ms_user, ms_error)  # components >= 0
        total = ms_seed + ms_user - ms_error
        variance = total / (seeds * users)
        parts = (
            ms_seed**2 / (seeds - 1)
            + ms_user**2 / (users - 1)
            + ms_error**2 / ((seeds - 1) * (users - 1))
        )
        df = total**2 / parts if parts > 0 else float(seeds * users - 1)
    p, ci, detectable = _t_test(diff, variance, df)
    return {
        **out,
        "diff": diff,
        "ci": ci,
        "detectable": detectable,
        "p_value": p,
        "df": float(df),
        "verdict": verdict(diff, p),
    }


def adjust(ps: list[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values of one family (None: no test, left out)."""
    tested = [p for p in ps if p is not None]
    if not tested:
        return list(ps)
    from scipy import stats

    adjusted = iter(float(q) for q in stats.false_discovery_control(tested, method="bh"))
    return [None if p is None else next(adjusted) for p in ps]
