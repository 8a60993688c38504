"""The results of a run: the results dict (results.json) of one seed or of several combined,
its tests against `local` (fecosr_jax.report.verdicts), and the per-user ranks (ranks.npz).

results.json is a pure function of the config and seed (no timings); timings and training
curves go to metrics.jsonl and TensorBoard (fecosr_jax.store.metrics_log); its Markdown and
plots are fecosr_jax.report.markdown and fecosr_jax.report.plots.
"""

from __future__ import annotations

import io

import numpy as np
from etils import epath

from fecosr_jax.report import verdicts
from fecosr_jax.report.verdicts import GAIN_METRIC
from fecosr_jax.store.files import json_float, write_bytes_atomic

REPORTED = ("hr@10", "ndcg@10", "mrr@10")


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


def per_market_table(names, metrics: dict[str, np.ndarray]) -> dict:
    """{market: {metric: value}, "mean": user-weighted mean, "market_mean": plain mean}."""
    m = len(names)
    counts = np.asarray(metrics["count"][:m], np.float64)
    keys = sorted(k for k in metrics if k != "count")
    out = {n: {k: json_float(metrics[k][i]) for k in keys} for i, n in enumerate(names)}
    w = counts / max(counts.sum(), 1.0)
    out["mean"] = {k: json_float(np.sum(np.asarray(metrics[k][:m]) * w)) for k in keys}
    out["market_mean"] = {k: json_float(np.mean(metrics[k][:m])) for k in keys}
    return out


def comparison(methods: dict, names, reference: str = "local", ranks: dict | None = None) -> dict:
    """Per method: gain in NDCG@10 over `reference` per market, the markets better / worse by
    the sign of the gain and, where both methods' per-user test ranks are known (`ranks`:
    {method: {market: [S, U] or [U] ranks, arrays or lists}}, S seeds), the tests per market
    over the same test users: "seed_aware" (`verdicts.seed_aware`: the verdicts, ▲ / ▼, and
    the markets significantly better / worse, of which "markets_fragile" change when one seed
    is left out) and "trained_models" (`verdicts.trained_models_tests`: about these trained
    models only)."""
    if reference not in methods:
        return {}
    ref = methods[reference]
    ranks = ranks or {}
    aware = verdicts.seed_aware({m: r for m, r in ranks.items() if m in methods}, names, reference)
    out = {}
    for method, table in methods.items():
        if method == reference:
            continue
        gains = {n: json_float(table[n][GAIN_METRIC] - ref[n][GAIN_METRIC]) for n in names}
        values = np.asarray([g for g in gains.values()], np.float64)
        out[method] = {
            "gain": gains,
            "mean_gain": json_float(values.mean()),
            "markets_better": int((values > 0).sum()),
            "markets_worse": int((values < 0).sum()),
        }
        if method in aware:
            tests = aware[method]["markets"].values()
            found = [t["verdict"] for t in tests]
            out[method]["seed_aware"] = aware[method]
            out[method]["markets_significantly_better"] = found.count("better")
            out[method]["markets_significantly_worse"] = found.count("worse")
            out[method]["markets_fragile"] = sum(
                t["verdict"] != "same" and t["robust"] is False for t in tests
            )
        if method in ranks and reference in ranks:
            out[method]["trained_models"] = verdicts.trained_models_tests(
                ranks[method], ranks[reference], names
            )
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
    return json_float(v.mean()), json_float(v.std(ddof=1)) if len(v) > 1 else 0.0


def combine_seeds(per_seed: list[dict], seeds: list[int], ranks: dict) -> dict:
    """One results dict from the results of several seeds on the same markets and users:
    "methods" holds the mean over seeds of every metric, "std" the standard deviation (ddof 1),
    and "vs_local" the tests of `comparison` on every seed's per-user metric and, with
    verdicts.SEED_TEST_MIN seeds or more, the tests over seeds of the market means
    (verdicts.over_seeds_tests)."""
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
    if len(per_seed) >= verdicts.SEED_TEST_MIN and "local" in methods:
        over_seeds = verdicts.over_seeds_tests(per_seed, methods)
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
    """Whether epsilon a is larger than b, None (sigma 0, privacy.epsilon_json) the largest."""
    return b is not None and (a is None or a > b)
