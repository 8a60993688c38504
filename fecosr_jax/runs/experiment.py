"""The experiment: `train_and_evaluate(config, workdir)`, and for a group of runs
`train_and_evaluate_group([(config, workdir), ...])` (fecosr_jax.runs.groups).

Loads the markets of `config.data`, splits and stacks them once, runs every method of
`config.methods` (fecosr_jax.runs.paradigms, trained by fecosr_jax.runs.runner) on the same
splits for every run of the group, and writes to each run's workdir: config.json, metrics.jsonl (one
line per pretraining round and fine-tuning epoch), TensorBoard events (tensorboard/),
results.json + results.md (per market x method, with the gain over `local`),
markets_ndcg10.png and curves.png.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from etils import epath

from fecosr_jax import distributed, evaluation, preemption, progress
from fecosr_jax.data import summary
from fecosr_jax.data.market import Market
from fecosr_jax.data.split import MarketSplit, StackedMarkets
from fecosr_jax.report import markdown
from fecosr_jax.report import results as results_lib
from fecosr_jax.runs import groups, inputs, paradigms, runner, typed_configs
from fecosr_jax.store import lease as lease_lib
from fecosr_jax.store import metrics_log, resume
from fecosr_jax.store import pretrained as pretrained_lib
from fecosr_jax.store.files import read_json, write_json_atomic


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every method of `config` on its markets; writes the outputs under `workdir`.

    With several seeds (config.seeds) each seed is a whole single-seed run with its own
    outputs and checkpoints in WORKDIR/seed_<s>/, and WORKDIR gets the combined results: mean
    and std over seeds, and per market a paired t-test against `local` on the per-user NDCG@10
    averaged over seeds. The seeds train together, `config.runs_per_step` at a time (0 = all),
    on a leading run axis of the same compiled programs. Resumes from the checkpoints when
    they exist (module fecosr_jax.store.checkpoint): finished methods and seeds are not run again,
    a method in progress continues from its newest good checkpoint, and a finished run only
    reports.

    Returns:
      The results dict written to workdir/results.json.

    Raises:
      resume.IncompatibleCheckpoint: the workdir holds a run with a different config.
      errors.NonFiniteError: a loss or parameter became non-finite (checkpoints intact).
      errors.Preempted: SIGTERM or Ctrl-C; the last step was saved (exit code EXIT_PREEMPTED).
    """
    return train_and_evaluate_group([(config, workdir)])[0]


