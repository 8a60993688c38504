"""docs/results.md's sweep tables from their raw rows under docs/results/: the claim-2 grid over
heterogeneity x catalogue overlap (its rows, then every seed's files), the alpha x tau_s grids
and the early-stopping rules. The statistics are the runs' own, as in
experiments.tables.results (the tables of single runs over seeds); experiments.tables.registry
names every table."""

from __future__ import annotations

import pathlib

import numpy as np

from experiments.tables import runs as run_tables
from experiments.tables.cells import mean_std, plain, row, signed
from experiments.tables.results import ML100K_SEEDS, RAW
from fecosr_jax.report import markdown, method_pairs, significance, sweep_results, verdicts
from fecosr_jax.report import results as results_lib
from fecosr_jax.store.files import read_json

# -- Claim 2: the heterogeneity × overlap sweep (docs/results/claim2_heterogeneity.json) ------

CLAIM2 = RAW / "claim2_heterogeneity.json"
CLAIM2_PAIRS = [("fecosr", "fecosr_no_s2ce"), ("fecosr", "local")]


def _claim2_summary() -> tuple[list[dict], list[dict]]:
    rows = read_json(CLAIM2)["rows"]
    axes = ["heterogeneity", "overlap", "seeds"]
    return rows, sweep_results.summarise(rows, axes, CLAIM2_PAIRS)


