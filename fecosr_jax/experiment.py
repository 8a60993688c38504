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


class Runner:
    """Runs the methods of one config on one set of splits, sharing pretrainings."""

    def __init__(
        self,
        config,
        splits,
        stacked,
        names,
        log: reporting.RunLog,
        checkpoints: checkpoint.RunCheckpoints,
    ):
        self.config, self.splits, self.stacked, self.names = config, splits, stacked, names
        self.log, self.checkpoints = log, checkpoints
        self.devices = jax.devices()
        self.mesh = fed_round.make_mesh(self.devices)
        self.model = model_config(config)
        self.fed = fed_config(config)
        self.pretrained: dict[str, tuple[ModelConfig, object, StackedMarkets]] = {}
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
    ):
        """Pretraining `kind` on the markets `names` (the rows of `stacked`)."""
        every = max(1, num_rounds // 10)

        def on_round(r, m):
            values = {
                "loss": reporting.clean(m["loss"]),
                "delta_cosine": reporting.clean(m["delta_cosine"]),
                "delta_agreement": reporting.clean(m["delta_agreement"]),
                "market_loss": {
                    n: reporting.clean(m["market_loss"][i]) for i, n in enumerate(names)
                },
                "market_drift": {
                    n: reporting.clean(m["market_drift"][i]) for i, n in enumerate(names)
                },
            }
            self.log.log(
                kind,
                "pretrain",
                r,
                values,
                curve="loss",
                progress=r % every == 0 or r == num_rounds,
            )

        semantic_dim = stacked.semantics.shape[-1]
        params = paradigms.initial_params(model, self.config.seed, semantic_dim)
        phase = f"pretrain_{kind}"
        return paradigms.run_rounds(
            model,
            fed,
            stacked,
            names,
            num_rounds,
            params,
            self.mesh,
            on_round,
            checkpoints=self.checkpoints.phase(phase),
            phase=phase,
        )

    def pretrain(self, kind: str, source: str | None = None):
        """(model config, shared params, stacked markets it was trained on) for a kind; the
        one-to-one kinds (source_*) pretrain on `source` (default config.transfer_source)."""
        source = source or self.transfer_source
        key = kind
        if kind.startswith("source_") and source != self.transfer_source:
            key = f"{kind}@{source}"  # its own name in the logs and checkpoints
        if key in self.pretrained:
            return self.pretrained[key]
        c, fed, multiple, names = self.config, self.fed, len(self.devices), self.names
        if kind in ("federated_s2ce", "federated_ce"):
            # CE is S²CE with alpha = 0: one compiled round serves both.
            federated = dataclasses.replace(fed, loss="s2ce")
            if kind == "federated_ce":
                federated = dataclasses.replace(federated, alpha=0.0)
            params = self._rounds(key, self.model, federated, self.stacked, names, c.num_rounds)
            out = (self.model, params, self.stacked)
        elif kind == "central_s2ce":
            pooled = paradigms.centralized_config(dataclasses.replace(fed, loss="s2ce"))
            out = (
                self.model,
                self._rounds(
                    key, self.model, pooled, self.stacked, names, c.num_rounds * fed.local_steps
                ),
                self.stacked,
            )
        elif kind == "source_s2ce":
            alone = stack_markets([self.splits[names.index(source)]], num_markets_multiple=multiple)
            s2ce = dataclasses.replace(fed, loss="s2ce")
            params = self._rounds(key, self.model, s2ce, alone, [source], c.num_rounds)
            out = (self.model, params, self.stacked)
        elif kind in ("federated_id_ce", "source_id_ce"):
            stacked = paradigms.id_stacked(self.splits, multiple)
            model = paradigms.id_model_config(self.model, stacked.item_mask.shape[1] - 1)
            ce = dataclasses.replace(fed, loss="ce")
            if kind == "federated_id_ce":
                params = self._rounds(key, model, ce, stacked, names, c.num_rounds)
            else:  # the source alone, over the same union vocabulary
                alone = paradigms.id_stacked(self.splits, multiple, keep=[names.index(source)])
                params = self._rounds(key, model, ce, alone, [source], c.num_rounds)
            out = (model, params, stacked)
        else:
            raise ValueError(f"unknown pretraining {kind!r}")
        self.pretrained[key] = out
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

    def run(self, method: str) -> dict[str, np.ndarray]:
        """Per-market test metrics [M] of one method, and "ranks" [M, U] (evaluation.evaluate)."""
        base, source = paradigms.split_method(method)
        spec = paradigms.SPECS[base]
        params = None
        if spec.pretraining is not None:
            model, params, stacked = self.pretrain(spec.pretraining, source)
        else:
            model, stacked = self._local_base()
        ev = self.config.eval
        evaluate = dict(
            batch_size=ev.batch_size,
            protocol=ev.protocol,
            mask_seen=ev.mask_seen,
            seed=self.config.seed,
            with_ranks=True,
        )
        if spec.finetune is None:
            return evaluation.evaluate(
                model,
                params,
                stacked.test_inputs,
                stacked.test_targets,
                stacked.semantics,
                stacked.item_mask,
                **evaluate,
            )
        ft = finetune_config(self.config, spec.finetune)
        model = finetune.model_config_for(model, ft, stacked.item_mask.shape[1] - 1)
        start = finetune.init_market_params(
            model, ft, params, stacked.num_markets, stacked.semantics.shape[-1]
        )
        real = len(self.names)

        def on_epoch(epoch, ndcg, loss, active):
            values = {
                "valid_ndcg@10": reporting.clean(np.mean(ndcg[:real])),
                "loss": reporting.clean(np.mean(loss[:real])),
                "markets_active": int(active[:real].sum()),
                "market_valid_ndcg@10": {
                    n: reporting.clean(ndcg[i]) for i, n in enumerate(self.names)
                },
            }
            self.log.log(method, "finetune", epoch, values, curve="valid_ndcg@10", progress=True)

        data = paradigms.finetune_data(stacked, self.fed)
        phase = f"finetune_{method}"
        result = finetune.finetune(
            model,
            ft,
            start,
            data,
            on_epoch=on_epoch,
            checkpoints=self.checkpoints.phase(phase, best=True),
            names=[*self.names, *(f"padding{i}" for i in range(stacked.num_markets - real))],
            phase=phase,
        )
        return evaluation.evaluate(
            model,
            result.params,
            stacked.test_inputs,
            stacked.test_targets,
            stacked.semantics,
            stacked.item_mask,
            per_market_params=True,
            **evaluate,
        )


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

    With several seeds (config.seeds) each seed runs in WORKDIR/seed_<s>/ (a whole single-seed
    run, with its own outputs and checkpoints) and WORKDIR gets the combined results: mean and
    std over seeds, and per market a paired t-test against `local` on the per-user NDCG@10
    averaged over seeds. Resumes from the checkpoints when they exist (module
    fecosr_jax.checkpoint): finished methods and seeds are not run again, a method in progress
    continues from its newest good checkpoint, and a finished run only reports.

    Returns:
      The results dict written to workdir/results.json.

    Raises:
      checkpoint.IncompatibleCheckpoint: the workdir holds a run with a different config.
      checkpoint.NonFiniteError: a loss or parameter became non-finite (checkpoints intact).
      checkpoint.Preempted: SIGTERM; the last step was saved (exit code EXIT_PREEMPTED).
    """
    seeds = parse_seeds(config)
    if len(seeds) == 1:
        return _run_seed(_with_seed(config, seeds[0]), workdir)[0]
    per_seed, per_seed_ranks = [], []
    for i, seed in enumerate(seeds, 1):
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        print(f"\n===== seed {seed} ({i} of {len(seeds)}): {seed_dir}", flush=True)
        results, seed_ranks = _run_seed(_with_seed(config, seed), seed_dir)
        per_seed.append(results)
        per_seed_ranks.append(seed_ranks)
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


def _run_seed(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, dict]:
    """One seed's run: (results dict, {method: {market: per-user test ranks}})."""
    methods = paradigms.parse_methods(config.methods)
    root = epath.Path(workdir)
    primary = distributed.is_primary()  # in a multi-process run, process 0 writes the files
    if primary:
        root.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoint.RunCheckpoints(
        workdir, config.to_dict(), config.get("checkpoint", {"enabled": False}), writes=primary
    )
    results_path = root / "results.json"
    if checkpoints.progress["done"] and results_path.exists():
        print(f"{workdir}: this run has finished; its results:\n", flush=True)
        print((root / "results.md").read_text(), flush=True)
        return json.loads(results_path.read_text()), checkpoints.progress["ranks"]
    if checkpoints.resuming:
        print(f"{workdir}: resuming from {checkpoints.root}", flush=True)
    if primary:
        reporting.write_json_atomic(root / "config.json", config.to_dict())
    markets, splits, stacked = prepare_markets(config, num_markets_multiple=len(jax.devices()))
    names = [m.name for m in markets]
    methods = paradigms.expand_sources(methods, names)
    print(summary.format_tables(markets), flush=True)
    soft_labels = {}
    if config.federated.alpha > 0 and any(paradigms.uses_s2ce(m) for m in methods):
        soft_labels = summary.soft_label_profiles(markets, config.federated.temperature)
        if soft_labels:
            print("\n" + summary.soft_labels_markdown(soft_labels), flush=True)
    log = reporting.RunLog(workdir, tensorboard=config.tensorboard, writes=primary)
    done = checkpoints.progress
    try:
        with checkpoint.PreemptionHandler():
            runner = Runner(config, splits, stacked, names, log, checkpoints)
            for method in methods:
                if method in done["methods"] or method in done["skipped"]:
                    print(f"{method}: finished before the resume", flush=True)
                    continue
                reason = paradigms.refusal(method, stacked, splits)
                if reason is not None:
                    print(f"skipping {method}: {reason}", flush=True)
                    checkpoints.finished_method(method, skipped=reason)
                    continue
                print(f"\n== {method}", flush=True)
                metrics = runner.run(method)
                ranks = _ranks_by_market(names, metrics.pop("ranks"))
                table = reporting.per_market_table(names, metrics)
                checkpoints.finished_method(method, table, ranks=ranks)
                checkpoint.raise_if_preempted(f"after {method}")
    finally:
        log.close()
        checkpoints.close()
    tables = {m: done["methods"][m] for m in methods if m in done["methods"]}
    pop = evaluation.evaluate_popularity(
        stacked.train, stacked.test_targets, stacked.item_mask, with_ranks=True
    )
    ranks = {m: done["ranks"][m] for m in tables if m in done["ranks"]}
    ranks["popularity"] = _ranks_by_market(names, pop.pop("ranks"))
    done["ranks"]["popularity"] = ranks["popularity"]  # saved with the finished run
    tables["popularity"] = reporting.per_market_table(names, pop)
    results = {
        "dataset": dataset_name(config),
        "protocol": "full" if config.eval.protocol == "full" else "sampled99",
        "markets": names,
        "methods": tables,
        "vs_local": reporting.comparison(tables, names, ranks=_as_arrays(ranks)),
        "skipped": {m: done["skipped"][m] for m in methods if m in done["skipped"]},
        "transfer_source": (
            runner.transfer_source
            if any(paradigms.split_method(m)[0] in paradigms.SOURCE_METHODS for m in tables)
            else None
        ),
        "soft_labels": soft_labels,
    }
    if primary:
        table = reporting.write_results(workdir, results, log.curves, plots=config.plots)
    else:
        table = reporting.results_markdown(results)
    checkpoints.finished_run()
    print("\n" + table, flush=True)
    return results, ranks
