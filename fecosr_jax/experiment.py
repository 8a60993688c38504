"""The experiment: `train_and_evaluate(config, workdir)`, and for a group of runs
`train_and_evaluate_group([(config, workdir), ...])` (fecosr_jax.groups).

Loads the markets of `config.data`, splits and stacks them once, runs every method of
`config.methods` (fecosr_jax.paradigms, trained by fecosr_jax.runner) on the same splits for
every run of the group, and writes to each run's workdir: config.json, metrics.jsonl (one
line per pretraining round and fine-tuning epoch), TensorBoard events (tensorboard/),
results.json + results.md (per market x method, with the gain over `local`),
markets_ndcg10.png and curves.png.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from etils import epath

from fecosr_jax import checkpoint, distributed, evaluation, groups, paradigms, reporting
from fecosr_jax.data import leave_one_out, stack_markets, summary, synthetic
from fecosr_jax.data.market import Market, MarketSplit, StackedMarkets
from fecosr_jax.data.sources import markets_from_config
from fecosr_jax.runner import Run, Runner


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**config.synthetic.to_dict())


def prepare_markets(
    config: ml_collections.ConfigDict, *, num_markets_multiple: int = 1
) -> tuple[list[Market], list[MarketSplit], StackedMarkets]:
    """Loads the markets of `config.data`, splits them and stacks them on the market axis."""
    markets = markets_from_config(config.data, synthetic_config(config))
    splits = [
        leave_one_out(
            m,
            config.data.max_len,
            min_interactions=config.data.min_interactions,
            train_windows=config.data.train_windows,
        )
        for m in markets
    ]
    return markets, splits, stack_markets(splits, num_markets_multiple=num_markets_multiple)


def dataset_name(config: ml_collections.ConfigDict) -> str:
    if config.data.format == "synthetic":
        s = config.synthetic
        return (
            f"synthetic (M={s.num_markets}, overlap={s.overlap}, "
            f"heterogeneity={s.heterogeneity}, seed={s.seed})"
        )
    return f"{config.data.format}: {os.path.basename(str(config.data.path).rstrip('/'))}"


def _ranks_by_market(names: list[str], ranks: np.ndarray) -> dict[str, list[int]]:
    """[M, U] ranks (-1 = no user) -> {market: its test users' ranks, in order}."""
    return {n: [int(r) for r in ranks[i] if r >= 0] for i, n in enumerate(names)}


def _as_arrays(ranks: dict) -> dict:
    return {m: {n: np.asarray(v) for n, v in by.items()} for m, by in ranks.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every method of `config` on its markets; writes the outputs under `workdir`.

    With several seeds (config.seeds) each seed is a whole single-seed run with its own
    outputs and checkpoints in WORKDIR/seed_<s>/, and WORKDIR gets the combined results: mean
    and std over seeds, and per market a paired t-test against `local` on the per-user NDCG@10
    averaged over seeds. The seeds train together, `config.runs_per_step` at a time (0 = all),
    on a leading run axis of the same compiled programs. Resumes from the checkpoints when
    they exist (module fecosr_jax.checkpoint): finished methods and seeds are not run again,
    a method in progress continues from its newest good checkpoint, and a finished run only
    reports.

    Returns:
      The results dict written to workdir/results.json.

    Raises:
      checkpoint.IncompatibleCheckpoint: the workdir holds a run with a different config.
      checkpoint.NonFiniteError: a loss or parameter became non-finite (checkpoints intact).
      checkpoint.Preempted: SIGTERM; the last step was saved (exit code EXIT_PREEMPTED).
    """
    return train_and_evaluate_group([(config, workdir)])[0]


def train_and_evaluate_group(points: list[tuple[ml_collections.ConfigDict, str]]) -> list[dict]:
    """`train_and_evaluate` of several (config, workdir) points as one group: their runs
    (every seed of every point) train together on the run axis, so their configs may differ
    only in per-run values (fecosr_jax.groups.VALUE_FIELDS; groups.GroupError names the
    field otherwise). Each point's outputs are exactly those of its own train_and_evaluate.

    Returns:
      Each point's results dict, in order.
    """
    runs_per_step = points[0][0].get("runs_per_step", 0)
    if not isinstance(runs_per_step, int) or runs_per_step < 0:
        raise ValueError(
            f"config.runs_per_step={runs_per_step!r}: expected 0 (every run at once) or a "
            "positive number of runs trained together"
        )
    workdirs = [str(w).rstrip("/") if "://" in str(w) else os.path.abspath(w) for _, w in points]
    if len(set(workdirs)) != len(workdirs):
        raise groups.GroupError(f"two runs of one group share a workdir: {sorted(workdirs)}")
    several_points = len(points) > 1
    expanded = []  # (config of one seed, workdir, label), per point its seeds
    point_seeds = []
    for config, workdir in points:
        seeds = groups.parse_seeds(config)
        point_seeds.append(seeds)
        name = os.path.basename(os.path.normpath(workdir)) if several_points else ""
        if len(seeds) == 1:
            expanded.append((groups.with_seed(config, seeds[0]), workdir, name))
            continue
        dirs = [os.path.join(workdir, f"seed_{seed}") for seed in seeds]
        print(
            f"===== {len(seeds)} seeds ({', '.join(map(str, seeds))}), each in its own folder: "
            + ", ".join(dirs),
            flush=True,
        )
        expanded += [
            (groups.with_seed(config, s), d, f"{name} seed {s}".strip())
            for s, d in zip(seeds, dirs, strict=True)
        ]
    configs, run_dirs, labels = (list(x) for x in zip(*expanded, strict=True))
    groups.check_group(configs, labels)
    finished = iter(_run_group(configs, run_dirs, labels))
    out = []
    for (config, workdir), seeds in zip(points, point_seeds, strict=True):
        mine = [next(finished) for _ in seeds]
        if len(seeds) == 1:
            out.append(mine[0][0])
            continue
        per_seed = [results for results, _ in mine]
        per_seed_ranks = [ranks for _, ranks in mine]
        combined = reporting.combine_seeds(per_seed, seeds, reporting.pool_ranks(per_seed_ranks))
        if distributed.is_primary():
            reporting.write_json_atomic(epath.Path(workdir) / "config.json", config.to_dict())
            table = reporting.write_results(workdir, combined, {}, plots=config.plots)
        else:
            table = reporting.results_markdown(combined)
        print(f"\n===== {workdir}: {len(seeds)} seeds\n\n" + table, flush=True)
        out.append(combined)
    return out


def _run_group(
    configs: list[ml_collections.ConfigDict], workdirs: list[str], labels: list[str]
) -> list[tuple[dict, dict]]:
    """The runs of one group (a single-seed config, a workdir and a label for its log lines
    each): [(results dict, {method: {market: per-user test ranks}})], one per run. Finished
    runs only report; the others train their methods together, config.runs_per_step runs at
    a time."""
    config = configs[0]  # what the runs share: data, sizes, methods
    methods = paradigms.parse_methods(config.methods)
    primary = distributed.is_primary()  # in a multi-process run, process 0 writes the files
    finished: dict[str, tuple[dict, dict]] = {}
    runs: list[Run] = []
    for run_config, workdir, label in zip(configs, workdirs, labels, strict=True):
        root = epath.Path(workdir)
        if primary:
            root.mkdir(parents=True, exist_ok=True)
        checkpoints = checkpoint.RunCheckpoints(
            workdir,
            run_config.to_dict(),
            run_config.get("checkpoint", {"enabled": False}),
            writes=primary,
        )
        results_path = root / "results.json"
        if checkpoints.progress["done"] and results_path.exists():
            print(f"{workdir}: this run has finished; its results:\n", flush=True)
            print((root / "results.md").read_text(), flush=True)
            finished[workdir] = (
                json.loads(results_path.read_text()),
                checkpoints.progress["ranks"],
            )
            checkpoints.close()
            continue
        if checkpoints.resuming:
            print(f"{workdir}: resuming from {checkpoints.root}", flush=True)
        if primary:
            reporting.write_json_atomic(root / "config.json", run_config.to_dict())
        runs.append(Run(run_config.seed, run_config, workdir, label, None, checkpoints))
    if not runs:
        return [finished[w] for w in workdirs]
    markets, splits, stacked = prepare_markets(config, num_markets_multiple=len(jax.devices()))
    names = [m.name for m in markets]
    methods = paradigms.expand_sources(methods, names)
    print(summary.format_tables(markets), flush=True)
    profiles: dict[float, dict] = {}  # soft-label profiles per tau_s
    for run in runs:
        fed = run.config.federated
        if fed.alpha > 0 and any(paradigms.uses_s2ce(m) for m in methods):
            if fed.temperature not in profiles:
                profiles[fed.temperature] = summary.soft_label_profiles(markets, fed.temperature)
                if profiles[fed.temperature]:
                    print(
                        "\n" + summary.soft_labels_markdown(profiles[fed.temperature]), flush=True
                    )
            run.soft_labels = profiles[fed.temperature]
        run.log = reporting.RunLog(
            run.workdir, tensorboard=config.tensorboard, writes=primary, label=run.label
        )
    try:
        with checkpoint.PreemptionHandler():
            runner = Runner(config, splits, stacked, names, methods)
            for method in methods:
                todo = []
                for run in runs:
                    done = run.checkpoints.progress
                    if method in done["methods"] or method in done["skipped"]:
                        label = f"{run.label}: " if run.label else ""
                        print(f"{label}{method}: finished before the resume", flush=True)
                    else:
                        todo.append(run)
                if not todo:
                    continue
                reason = paradigms.refusal(method, stacked, splits)
                if reason is not None:
                    print(f"skipping {method}: {reason}", flush=True)
                    for run in todo:
                        run.checkpoints.finished_method(method, skipped=reason)
                    continue
                for group in groups.chunks(todo, config.get("runs_per_step", 0)):
                    label = ", ".join(r.label for r in group if r.label)
                    print(f"\n== {method}{f' ({label})' if label else ''}", flush=True)
                    for run, metrics in zip(group, runner.run(method, group), strict=True):
                        ranks = _ranks_by_market(names, metrics.pop("ranks"))
                        table = reporting.per_market_table(names, metrics)
                        run.checkpoints.finished_method(method, table, ranks=ranks)
                checkpoint.raise_if_preempted(f"after {method}")
    finally:
        for run in runs:
            if run.log is not None:
                run.log.close()
            run.checkpoints.close()
    pop = evaluation.evaluate_popularity(
        stacked.train, stacked.test_targets, stacked.item_mask, with_ranks=True
    )
    pop_ranks = _ranks_by_market(names, pop.pop("ranks"))
    pop_table = reporting.per_market_table(names, pop)
    for run in runs:
        finished[run.workdir] = _finish_run(
            run, methods, names, pop_table, pop_ranks, runner.transfer_source
        )
    return [finished[w] for w in workdirs]


def _finish_run(
    run: Run,
    methods: list[str],
    names: list[str],
    pop_table: dict,
    pop_ranks: dict,
    transfer_source: str,
) -> tuple[dict, dict]:
    """One run's results.json / results.md / plots from its finished methods."""
    done = run.checkpoints.progress
    tables = {m: done["methods"][m] for m in methods if m in done["methods"]}
    ranks = {m: done["ranks"][m] for m in tables if m in done["ranks"]}
    ranks["popularity"] = pop_ranks
    done["ranks"]["popularity"] = pop_ranks  # saved with the finished run
    tables["popularity"] = pop_table
    results = {
        "dataset": dataset_name(run.config),
        "protocol": "full" if run.config.eval.protocol == "full" else "sampled99",
        "markets": names,
        "methods": tables,
        "vs_local": reporting.comparison(tables, names, ranks=_as_arrays(ranks)),
        "skipped": {m: done["skipped"][m] for m in methods if m in done["skipped"]},
        "transfer_source": (
            transfer_source
            if any(paradigms.split_method(m)[0] in paradigms.SOURCE_METHODS for m in tables)
            else None
        ),
        "soft_labels": run.soft_labels,
    }
    if distributed.is_primary():
        table = reporting.write_results(
            run.workdir, results, run.log.curves, plots=run.config.plots
        )
    else:
        table = reporting.results_markdown(results)
    run.checkpoints.finished_run()
    print("\n" + table, flush=True)
    return results, ranks
