"""The experiment runner: `train_and_evaluate(config, workdir)`.

Loads the markets of `config.data`, splits and stacks them once, runs every method of
`config.methods` (fecosr_jax.paradigms) on the same splits, and writes to the workdir:
config.json, metrics.jsonl (one line per pretraining round and fine-tuning epoch),
TensorBoard events (tensorboard/), results.json + results.md (per market x method, with the
gain over `local`), markets_ndcg10.png and curves.png.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from etils import epath

from fecosr_jax import checkpoint, distributed, evaluation, finetune, paradigms, reporting
from fecosr_jax.data import leave_one_out, stack_markets, summary, synthetic
from fecosr_jax.data.market import Market, MarketSplit, StackedMarkets
from fecosr_jax.data.sources import markets_from_config
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**config.synthetic.to_dict())


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    return ModelConfig(max_len=config.data.max_len, **config.model.to_dict())


def fed_config(config: ml_collections.ConfigDict) -> FedConfig:
    return FedConfig(seed=config.seed, **config.federated.to_dict())


def finetune_config(config: ml_collections.ConfigDict, mode: str) -> finetune.FinetuneConfig:
    return finetune.FinetuneConfig(
        mode=mode,
        seed=config.seed,
        eval_batch_size=config.eval.batch_size,
        **config.finetune.to_dict(),
    )


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


@dataclasses.dataclass
class Run:
    """One run of a group: a seed's config, workdir, log and checkpoints (its own outputs)."""

    seed: int
    config: ml_collections.ConfigDict
    workdir: str
    log: reporting.RunLog | None  # opened once the data has loaded
    checkpoints: checkpoint.RunCheckpoints


def _run_part(tree, i: int, grouped: bool):
    """Run i's part of a tree with a leading run axis (the tree itself for one run)."""
    return jax.tree.map(lambda x: x[i], tree) if grouped else tree