def train_and_evaluate_group(points: list[tuple[ml_collections.ConfigDict, str]]) -> list[dict]:
    """`train_and_evaluate` of several (config, workdir) points as one group: their runs
    (every seed of every point) train together on the run axis, so their configs may differ
    only in per-run values (fecosr_jax.runs.groups.VALUE_FIELDS; groups.GroupError names the
    field otherwise). Each point's outputs are exactly those of its own train_and_evaluate.

    Returns:
      Each point's results dict, in order.
    """
    for config, _ in points:
        typed_configs.check(config)
    metrics_log.code()  # the code as it is now, not when the run ends (training.json)
    workdirs = [str(w).rstrip("/") if "://" in str(w) else os.path.abspath(w) for _, w in points]
    if len(set(workdirs)) != len(workdirs):
        raise groups.GroupError(f"two runs of one group share a workdir: {sorted(workdirs)}")
    for config, workdir in points:
        inputs.check_layout(workdir, groups.parse_seeds(config))
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
        combined = results_lib.combine_seeds(
            per_seed, seeds, results_lib.pool_ranks(per_seed_ranks)
        )
        if distributed.is_primary():
            write_json_atomic(epath.Path(workdir) / "config.json", config.to_dict())
            table = markdown.write_results(workdir, combined, {}, plots=config.plots)
        else:
            table = markdown.results_markdown(combined)
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
    primary = distributed.is_primary()  # in a multi-process run, process 0 writes the files
    finished: dict[str, tuple[dict, dict]] = {}
    recorded: dict[str, dict] = {}  # a finished run's inputs (resume.INPUTS), by workdir
    runs: list[groups.Run] = []
    for run_config, workdir, label in zip(configs, workdirs, labels, strict=True):
        root = epath.Path(workdir)
        checkpoints = resume.RunCheckpoints(  # reads only: the run's input is not checked
            workdir,
            run_config.to_dict(),
            run_config.get("checkpoint", {"enabled": False}),
            writes=primary,
            start=False,
        )
        results_path, inputs_path = root / "results.json", root / resume.INPUTS
        if results_path.exists() and (checkpoints.progress["done"] or inputs_path.exists()):
            recorded[workdir] = (
                read_json(inputs_path)
                if inputs_path.exists()  # runs before it: their progress.json has the same
                else {k: checkpoints.progress.get(k) for k in ("config", "data")}
            )
            resume.check_finished(workdir, run_config.to_dict(), recorded[workdir])
            finished[workdir] = (
                read_json(results_path),
                checkpoints.progress["ranks"]
                if checkpoints.progress["done"]
                else results_lib.read_ranks(root / "ranks.npz"),
            )
            checkpoints.close()
            continue
        if results_path.exists() and not checkpoints.resuming:
            raise resume.IncompatibleCheckpoint(
                f"{results_path}: a run's results, with no record of its inputs (a run made "
                "with checkpoints off before runs recorded them). Use a new --workdir, or "
                "--overwrite to move it aside"
            )
        runs.append(groups.Run(run_config.seed, run_config, workdir, label, None, checkpoints))
    times = progress.PhaseTimes()
    # The data, and what depends on it, is checked before any workdir is touched: a finished
    # run's too, which only reports if the data are still those it was made from.
    with times.phase("loading"):
        markets, splits, stacked = inputs.load(config)
    data = resume.data_fingerprints(splits)
    if config.get("pretrained"):  # the model it starts from is an input too
        data[resume.PRETRAINED] = pretrained_lib.read(config.pretrained).meta["fingerprint"]
    for workdir, record in recorded.items():
        resume.compare_data(workdir, record["data"], data)
    for workdir in finished:
        print(f"{workdir}: this run has finished; its results:\n", flush=True)
        print((epath.Path(workdir) / "results.md").read_text(), flush=True)
    if not runs:
        return [finished[w] for w in workdirs]
    trainer = inputs.checked_runner(configs, markets, splits, stacked, times)
    for run in runs:
        run.checkpoints.check_data(data)
    # One writer per workdir: a second process on a live run's workdir stops here.
    acquired: list[lease_lib.Lease] = []
    try:
        for run in runs if primary else []:
            held = lease_lib.Lease(run.workdir)
            taken_over = held.acquire()
            acquired.append(held)
            if taken_over:
                print(taken_over, flush=True)
        _train(config, runs, markets, splits, stacked, trainer, times, finished)
    finally:
        for held in acquired:
            held.release()
    print(times.summary(), flush=True)
    return [finished[w] for w in workdirs]


