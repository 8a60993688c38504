"""docs/results.md's tables of single runs (one seed, or seed_<s>/ per seed) from the raw files
committed under docs/results/ (what the runs wrote: results.json, ranks.npz, training.json,
config.json); the sweeps' tables are in experiments/tables/sweeps.py.
The statistics are the runs' own (fecosr_jax.report.results: combine_seeds, the paired tests and the
multiple-comparison control), so a table says what a run of its command would have reported.
experiments.tables regenerates and checks them (registry.TABLES names them)."""

from __future__ import annotations

import pathlib
import shutil
import tempfile

from experiments.tables import runs as run_tables
from experiments.tables.cells import mean_std, plain, row, signed
from fecosr_jax.report import results as results_lib
from fecosr_jax.store.files import read_json

RAW = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results"


# -- Runs' own tables (results.md's parts; experiments.tables.runs) -------------------------

DEFAULT = RAW / "default"  # the main job (experiments/configs/default.py)
DEFAULT_SEEDS = RAW / "default_seeds"  # the main job with --config.seeds=5: seed_0 ... seed_4
# The same before 2026-12-06, when fine-tuning stopped early after half the budget
# (finetune.min_budget 0.5): seed_0 ... seed_4.
DEFAULT_SEEDS_HALF = RAW / "default_seeds_half"
FULL = RAW / "full"  # its generator at the full budget (experiments/configs/full.py)
XMREC_SEEDS = RAW / "xmrec_seeds"  # XMRec ca/de/fr/uk, local and fedavg_id, seeds 0-4


def default_synthetic() -> str:
    """The main job's tables (docs/results/default/)."""
    return run_tables.tables(run_tables.retested(DEFAULT))


