"""The one registry of the documents' tables and figures: every table of README.md, docs/results.md
and docs/benchmarks.md that is regenerated from raw files, by the name its block carries
(`<!-- table NAME: python -m experiments.tables NAME -->`), and every figure of docs/results/.
A new table is a function in the module of its study and one line here."""

from __future__ import annotations

import functools
from collections.abc import Callable

from experiments.tables import bench as bench_tables
from experiments.tables import bench_h200, bench_runs, families, newcomers
from experiments.tables import privacy as privacy_tables
from experiments.tables import results as results_tables
from experiments.tables import sweeps as sweep_tables

TABLES: dict[str, Callable[[], str]] = {
    "readme_main_job": results_tables.readme_main_job,
    "default_synthetic": results_tables.default_synthetic,
    "full_synthetic": results_tables.full_synthetic,
    "default_seeds": results_tables.default_seeds,
    "default_seeds_seed_aware": results_tables.default_seeds_seed_aware,
    "default_seeds_pairs": results_tables.default_seeds_pairs,
    "default_seeds_stopping": results_tables.default_seeds_stopping,
    "xmrec_seeds": results_tables.xmrec_seeds,
    "xmrec_stops": results_tables.xmrec_stops,
    "xmrec_one_to_one": results_tables.xmrec_one_to_one,
    "xmrec_one_to_one_pairs": results_tables.xmrec_one_to_one_pairs,
    "xmrec_one_to_one_seed_aware": results_tables.xmrec_one_to_one_seed_aware,
    "xmrec_one_to_one_stops": results_tables.xmrec_one_to_one_stops,
    "ml100k_seeds": results_tables.ml100k_seeds,
    "ml100k_pairs": results_tables.ml100k_pairs,
    "ml100k_seed_aware": results_tables.ml100k_seed_aware,
    "ml100k_stops": results_tables.ml100k_stops,
    "sasrec_seeds": results_tables.sasrec_seeds,
    "sasrec_variants": results_tables.sasrec_variants,
    "claim2_gains": sweep_tables.claim2_gains,
    "claim2_significance": sweep_tables.claim2_significance,
    "claim2_seeds": sweep_tables.claim2_seeds,
    "s2ce_family": families.s2ce_family,
    "alpha_first_look": sweep_tables.alpha_first_look,
    "alpha_seeds": sweep_tables.alpha_seeds,
    "alpha_ml100k": sweep_tables.alpha_ml100k,
    "soft_labels_ml100k": sweep_tables.soft_labels_ml100k,
    "stopping": sweep_tables.stopping,
    "newcomers_default": newcomers.newcomers_default,
    "newcomers_xmrec": newcomers.newcomers_xmrec,
    "newcomers_ml100k": newcomers.newcomers_ml100k,
    **{name: functools.partial(privacy_tables.probe_table, name) for name in privacy_tables.PROBES},
    **{name: functools.partial(privacy_tables.curve_table, name) for name in privacy_tables.CURVES},
    "bench_round_reference": bench_tables.bench_round_reference,
    "bench_round_reference_scan": bench_tables.bench_round_reference_scan,
    "bench_round_small": bench_tables.bench_round_small,
    "bench_scaling_small": bench_tables.bench_scaling_small,
    "bench_s2ce": bench_tables.bench_s2ce,
    "bench_dp": bench_tables.bench_dp,
    "bench_dp_2026_12_07": functools.partial(bench_tables.bench_dp, "2026-12-07"),
    "bench_dropout": bench_tables.bench_dropout,
    "bench_main_job": functools.partial(bench_tables.bench_main_job, "2026-11-30"),
    "bench_main_job_2026_12_06": functools.partial(bench_tables.bench_main_job, "2026-12-06"),
    "bench_main_job_2026_12_06b": functools.partial(bench_tables.bench_main_job, "2026-12-06b"),
    "bench_accountant": bench_tables.bench_accountant,
    "bench_soak": bench_tables.bench_soak,
    "bench_newcomer": bench_tables.bench_newcomer,
    "bench_runs_seeds": bench_runs.bench_runs_seeds,
    "bench_runs_sweep": bench_runs.bench_runs_sweep,
    "bench_runs_axis_cpu": bench_runs.bench_runs_axis_cpu,
    "bench_groups_seeds": bench_runs.bench_groups_seeds,
    "bench_groups_sweep": bench_runs.bench_groups_sweep,
    "bench_groups_synthetic": bench_runs.bench_groups_synthetic,
    "bench_epsilon_sweep": bench_runs.bench_epsilon_sweep,
    "bench_h200_small": bench_h200.bench_h200_small,
    "bench_h200_reference_bf16": bench_h200.bench_h200_reference_bf16,
}

# docs/results/NAME.png -> a function that draws it there.
FIGURES: dict[str, Callable] = {
    "default_seeds_ndcg10.png": results_tables.default_seeds_figure,
    **{
        f"{name}.png": functools.partial(privacy_tables.curve_figure, name)
        for name in privacy_tables.CURVES
    },
}