class Runner:
    """Runs the methods of one config on one set of splits, sharing pretrainings.

    Each call trains a group of runs (seeds) at once: one run as it always did, several on a
    leading run axis of the same compiled programs (fecosr_jax.federated.round), each run
    logging and checkpointing into its own workdir.
    """

    def __init__(self, config, splits, stacked, names):
        self.config, self.splits, self.stacked, self.names = config, splits, stacked, names
        self.devices = jax.devices()
        self.mesh = fed_round.make_mesh(self.devices)
        self.model = model_config(config)
        self.fed = fed_config(config)
        self.pretrained: dict[tuple, tuple[ModelConfig, object, StackedMarkets]] = {}
        self.transfer_source = config.transfer_source or names[paradigms.default_source(stacked)]
        if self.transfer_source not in names:
            raise ValueError(
                f"config.transfer_source={config.transfer_source!r} is not a market "
                f"of this dataset ({', '.join(names)})"
            )

    def _rounds(
        self,
        kind: str,
        model: ModelConfig,
        fed: FedConfig,
        stacked,
        names: list[str],
        num_rounds: int,
        runs: list[Run],
    ):
        """Pretraining `kind` of `runs` on the markets `names` (the rows of `stacked`)."""
        every = max(1, num_rounds // 10)
        grouped = len(runs) > 1

        def on_round(r, metrics):
            for i, run in enumerate(runs):
                m = _run_part(metrics, i, grouped)
                values = {
                    "loss": reporting.clean(m["loss"]),
                    "delta_cosine": reporting.clean(m["delta_cosine"]),
                    "delta_agreement": reporting.clean(m["delta_agreement"]),
                    "market_loss": {
                        n: reporting.clean(m["market_loss"][j]) for j, n in enumerate(names)
                    },
                    "market_drift": {
                        n: reporting.clean(m["market_drift"][j]) for j, n in enumerate(names)
                    },
                }
                run.log.log(
                    kind,
                    "pretrain",
                    r,
                    values,
                    curve="loss",
                    progress=r % every == 0 or r == num_rounds,
                )

        semantic_dim = stacked.semantics.shape[-1]
        starts = [paradigms.initial_params(model, run.seed, semantic_dim) for run in runs]
        feds = [dataclasses.replace(fed, seed=run.seed) for run in runs]
        phase = f"pretrain_{kind}"
        phases = [run.checkpoints.phase(phase) for run in runs]
        return paradigms.run_rounds(
            model,
            feds[0],
            stacked,
            names,
            num_rounds,
            fed_round.stack_runs(starts) if grouped else starts[0],
            self.mesh,
            on_round,
            checkpoints=checkpoint.GroupPhase(phases) if grouped else phases[0],
            phase=phase,
            values=fed_round.stack_runs([f.values() for f in feds]) if grouped else None,
            run_names=[f"seed {run.seed}" for run in runs],
        )

    def pretrain(self, kind: str, source: str | None, runs: list[Run]):
        """(model config, shared params, stacked markets it was trained on) for a kind and a
        group of runs (params [R, ...] for several); the one-to-one kinds (source_*) pretrain
        on `source` (default config.transfer_source)."""
        source = source or self.transfer_source
        key = kind
        if kind.startswith("source_") and source != self.transfer_source:
            key = f"{kind}@{source}"  # its own name in the logs and checkpoints
        cache_key = (key, tuple(run.seed for run in runs))
        if cache_key in self.pretrained:
            return self.pretrained[cache_key]
        c, fed, multiple, names = self.config, self.fed, len(self.devices), self.names

        def rounds(model, fed, stacked, names, num_rounds):
            return self._rounds(key, model, fed, stacked, names, num_rounds, runs)

        if kind in ("federated_s2ce", "federated_ce"):
            # CE is S²CE with alpha = 0: one compiled round serves both.
            federated = dataclasses.replace(fed, loss="s2ce")
            if kind == "federated_ce":
                federated = dataclasses.replace(federated, alpha=0.0)
            params = rounds(self.model, federated, self.stacked, names, c.num_rounds)
            out = (self.model, params, self.stacked)
        elif kind == "central_s2ce":
            pooled = paradigms.centralized_config(dataclasses.replace(fed, loss="s2ce"))
            params = rounds(self.model, pooled, self.stacked, names, c.num_rounds * fed.local_steps)
            out = (self.model, params, self.stacked)
        elif kind == "source_s2ce":
            alone = stack_markets([self.splits[names.index(source)]], num_markets_multiple=multiple)
            s2ce = dataclasses.replace(fed, loss="s2ce")
            params = rounds(self.model, s2ce, alone, [source], c.num_rounds)
            out = (self.model, params, self.stacked)
        elif kind in ("federated_id_ce", "source_id_ce"):
            stacked = paradigms.id_stacked(self.splits, multiple)
            model = paradigms.id_model_config(self.model, stacked.item_mask.shape[1] - 1)
            ce = dataclasses.replace(fed, loss="ce")
            if kind == "federated_id_ce":
                params = rounds(model, ce, stacked, names, c.num_rounds)
            else:  # the source alone, over the same union vocabulary
                alone = paradigms.id_stacked(self.splits, multiple, keep=[names.index(source)])
                params = rounds(model, ce, alone, [source], c.num_rounds)
            out = (model, params, stacked)
        else:
            raise ValueError(f"unknown pretraining {kind!r}")
        self.pretrained[cache_key] = out
        return out

    def _local_base(self):
        """Architecture and data of `local`: the text model, or ID-only without semantics."""
        if self.stacked.semantics is not None:
            return self.model, self.stacked
        n = self.stacked.item_mask.shape[1] - 1
        zeros = np.zeros((*self.stacked.item_mask.shape, 1), np.float32)
        return (
            paradigms.id_model_config(self.model, n),
            dataclasses.replace(self.stacked, semantics=zeros),
        )

    def run(self, method: str, runs: list[Run]) -> list[dict[str, np.ndarray]]:
        """Per-market test metrics [M] of one method for each run of the group, with "ranks"
        [M, U] (evaluation.evaluate)."""
        base, source = paradigms.split_method(method)
        spec = paradigms.SPECS[base]
        grouped = len(runs) > 1
        params = None
        if spec.pretraining is not None:
            model, params, stacked = self.pretrain(spec.pretraining, source, runs)
        else:
            model, stacked = self._local_base()
        ev = self.config.eval
        seeds = [run.seed for run in runs]
        evaluate = dict(
            batch_size=ev.batch_size,
            protocol=ev.protocol,
            mask_seen=ev.mask_seen,
            seed=np.asarray(seeds, np.int32) if grouped else seeds[0],
            with_ranks=True,
        )
        test = (stacked.test_inputs, stacked.test_targets, stacked.semantics, stacked.item_mask)
        if spec.finetune is None:
            metrics = evaluation.evaluate(model, params, *test, **evaluate)
            return [_run_part(metrics, i, grouped) for i in range(len(runs))]
        fts = [
            dataclasses.replace(finetune_config(self.config, spec.finetune), seed=s) for s in seeds
        ]
        model = finetune.model_config_for(model, fts[0], stacked.item_mask.shape[1] - 1)
        starts = [
            finetune.init_market_params(
                model,
                ft,
                None if params is None else _run_part(params, i, grouped),
                stacked.num_markets,
                stacked.semantics.shape[-1],
            )
            for i, ft in enumerate(fts)
        ]
        real = len(self.names)

        def on_epoch(epoch, ndcg, loss, active):
            for i, run in enumerate(runs):
                n, lo, a = (_run_part(x, i, grouped) for x in (ndcg, loss, active))
                values = {
                    "valid_ndcg@10": reporting.clean(np.mean(n[:real])),
                    "loss": reporting.clean(np.mean(lo[:real])),
                    "markets_active": int(a[:real].sum()),
                    "market_valid_ndcg@10": {
                        name: reporting.clean(n[j]) for j, name in enumerate(self.names)
                    },
                }
                run.log.log(method, "finetune", epoch, values, curve="valid_ndcg@10", progress=True)

        data = paradigms.finetune_data(stacked, self.fed)
        phase = f"finetune_{method}"
        phases = [run.checkpoints.phase(phase, best=True) for run in runs]
        result = finetune.finetune(
            model,
            fts[0],
            fed_round.stack_runs(starts) if grouped else starts[0],
            data,
            on_epoch=on_epoch,
            checkpoints=checkpoint.GroupPhase(phases) if grouped else phases[0],
            names=[*self.names, *(f"padding{i}" for i in range(stacked.num_markets - real))],
            phase=phase,
            values=fed_round.stack_runs([ft.values() for ft in fts]) if grouped else None,
            run_names=[f"seed {s}" for s in seeds],
        )
        metrics = evaluation.evaluate(
            model, result.params, *test, per_market_params=True, **evaluate
        )
        return [_run_part(metrics, i, grouped) for i in range(len(runs))]


def parse_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """config.seeds: a count N (seeds config.seed ... config.seed + N - 1) or a comma-separated
    list of seeds ("0,4,7"; one seed: "7,")."""
    text = str(config.get("seeds", "1")).strip()
    try:
        if "," in text:
            seeds = [int(x) for x in text.split(",") if x.strip()]
        else:
            seeds = list(range(config.seed, config.seed + int(text)))
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"config.seeds={text!r}: expected a count of seeds (--config.seeds=3) or a "
            "comma-separated list of distinct seeds (--config.seeds=0,1,2)"
        )
    return seeds


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
    seeds = parse_seeds(config)
    runs_per_step = config.get("runs_per_step", 0)
    if not isinstance(runs_per_step, int) or runs_per_step < 0:
        raise ValueError(
            f"config.runs_per_step={runs_per_step!r}: expected 0 (every seed at once) or a "
            "positive number of seeds trained together"
        )
    if len(seeds) == 1:
        return _run_group(config, seeds, [workdir])[0][0]
    dirs = [os.path.join(workdir, f"seed_{seed}") for seed in seeds]
    print(
        f"===== {len(seeds)} seeds ({', '.join(map(str, seeds))}), each in its own folder: "
        + ", ".join(dirs),
        flush=True,
    )
    finished = _run_group(config, seeds, dirs)
    per_seed = [results for results, _ in finished]
    per_seed_ranks = [ranks for _, ranks in finished]
    combined = reporting.combine_seeds(per_seed, seeds, reporting.pool_ranks(per_seed_ranks))
    if distributed.is_primary():
        reporting.write_json_atomic(epath.Path(workdir) / "config.json", config.to_dict())
        table = reporting.write_results(workdir, combined, {}, plots=config.plots)
    else:
        table = reporting.results_markdown(combined)
    print(f"\n===== {len(seeds)} seeds\n\n" + table, flush=True)
    return combined