def readme_main_job() -> str:
    """README's table: the main job's mean test NDCG@10 per method and its gain over `local`
    (docs/results/default/, one seed, as the run prints them), and the markets each method is
    significantly better / worse in with the training's randomness counted: the seed-aware
    tests of the same config over seeds 0-4 (docs/results/default_seeds/; † fragile)."""
    results = run_tables.retested(DEFAULT)
    over_seeds = run_tables.combined(DEFAULT_SEEDS, range(5))["vs_local"]
    markets = len(results["markets"])
    lines = [
        "| method | test NDCG@10 | gain over `local` | "
        f"markets ▲ / ▼ over 5 seeds (of {markets}) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for method, metrics in results["methods"].items():
        vs = results["vs_local"].get(method)
        gain = signed(vs["mean_gain"], 3) if vs else "-"
        marks = "-"
        if method in over_seeds:
            c = over_seeds[method]
            marks = f"{c['markets_significantly_better']} / {c['markets_significantly_worse']}"
            marks += f" ({c['markets_fragile']} †)" if c["markets_fragile"] else ""
        lines.append(row([f"`{method}`", plain(metrics["mean"]["ndcg@10"], 3), gain, marks]))
    return "\n".join(lines) + "\n"


def default_seeds_figure(path: pathlib.Path) -> None:
    """The main job's per-market test NDCG@10 over seeds 0-4 (mean, std as error bars), drawn
    as a run draws its markets_ndcg10.png."""
    from fecosr_jax.report import plots  # matplotlib: only when drawing

    seeds = range(5)
    per_seed, ranks = run_tables.seed_runs(DEFAULT_SEEDS, seeds)
    for s, raw in zip(seeds, per_seed, strict=True):
        raw["methods"] = run_tables.run_order(DEFAULT_SEEDS / f"seed_{s}", raw)
    combined = results_lib.combine_seeds(per_seed, list(seeds), ranks)
    combined["dataset"] = "the main job's 8 synthetic markets, seeds 0-4 (mean, std)"
    with tempfile.TemporaryDirectory() as folder:
        (drawn,) = plots.plot(combined, {}, folder)
        shutil.copyfile(drawn, path)


def default_seeds() -> str:
    """The main job over seeds 0-4 (docs/results/default_seeds/seed_<s>/)."""
    return run_tables.over_seeds(DEFAULT_SEEDS, range(5))


def default_seeds_seed_aware() -> str:
    """The seed-aware tests against `local` of the main job over seeds 0-4."""
    return run_tables.seed_aware_over_seeds(DEFAULT_SEEDS, range(5))


def default_seeds_stopping() -> str:
    """The main job over seeds 0-4 with early stopping after half the budget and with the
    whole budget, side by side per method: the markets the seed-aware tests mark better /
    worse than `local` (fragile in brackets), the test over seeds of the market mean, and the
    mean epoch each market stopped."""
    rules = {"half (0.5)": DEFAULT_SEEDS_HALF, "whole (1)": DEFAULT_SEEDS}
    combined = {rule: run_tables.combined(folder, range(5)) for rule, folder in rules.items()}
    header = ["method"]
    for rule in rules:
        header += [f"{rule}: ▲ / ▼", f"{rule}: over seeds", f"{rule}: stop epoch"]
    lines = [row(header), "| --- |" + " ---: |" * (len(header) - 1)]
    first = next(iter(combined.values()))
    order = run_tables.run_order(DEFAULT_SEEDS / "seed_0", first)
    for method in (m for m in order if m in first["vs_local"]):
        cells = [method]
        for res in combined.values():
            c = res["vs_local"][method]
            marks = f"{c['markets_significantly_better']} / {c['markets_significantly_worse']}"
            marks += f" ({c['markets_fragile']} †)" if c["markets_fragile"] else ""
            t = c["over_seeds"]
            low, high = t["ci"]
            over = f"{signed(t['diff'])} [{signed(low)}, {signed(high)}] {t['verdict']}"
            stops = [res["methods"][method][n].get("stop_epoch") for n in res["markets"]]
            stop = "-" if None in stops else f"{sum(stops) / len(stops):.1f}"
            cells += [marks, over, stop]
        lines.append(row(cells))
    return "\n".join(lines).replace("-0.", "−0.") + "\n"


DEFAULT_PAIRS = [
    ("centralized", "fecosr", "pooled data vs federated"),
    ("fecosr", "transfer", "federated vs one-to-one from the largest market"),
    ("fecosr", "fecosr_no_s2ce", "S²CE vs CE, with the adaptation module"),
]


def default_seeds_pairs() -> str:
    """Three pairs of the main job not against `local`, seeds 0-4."""
    return run_tables.pairs_over_seeds(DEFAULT_SEEDS, range(5), DEFAULT_PAIRS)


def xmrec_seeds() -> str:
    """XMRec over seeds 0-4, exact duplicate rows dropped (docs/results/xmrec_seeds/)."""
    return run_tables.over_seeds(XMREC_SEEDS, range(5))


def xmrec_stops() -> str:
    """Where fine-tuning stopped on XMRec, seeds 0-4."""
    return run_tables.stop_epochs(XMREC_SEEDS, range(5))


# One-to-one transfer from each source market in its own run (transfer_id@<source>, seeds 0-4,
# the config of XMREC_SEEDS), joined to that run's `local` and `fedavg_id`.
XMREC_ONE_TO_ONE = RAW / "xmrec_one_to_one"  # <source>/seed_<s>/
ONE_TO_ONE_SOURCES = ("ca", "de", "fr", "uk")  # the sources whose runs are committed


def one_to_one_runs() -> tuple[run_tables.Joined, ...]:
    return tuple(
        run_tables.Joined(XMREC_ONE_TO_ONE / source, (f"transfer_id@{source}",))
        for source in ONE_TO_ONE_SOURCES
    )


def xmrec_one_to_one() -> str:
    """Claim 1 on XMRec over seeds 0-4: `local`, many-to-many `fedavg_id` and one-to-one
    `transfer_id` from each source, with the matrix of sources and targets."""
    return run_tables.over_seeds(XMREC_SEEDS, range(5), one_to_one_runs())


def xmrec_one_to_one_seed_aware() -> str:
    """The seed-aware tests of XMRec's one-to-one and many-to-many methods against `local`,
    seeds 0-4 (fecosr_jax.report.verdicts.seed_aware)."""
    methods = (*(f"transfer_id@{s}" for s in ONE_TO_ONE_SOURCES), "fedavg_id")
    return run_tables.seed_aware_over_seeds(XMREC_SEEDS, range(5), one_to_one_runs(), methods)


def xmrec_one_to_one_stops() -> str:
    """Where fine-tuning stopped on XMRec, seeds 0-4, the one-to-one methods included."""
    return run_tables.stop_epochs(XMREC_SEEDS, range(5), one_to_one_runs())


def xmrec_one_to_one_pairs() -> str:
    """Many-to-many `fedavg_id` against one-to-one transfer from each source, seeds 0-4."""
    pairs = [
        ("fedavg_id", f"transfer_id@{source}", f"many-to-many vs one-to-one from {source}")
        for source in ONE_TO_ONE_SOURCES
    ]
    return run_tables.pairs_over_seeds(XMREC_SEEDS, range(5), pairs, one_to_one_runs())


def full_synthetic() -> str:
    """The default's generator at the full budget (docs/results/full/)."""
    return run_tables.tables(run_tables.retested(FULL))


ML100K_SEEDS = RAW / "ml100k_seeds5"  # ml-100k regions (ml100k_regions.py), 8 methods, seeds 0-4
ML100K_PAIRS = [
    ("fecosr", "fecosr_no_s2ce", "S²CE vs CE, with the adaptation module"),
    ("fecosr_no_adapt", "fedavg_ce", "S²CE vs CE, plain fine-tuning"),
    ("fecosr", "fecosr_no_adapt", "adaptation module vs plain fine-tuning"),
    ("fecosr", "fedavg_ce", "all of FeCoSR vs plain FedAvg-CE"),
    ("fecosr", "fecosr_no_finetune", "fine-tuning vs none"),
    ("fecosr", "transfer", "federated vs one-to-one from the largest market"),
    ("fecosr", "centralized", "federated vs pooled data"),
]


def ml100k_seeds() -> str:
    """ml-100k regions over seeds 0-4 (docs/results/ml100k_seeds5/)."""
    return run_tables.over_seeds(ML100K_SEEDS, range(5))


def ml100k_seed_aware() -> str:
    """The seed-aware tests against `local` on ml-100k regions, seeds 0-4."""
    return run_tables.seed_aware_over_seeds(ML100K_SEEDS, range(5))


def ml100k_pairs() -> str:
    """The claims as method pairs on ml-100k regions, seeds 0-4."""
    return run_tables.pairs_over_seeds(ML100K_SEEDS, range(5), ML100K_PAIRS)


def ml100k_stops() -> str:
    """Where fine-tuning stopped on ml-100k regions, seeds 0-4."""
    return run_tables.stop_epochs(ML100K_SEEDS, range(5))


SASREC_SEEDS = RAW / "sasrec_seeds"  # the RecBole peer check (ml100k_sasrec.py), seeds 0-2


def sasrec_seeds() -> str:
    """The peer check per seed: `local` SASRec on all of ml-100k, test NDCG@10 and HR@10, the
    best validation NDCG@10 and its epoch, the epoch training stopped; then mean ± std."""
    seeds = range(3)
    lines = [
        row(["seed", "test NDCG@10", "test HR@10", "best valid (epoch)", "stopped after"]),
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    per_seed, ranks = run_tables.seed_runs(SASREC_SEEDS, seeds)
    (market,) = per_seed[0]["markets"]
    for s, results in zip(seeds, per_seed, strict=True):
        local = results["methods"]["local"][market]
        training = read_json(SASREC_SEEDS / f"seed_{s}" / "training.json")
        valid = training["validation"]["local"]["markets"][market]
        lines.append(
            row(
                [
                    s,
                    plain(local["ndcg@10"]),
                    plain(local["hr@10"]),
                    f"{valid:.4f} ({local['best_epoch']:.0f})",
                    f"{local['stop_epoch']:.0f}",
                ]
            )
        )
    together = results_lib.combine_seeds(per_seed, list(seeds), ranks)
    mean, std = together["methods"]["local"]["mean"], together["std"]["local"]["mean"]
    cells = [mean_std([mean[k], std[k]]) for k in ("ndcg@10", "hr@10")]
    lines.append(row(["mean ± std", *cells, "", ""]))
    return "\n".join(lines) + "\n"


SASREC_VARIANTS = RAW / "sasrec_variants"  # seed 0 of the peer check's config, one change each
# (folder, the change, its config fields); the first is the config itself, run alone
VARIANTS = (
    ("post_ln", "the config: post-LN, item IDs N(0, 1/64), lr 1e-3, batch 64, dropout 0.2", {}),
    ("pre_ln", "pre-LN", {"model.norm": "pre"}),
    ("pre_ln_id0.02", "pre-LN, IDs N(0, 0.02²)", {"model.norm": "pre", "model.item_id_std": 0.02}),
    ("post_ln_id0.02", "IDs N(0, 0.02²)", {"model.item_id_std": 0.02}),
    ("lr2e-3", "lr 2e-3", {"finetune.lr": 0.002}),
    ("lr3e-3", "lr 3e-3", {"finetune.lr": 0.003}),
    ("batch32", "batch 32", {"finetune.batch_size": 32}),
    ("dropout0.1", "dropout 0.1", {"model.dropout": 0.1}),
)  # fmt: skip


def sasrec_variants() -> str:
    """How the peer check's config was chosen: seed 0 with one change at a time, each a run of
    its own (docs/results/sasrec_variants/<name>/): test NDCG@10 and HR@10, the best
    validation NDCG@10 and its epoch, the epoch it stopped after.
    Refused (ValueError) where a run's config differs from the first's in more or less than
    its change (in a field that changes results: run_tables.config_changes)."""
    config = SASREC_VARIANTS / VARIANTS[0][0]
    lines = [
        row(["change (`--config.FIELD=VALUE`)", "test NDCG@10", "test HR@10",
             "best valid (epoch)", "stopped after"]),
        "| --- | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for name, label, change in VARIANTS:
        folder = SASREC_VARIANTS / name
        made = {k: mine for k, (mine, _) in run_tables.config_changes(folder, config).items()}
        if made != change:
            raise ValueError(f"{folder}/config.json: changes {made}, the table says {change}")
        results, training = (read_json(folder / f) for f in ("results.json", "training.json"))
        (market,) = results["markets"]
        local = results["methods"]["local"][market]
        valid = training["validation"]["local"]["markets"][market]
        fields = ", ".join(f"`{k}={v}`" for k, v in change.items())
        lines.append(
            row(
                [
                    f"{label} ({fields})" if change else label,
                    plain(local["ndcg@10"]),
                    plain(local["hr@10"]),
                    f"{valid:.4f} ({local['best_epoch']:.0f})",
                    f"{local['stop_epoch']:.0f}",
                ]
            )
        )
    return "\n".join(lines) + "\n"