def claim2_gains() -> str:
    """Per grid point, mean ± std over seeds of the user-weighted test NDCG@10, the paired
    gaps, and the mean client-update cosines of the two federated pretrainings."""
    _, summary = _claim2_summary()
    lines = [
        row(["h", "overlap", "local", "fecosr", "fecosr_no_s2ce", "S²CE − CE", "fecosr − local",
             "cosine S²CE", "cosine CE"]),
        "| --- | --- |" + " ---: |" * 7,
    ]  # fmt: skip
    for s in summary:
        ndcg = {m: s["methods"][m]["ndcg@10"] for m in ("local", "fecosr", "fecosr_no_s2ce")}
        lines.append(
            row(
                [
                    s["heterogeneity"],
                    s["overlap"],
                    *(mean_std(v) for v in ndcg.values()),
                    mean_std(s["gaps"]["fecosr - fecosr_no_s2ce"], sign=True),
                    mean_std(s["gaps"]["fecosr - local"], sign=True),
                    plain(s["delta_cosine"]["federated_s2ce"][0]),
                    plain(s["delta_cosine"]["federated_ce"][0]),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def claim2_significance() -> str:
    """Per grid point and seed (in seed order), the markets significantly better / worse than
    `local` (each run's own paired tests)."""
    rows, summary = _claim2_summary()
    lines = [
        row(["h", "overlap", "fecosr better", "fecosr worse", "fecosr_no_s2ce better",
             "fecosr_no_s2ce worse"]),
        "|" + " --- |" * 6,
    ]  # fmt: skip
    for s in summary:
        members = sorted(
            (
                r
                for r in rows
                if (r["heterogeneity"], r["overlap"]) == (s["heterogeneity"], s["overlap"])
            ),
            key=lambda r: r["seeds"],
        )
        cells = []
        for method in ("fecosr", "fecosr_no_s2ce"):
            for side in (0, 1):
                cells.append(", ".join(str(r["vs_local"][method][side]) for r in members))
        lines.append(row([s["heterogeneity"], s["overlap"], *cells]))
    return "\n".join(lines) + "\n"


# -- α and τ_s, first look: two seeds (docs/results/alpha_temperature.json) -----------------

ALPHA = RAW / "alpha_temperature.json"


def _ce_first(summary: list[dict], key) -> list[dict]:
    """A sweep's α x τ_s summary in table order: CE (α = 0, one row whatever τ_s), then the
    other settings sorted by `key`."""
    ce = [s for s in summary if s["alpha"] == 0][:1]
    return ce + sorted((s for s in summary if s["alpha"] > 0), key=key)


def alpha_first_look() -> str:
    """Per (α, τ_s), `fecosr`'s validation and test NDCG@10 (mean ± std over seeds) and the
    mean client-update cosine; α = 0 is CE whatever τ_s, so it is one row."""
    summary = sweep_results.summarise(read_json(ALPHA)["rows"], ["alpha", "temperature", "seeds"])
    lines = [
        row(["α", "τ_s", "validation", "test", "client-update cosine"]),
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for s in _ce_first(summary, lambda s: (s["temperature"], s["alpha"])):
        fecosr = s["methods"]["fecosr"]
        lines.append(
            row(
                [
                    "0 (CE)" if s["alpha"] == 0 else s["alpha"],
                    "-" if s["alpha"] == 0 else s["temperature"],
                    mean_std(fecosr["valid_ndcg@10"]),
                    mean_std(fecosr["ndcg@10"]),
                    plain(s["delta_cosine"]["federated_s2ce"][0]),
                ]
            )
        )
    return "\n".join(lines) + "\n"


ALPHA_SEEDS = RAW / "alpha_tau_seeds"  # a folder per run: results.json, training.json, config.json
ALPHA_BASE = (0.2, 0.1)  # the default (α, τ_s): the second gain column is against it


def alpha_seeds_rows(folder: pathlib.Path = ALPHA_SEEDS) -> list[dict]:
    """The sweep's rows (sweep_results.collect) from each run's own files, its grid values
    read from its config.json."""
    rows = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        config = read_json(run / "config.json")
        point = {
            "alpha": config["federated"]["alpha"],
            "temperature": config["federated"]["temperature"],
            "seeds": config["seed"],
        }
        rows.append(sweep_results.collect(run, point))
    return rows


def alpha_seeds() -> str:
    """The synthetic α x τ_s grid over 3 seeds (`alpha_table`). Raw rows:
    docs/results/alpha_tau_seeds/."""
    return alpha_table(alpha_seeds_rows())


def alpha_table(rows: list[dict]) -> str:
    """Per (α, τ_s), `fecosr`'s validation NDCG@10 (mean ± std over seeds), its gain over CE
    (α = 0) and over the default α 0.2, τ_s 0.1, each as the mean over seeds of the per-seed
    difference with the seeds where it is positive; the test NDCG@10; the mean client-update
    cosine. The best validation mean in bold."""
    valid = {
        (r["alpha"], r["temperature"] if r["alpha"] else None, r["seeds"]):
        r["methods"]["fecosr"]["valid_ndcg@10"]
        for r in rows
    }  # fmt: skip
    summary = sweep_results.summarise(rows, ["alpha", "temperature", "seeds"])
    ordered = _ce_first(summary, lambda s: (s["alpha"], s["temperature"]))
    best = max(ordered, key=lambda s: s["methods"]["fecosr"]["valid_ndcg@10"][0])

    def gain(setting, reference) -> str:
        seeds = sorted(k[2] for k in valid if k[:2] == setting)
        d = np.asarray([valid[(*setting, k)] - valid[(*reference, k)] for k in seeds])
        return f"{signed(d.mean())} ({int((d > 0).sum())}/{len(d)})"

    lines = [
        row(["α", "τ_s", "validation", "gain over CE (seeds > 0)",
             "gain over α 0.2, τ_s 0.1 (seeds > 0)", "test", "client-update cosine"]),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for s in ordered:
        setting = (s["alpha"], s["temperature"] if s["alpha"] else None)
        fecosr = s["methods"]["fecosr"]
        cells = [
            "0 (CE)" if not s["alpha"] else f"{s['alpha']:g}",
            "-" if not s["alpha"] else f"{s['temperature']:g}",
            mean_std(fecosr["valid_ndcg@10"]),
            "" if not s["alpha"] else gain(setting, (0.0, None)),
            "" if not s["alpha"] or setting == ALPHA_BASE else gain(setting, ALPHA_BASE),
        ]
        if s is best:
            cells = [f"**{c}**" if c else c for c in cells]
        cosine = s["delta_cosine"]["federated_s2ce"][0]  # CE too: fecosr at alpha 0
        lines.append(row([*cells, mean_std(fecosr["ndcg@10"]), plain(cosine)]))
    return "\n".join(lines) + "\n"


# -- α and τ_s on ml-100k regions: the grid's runs, CE and the default from ml100k_seeds5 ----

ALPHA_ML100K = RAW / "alpha_ml100k"  # a folder per run: results.json, training.json, config.json
ALPHA_ML100K_SEEDS = (0, 1, 2)
# What a grid run's config.json may differ in from the ml100k_seeds5 seed it sits beside,
# besides the fields that change no result (run_tables.config_changes).
GRID_FIELDS = {"methods", "federated.alpha", "federated.temperature", "seeds"}


def alpha_ml100k_rows() -> list[dict]:
    """The ml-100k grid's rows: its own runs, then CE (`fecosr_no_s2ce`, which is `fecosr` at
    α = 0 on the same run axis) and the default α 0.2, τ_s 0.1 (`fecosr`) from seeds 0-2 of
    docs/results/ml100k_seeds5. Refused (ValueError) where a grid run's config differs from
    its seed's there in more than the grid's fields, or its markets do."""
    grid = alpha_seeds_rows(ALPHA_ML100K)
    rows = []
    for seed in ALPHA_ML100K_SEEDS:
        run = ML100K_SEEDS / f"seed_{seed}"
        config = read_json(run / "config.json")
        full = sweep_results.collect(run, {"seeds": seed})
        federated = config["federated"]
        ce = {**full, "alpha": 0.0, "temperature": federated["temperature"]}
        ce["methods"] = {"fecosr": full["methods"]["fecosr_no_s2ce"]}
        ce["delta_cosine"] = {"federated_s2ce": full["delta_cosine"]["federated_ce"]}
        default = {**full, "alpha": federated["alpha"], "temperature": federated["temperature"]}
        default["methods"] = {"fecosr": full["methods"]["fecosr"]}
        rows += [ce, default]
    for r in grid:
        run = ALPHA_ML100K / r["run"]
        seed_run = ML100K_SEEDS / f"seed_{r['seeds']}"
        differ = set(run_tables.config_changes(run, seed_run)) - GRID_FIELDS
        markets = (read_json(p / "results.json")["markets"] for p in (run, seed_run))
        if differ or next(markets) != next(markets):
            raise ValueError(
                f"{run}: not the config or markets of {ML100K_SEEDS}/seed_{r['seeds']} "
                f"({', '.join(sorted(differ)) or 'markets'})"
            )
    return rows + grid


def alpha_ml100k() -> str:
    """The ml-100k regions α x τ_s grid over seeds 0-2 (`alpha_table`). Raw rows:
    docs/results/alpha_ml100k/ and docs/results/ml100k_seeds5/."""
    return alpha_table(alpha_ml100k_rows())


def soft_labels_ml100k() -> str:
    """What the soft label is at each τ_s on the ml-100k markets (results.json's
    `soft_labels`, seed 0's run at that τ_s; data.summary.soft_label_profile): the mass it
    keeps on the target and its effective number of items (the median over targets of exp of
    its entropy), each the mean over markets, and the markets' catalogue sizes."""
    grid = sorted(p for p in ALPHA_ML100K.iterdir() if p.is_dir())
    runs = [ML100K_SEEDS / "seed_0"] + [
        p for p in grid if read_json(p / "config.json")["seed"] == 0
    ]
    profiles = {}
    for run in runs:
        soft = read_json(run / "results.json")["soft_labels"]
        profiles[soft["temperature"]] = list(soft["markets"].values())
    lines = [
        row(["τ_s", "target mass", "effective items", "items per market"]),
        "| --- | ---: | ---: | ---: |",
    ]
    for temperature, markets in sorted(profiles.items()):
        items = [m["items"] for m in markets]
        lines.append(
            row(
                [
                    f"{temperature:g}",
                    f"{np.mean([m['target_mass'] for m in markets]):.2f}",
                    f"{np.mean([m['effective_items'] for m in markets]):.1f}",
                    f"{min(items):,}-{max(items):,}",
                ]
            )
        )
    return "\n".join(lines) + "\n"


# -- Early stopping: the same markets and seeds under three stopping rules -------------------

STOPPING = RAW / "stopping"
STOPPING_RULES = (("patience", "patience 3 alone (0)"), ("half", "half the budget (0.5, default)"),
                  ("full", "the whole budget (1)"))  # fmt: skip
STOPPING_SEEDS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9), tuple(range(10)))


def stopping() -> str:
    """Per rule and set of seeds: each method's market-mean test NDCG@10 (mean ± std over
    seeds), `fecosr` against `local` over seeds and per market (seed-aware tests,
    Benjamini-Hochberg over the markets), the markets it is significantly better / worse in
    (†: fragile), and the mean stop epoch."""
    lines = [
        row(["rule (`finetune.min_budget`)", "seeds", "local", "fecosr",
             "fecosr − local over seeds (p; adj.)", "markets ▲ / ▼", "stop epoch local / fecosr"]),
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]  # fmt: skip
    for rule, label in STOPPING_RULES:
        for seeds in STOPPING_SEEDS:
            res = run_tables.combined(STOPPING / rule, seeds)
            names, methods, std = res["markets"], res["methods"], res["std"]
            vs = res["vs_local"]["fecosr"]
            test = vs["over_seeds"]
            tests = vs["seed_aware"]["markets"]
            better, worse = (
                [n + markdown.FRAGILE * (tests[n]["robust"] is False) for n in names
                 if tests[n]["verdict"] == verdict]
                for verdict in ("better", "worse")
            )  # fmt: skip
            ndcg = [
                mean_std([methods[m]["market_mean"]["ndcg@10"], std[m]["market_mean"]["ndcg@10"]])
                for m in ("local", "fecosr")
            ]
            stops = [
                np.mean([methods[m][n]["stop_epoch"] for n in names]) for m in ("local", "fecosr")
            ]
            lines.append(
                row(
                    [
                        label,
                        f"{seeds[0]}-{seeds[-1]}",
                        *ndcg,
                        f"{_test(test)} {test['verdict']}",
                        f"▲ {', '.join(better) or '-'} / ▼ {', '.join(worse) or '-'}",
                        f"{stops[0]:.1f} / {stops[1]:.1f}",
                    ]
                )
            )
    return "\n".join(lines) + "\n"


# -- Claim 2 again: five seeds per point, the minimum budget, raw rows -----------------------

CLAIM2_SEEDS = RAW / "claim2_seeds"
CLAIM2_POINTS = [(h, o) for h in ("0", "0.5", "1") for o in ("0", "1")]


def _test(t: dict) -> str:
    return (
        f"{signed(t['diff'])} ({markdown.p_text(t['p_value'])}; {markdown.p_text(t['p_adjusted'])})"
    )


def _counts(c: dict) -> str:
    return f"{c['markets_significantly_better']} / {c['markets_significantly_worse']}"


def _cosine(folder: pathlib.Path, seeds, pretraining: str) -> float:
    """The mean over seeds of a pretraining's client-update cosine (each training.json)."""
    runs = [read_json(folder / f"seed_{s}" / "training.json") for s in seeds]
    return float(np.mean([r["pretraining"][pretraining]["delta_cosine"] for r in runs]))


def claim2_seeds() -> str:
    """Per grid point (folder h<h>_o<overlap>, seeds 0-4): market-mean test NDCG@10 (mean ±
    std over seeds); S²CE − CE and `fecosr` − `local` tested over seeds (paired by seed; p and
    Benjamini-Hochberg adjusted p over the grid's points) and per market (pooled per-user
    tests, Benjamini-Hochberg over the markets: markets ▲ / ▼); the mean client-update cosine
    of the two pretrainings."""
    seeds = range(5)
    points = {}
    for h, o in CLAIM2_POINTS:
        folder = CLAIM2_SEEDS / f"h{h}_o{o}"
        per_seed, ranks = run_tables.seed_runs(folder, seeds)
        res = results_lib.combine_seeds(per_seed, list(seeds), ranks)
        (pair,) = method_pairs.pair_comparison(res, ranks, [("fecosr", "fecosr_no_s2ce")])
        points[(h, o)] = {
            "folder": folder,
            "results": res,
            "pair": pair,
            "s2ce": verdicts.seed_test(per_seed, "fecosr", reference="fecosr_no_s2ce"),
            "local": res["vs_local"]["fecosr"]["over_seeds"],
        }
    for family in ("s2ce", "local"):
        tests = significance.correct({k: p[family] for k, p in points.items()})
        for k, t in tests.items():
            points[k][family] = t
    lines = [
        row(["h", "overlap", "local", "fecosr", "fecosr_no_s2ce", "S²CE − CE over seeds (p; adj.)",
             "S²CE vs CE markets ▲ / ▼", "fecosr − local over seeds (p; adj.)",
             "fecosr vs local markets ▲ / ▼", "cosine S²CE", "cosine CE"]),
        "| --- | --- |" + " ---: |" * 9,
    ]  # fmt: skip
    for (h, o), p in points.items():
        mean, std = p["results"]["methods"], p["results"]["std"]
        ndcg = [
            mean_std([mean[m]["market_mean"]["ndcg@10"], std[m]["market_mean"]["ndcg@10"]])
            for m in ("local", "fecosr", "fecosr_no_s2ce")
        ]
        lines.append(
            row(
                [
                    h,
                    o,
                    *ndcg,
                    _test(p["s2ce"]),
                    _counts(p["pair"]),
                    _test(p["local"]),
                    _counts(p["results"]["vs_local"]["fecosr"]),
                    plain(_cosine(p["folder"], seeds, "federated_s2ce")),
                    plain(_cosine(p["folder"], seeds, "federated_ce")),
                ]
            )
        )
    return "\n".join(lines) + "\n"