def _with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of one seed's run."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.seed = seed
    config.seeds = "1"
    return config


def _chunks(items: list, size: int) -> list[list]:
    """items in consecutive groups of `size` (0 = one group)."""
    size = size or len(items) or 1
    return [items[i : i + size] for i in range(0, len(items), size)]


def _run_group(
    config: ml_collections.ConfigDict, seeds: list[int], workdirs: list[str]
) -> list[tuple[dict, dict]]:
    """The runs of `seeds` (one workdir each): [(results dict, {method: {market: per-user test
    ranks}})], one per seed. Finished runs only report; the others train their methods
    together, config.runs_per_step runs at a time."""
    methods = paradigms.parse_methods(config.methods)
    primary = distributed.is_primary()  # in a multi-process run, process 0 writes the files
    finished: dict[int, tuple[dict, dict]] = {}
    runs: list[Run] = []
    for seed, workdir in zip(seeds, workdirs, strict=True):
        run_config = _with_seed(config, seed)
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
            finished[seed] = (json.loads(results_path.read_text()), checkpoints.progress["ranks"])
            checkpoints.close()
            continue
        if checkpoints.resuming:
            print(f"{workdir}: resuming from {checkpoints.root}", flush=True)
        if primary:
            reporting.write_json_atomic(root / "config.json", run_config.to_dict())
        runs.append(Run(seed, run_config, workdir, None, checkpoints))
    if not runs:
        return [finished[seed] for seed in seeds]
    markets, splits, stacked = prepare_markets(config, num_markets_multiple=len(jax.devices()))
    names = [m.name for m in markets]
    methods = paradigms.expand_sources(methods, names)
    print(summary.format_tables(markets), flush=True)
    soft_labels = {}
    if config.federated.alpha > 0 and any(paradigms.uses_s2ce(m) for m in methods):
        soft_labels = summary.soft_label_profiles(markets, config.federated.temperature)
        if soft_labels:
            print("\n" + summary.soft_labels_markdown(soft_labels), flush=True)
    several = len(seeds) > 1
    for run in runs:
        run.log = reporting.RunLog(
            run.workdir,
            tensorboard=config.tensorboard,
            writes=primary,
            label=f"seed {run.seed}" if several else "",
        )
    try:
        with checkpoint.PreemptionHandler():
            runner = Runner(config, splits, stacked, names)
            for method in methods:
                todo = []
                for run in runs:
                    done = run.checkpoints.progress
                    if method in done["methods"] or method in done["skipped"]:
                        label = f"seed {run.seed}: " if several else ""
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
                for group in _chunks(todo, config.get("runs_per_step", 0)):
                    label = f" (seeds {', '.join(str(r.seed) for r in group)})" if several else ""
                    print(f"\n== {method}{label}", flush=True)
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
        finished[run.seed] = _finish_run(
            run, methods, names, pop_table, pop_ranks, runner.transfer_source, soft_labels
        )
    return [finished[seed] for seed in seeds]


def _finish_run(
    run: Run,
    methods: list[str],
    names: list[str],
    pop_table: dict,
    pop_ranks: dict,
    transfer_source: str,
    soft_labels: dict,
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
        "soft_labels": soft_labels,
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