def _train(
    config: ml_collections.ConfigDict,
    runs: list[groups.Run],
    markets: list[Market],
    splits: list[MarketSplit],
    stacked: StackedMarkets,
    trainer: runner.Runner,
    times: progress.PhaseTimes,
    finished: dict[str, tuple[dict, dict]],
) -> None:
    """Trains and evaluates the runs of a checked group, whose workdirs this process holds,
    and puts each run's (results, ranks) in `finished`."""
    primary = distributed.is_primary()
    names = trainer.finetuned  # the markets reported (config.data.finetune_markets)
    methods = trainer.methods
    for run in runs:
        if run.checkpoints.resuming:
            print(f"{run.workdir}: resuming from {run.checkpoints.root}", flush=True)
        if primary:
            epath.Path(run.workdir).mkdir(parents=True, exist_ok=True)
            write_json_atomic(epath.Path(run.workdir) / "config.json", run.config.to_dict())
        run.checkpoints.start()
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
        run.log = metrics_log.RunLog(
            run.workdir, tensorboard=config.tensorboard, writes=primary, label=run.label
        )
    try:
        with preemption.Handler():
            batches: dict[tuple, list[tuple[str, groups.Run]]] = {}  # program -> (method, run)
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
                key = trainer.program_key(method)
                batches.setdefault(key, []).extend((method, run) for run in todo)
            # Methods that fine-tune with one program train together, config.runs_per_step
            # (method, run) pairs at a time.
            steps = [
                chunk
                for items in batches.values()
                for chunk in groups.chunks(items, config.get("runs_per_step", 0))
            ]
            for i, chunk in enumerate(steps, 1):
                names_ = ", ".join(dict.fromkeys(m for m, _ in chunk))
                label = ", ".join(dict.fromkeys(r.label for _, r in chunk if r.label))
                print(
                    f"\n== [{i}/{len(steps)}] {names_}{f' ({label})' if label else ''}", flush=True
                )
                metrics = trainer.run(chunk)
                for method, run in chunk:
                    result = metrics[(method, run.workdir)]
                    ranks = _ranks_by_market(names, result.pop("ranks"))
                    table = results_lib.per_market_table(names, result)
                    run.checkpoints.finished_method(method, table, ranks=ranks)
                preemption.raise_if_requested(f"after {names_}")
    finally:
        for run in runs:
            if run.log is not None:
                run.log.close()
            run.checkpoints.close()
    evaluated = trainer.evaluated(stacked)
    with times.phase("evaluating"):
        pop = evaluation.evaluate_popularity(
            evaluated.train, evaluated.test_targets, evaluated.item_mask, with_ranks=True
        )
    pop_ranks = _ranks_by_market(names, pop.pop("ranks"))
    pop_table = results_lib.per_market_table(names, pop)
    for run in runs:
        finished[run.workdir] = _finish_run(run, methods, names, pop_table, pop_ranks, trainer)


def _finish_run(
    run: groups.Run,
    methods: list[str],
    names: list[str],
    pop_table: dict,
    pop_ranks: dict,
    trainer: runner.Runner,
) -> tuple[dict, dict]:
    """One run's results.json / results.md / ranks.npz / training.json / plots from its
    finished methods."""
    done = run.checkpoints.progress
    tables = {m: done["methods"][m] for m in methods if m in done["methods"]}
    ranks = {m: done["ranks"][m] for m in tables if m in done["ranks"]}
    ranks["popularity"] = pop_ranks
    done["ranks"]["popularity"] = pop_ranks  # saved with the finished run
    tables["popularity"] = pop_table
    trained = [m for m in tables if m != "popularity"]
    private = trainer.pretrainer.privacy_report(run, trained)
    results = results_lib.results(
        dataset=dataset_name(run.config),
        protocol="full" if run.config.eval.protocol == "full" else "sampled99",
        markets=names,
        methods=tables,
        ranks=ranks,
        skipped={m: done["skipped"][m] for m in methods if m in done["skipped"]},
        transfer_source=(
            trainer.pretrainer.transfer_source
            if paradigms.takes_the_default_source(tables)
            else None
        ),
        soft_labels=run.soft_labels,
        privacy=private or None,
        privacy_composed=trainer.pretrainer.composed_privacy(run, trained),
        newcomers=trainer.pretrainer.newcomer_markets(),
        pretrained=trainer.pretrainer.provenance(),
    )
    if distributed.is_primary():
        # The inputs first: results.json beside them marks the run finished.
        write_json_atomic(
            epath.Path(run.workdir) / resume.INPUTS,
            {k: run.checkpoints.progress[k] for k in ("config", "data")},
        )
        results_lib.write_ranks(epath.Path(run.workdir) / "ranks.npz", ranks)
        write_json_atomic(
            epath.Path(run.workdir) / metrics_log.TRAINING,
            {
                **metrics_log.training_record(run.log.lines),
                "time": trainer.times.record(),
                "host": metrics_log.host(),
                "code": metrics_log.code(),
            },
        )
        table = markdown.write_results(run.workdir, results, run.log.curves, plots=run.config.plots)
    else:
        table = markdown.results_markdown(results)
    run.checkpoints.finished_run()
    print("\n" + table, flush=True)
    return results, ranks
