"""The runner: trains methods for a group of runs (fecosr_jax.runs.groups) on one set of splits.

`Runner.run(items)` takes (method, run) pairs whose methods fine-tune with one compiled
program (`Runner.program_key`: the same fine-tuning mode, architecture and markets): it
pretrains what they need (fecosr_jax.runs.paradigms.SPECS: federated, pooled or from one source
market), then fine-tunes and evaluates every pair together on a leading run axis of the same
compiled programs (fecosr_jax.federated.round, fecosr_jax.finetune.loop, fecosr_jax.evaluation),
and returns each pair's per-market test metrics. Each run logs and checkpoints into its own
workdir, each method under its own name.

What would be computed twice is computed once. Pairs that a method would train identically
share one training: `local` does not read S²CE's alpha, and CE pretraining (alpha = 0) does
not either, so in a sweep over alpha each seed's `local` and CE pretraining are trained for
one run and given to the others (their log lines and results too; the checkpoints are the
trained run's). Pretrainings are kept per run, so methods that share one (fecosr,
fecosr_no_adapt, fecosr_no_finetune) train it once, and S²CE and CE pretraining, one round's
program, train together (paradigms.share_a_round).
Pretraining is fecosr_jax.runs.pretraining's `Pretrainer`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from fecosr_jax import evaluation, mesh, progress
from fecosr_jax.data.split import StackedMarkets, select_markets
from fecosr_jax.federated import round as fed_round
from fecosr_jax.finetune import loop as finetune_loop
from fecosr_jax.finetune.config import model_config_for
from fecosr_jax.model import ModelConfig
from fecosr_jax.runs import groups, paradigms, pretraining, typed_configs
from fecosr_jax.store import checkpoint
from fecosr_jax.store.files import json_float


class Runner:
    """Runs the methods of one config on one set of splits, sharing pretrainings."""

    def __init__(
        self, config, splits, stacked, names, methods: list[str] | None = None, times=None
    ):
        self.config, self.stacked, self.names = config, stacked, names
        self.times = times or progress.PhaseTimes()  # seconds per phase, for the run's end
        self.methods = methods or []  # the group's methods: which pretrainings it will need
        self.mesh = fed_round.make_mesh(mesh.run_devices(config.get("num_devices", 0)))
        # It also holds the group's model and program (its values are the first run's).
        self.pretrainer = pretraining.Pretrainer(
            config, splits, stacked, names, self.methods, self.mesh, self.times
        )
        # The markets that fine-tune and are evaluated (config.data.finetune_markets).
        self.finetuned = typed_configs.data(config).finetune_market_names(names)
        self._selections: dict[int, StackedMarkets] = {}

    def evaluated(self, stacked: StackedMarkets) -> StackedMarkets:
        """`stacked` (the run's markets) cut to the markets that fine-tune and are evaluated
        (split.select_markets: each as in the whole stack); `stacked` itself when they are
        all. One object per stacked object: `program_key` tells markets apart by identity."""
        if self.finetuned == self.names:
            return stacked
        if id(stacked) not in self._selections:
            keep = [self.names.index(n) for n in self.finetuned]
            self._selections[id(stacked)] = select_markets(
                stacked, keep, num_markets_multiple=self.mesh.devices.size
            )
        return self._selections[id(stacked)]

    @functools.cached_property
    def _local_base(self) -> tuple[ModelConfig, StackedMarkets]:
        """Architecture and data of `local`: the text model, or ID-only without semantics.
        Built once: `program_key` tells markets apart by identity."""
        if self.stacked.semantics is not None:
            return self.pretrainer.model, self.stacked
        n = self.stacked.item_mask.shape[1] - 1
        zeros = np.zeros((*self.stacked.item_mask.shape, 1), np.float32)
        return (
            paradigms.id_model_config(self.pretrainer.model, n),
            dataclasses.replace(self.stacked, semantics=zeros),
        )

    def _base(self, method: str) -> tuple[ModelConfig, StackedMarkets]:
        """The architecture a method starts from and the stacked markets it fine-tunes and
        is evaluated on."""
        base, source = paradigms.split_method(method)
        kind = paradigms.SPECS[base].pretraining
        if kind is None:
            return self._local_base
        p = self.pretrainer.pretraining(kind, source)
        return p.finetune_model, p.stacked

    def program_key(self, method: str) -> tuple:
        """Methods with equal keys fine-tune (or evaluate) with one compiled program on the
        same markets, so `run` can train them together."""
        model, stacked = self._base(method)
        mode = paradigms.SPECS[paradigms.split_method(method)[0]].finetune
        if mode is not None:
            ft = typed_configs.finetune(self.config, mode)
            model = model_config_for(model, ft, stacked.item_mask.shape[1] - 1)
        return (mode, model, id(stacked))

    def run(self, items: list[tuple[str, groups.Run]]) -> dict[tuple[str, str], dict]:
        """Per-market test metrics [M] of each (method, run), with "ranks" [M, U]
        (evaluation.evaluate), keyed by (method, run workdir). The methods share a
        `program_key`: every pair fine-tunes and evaluates on one run axis. Pairs that would
        train identically (the same pretraining, equal values) train once."""
        assert len({self.program_key(m) for m, _ in items}) == 1, "one program per call"

        def same_training(item):
            method, run = item
            base, source = paradigms.split_method(method)
            spec = paradigms.SPECS[base]
            pre = ft = None
            if spec.pretraining is not None:
                p = self.pretrainer.pretraining(spec.pretraining, source)
                pre = (p.key, self.pretrainer.fed_values(p, run))
            if spec.finetune is not None:
                ft = groups.identity(typed_configs.finetune(run.config, spec.finetune).values())
            return (pre, ft, run.seed, float(run.config.model.dropout))

        classes = groups.classes(items, same_training)
        metrics = self._run_classes(classes)
        return {
            (method, run.workdir): dict(m)
            for members, m in zip(classes, metrics, strict=True)
            for method, run in members
        }

    def _params(self, items: list[tuple[str, groups.Run]]):
        """The pretrained shared params of each (method, run) ([R, ...]; None without a
        pretraining), the methods' pretrainings trained first."""
        needed: dict[tuple, list[groups.Run]] = {}
        for method, run in items:
            base, source = paradigms.split_method(method)
            kind = paradigms.SPECS[base].pretraining
            if kind is not None:
                needed.setdefault((kind, source), []).append(run)
        if not needed:
            return None
        for (kind, source), runs in needed.items():
            self.pretrainer.pretrain(kind, source, runs)
        parts = []
        for method, run in items:
            base, source = paradigms.split_method(method)
            p = self.pretrainer.pretraining(paradigms.SPECS[base].pretraining, source)
            parts.append(self.pretrainer.start(p, run))
        return groups.stack(parts)

    def _run_classes(self, classes: list[list[tuple[str, groups.Run]]]) -> list[dict]:
        """The first (method, run) of each class, logged for every member; each class's
        metrics."""
        items = [members[0] for members in classes]
        runs = [run for _, run in items]
        grouped = len(items) > 1
        method = items[0][0]
        model, whole = self._base(method)
        stacked = self.evaluated(whole)
        mode = paradigms.SPECS[paradigms.split_method(method)[0]].finetune
        params = self._params(items)
        ev = self.config.eval
        seeds = [run.seed for run in runs]
        evaluate = dict(
            batch_size=ev.batch_size,
            protocol=ev.protocol,
            mask_seen=ev.mask_seen,
            seed=np.asarray(seeds, np.int32) if grouped else seeds[0],
            with_ranks=True,
            market_index=stacked.market_index,
            mesh=self.mesh,  # each device evaluates its own markets
        )
        test = (stacked.test_inputs, stacked.test_targets, stacked.semantics, stacked.item_mask)
        if mode is None:
            with self.times.phase("evaluating"):
                metrics = evaluation.evaluate(model, params, *test, **evaluate)
            return [groups.run_part(metrics, i, grouped) for i in range(len(items))]
        fts = [typed_configs.finetune(run.config, mode) for run in runs]
        model, values = groups.together(
            model, [ft.values() for ft in fts], [run.config.model.dropout for run in runs]
        )
        model = model_config_for(model, fts[0], stacked.item_mask.shape[1] - 1)
        starts = [
            finetune_loop.init_market_params(
                model,
                ft,
                None if params is None else groups.run_part(params, i, grouped),
                whole.num_markets,
                stacked.semantics.shape[-1],
                market_index=stacked.market_index,
            )
            for i, ft in enumerate(fts)
        ]
        names = self.finetuned
        real = len(names)

        def on_epoch(epoch, ndcg, loss, active):
            for i, members in enumerate(classes):
                n, lo, a = (groups.run_part(x, i, grouped) for x in (ndcg, loss, active))
                values = {
                    "valid_ndcg@10": json_float(np.mean(n[:real])),
                    "loss": (  # of the markets that trained this epoch
                        json_float(np.mean(lo[:real][a[:real]])) if a[:real].any() else None
                    ),
                    "markets_active": int(a[:real].sum()),
                    "markets_stopped": [name for j, name in enumerate(names) if not a[j]],
                    "market_valid_ndcg@10": {
                        name: json_float(n[j]) for j, name in enumerate(names)
                    },
                }
                for m, run in members:
                    run.log.log(
                        m, "finetune", epoch, values, curve="valid_ndcg@10", progress=True,
                        total=fts[0].max_epochs,  # at most: early stopping may end it sooner
                    )  # fmt: skip

        data = finetune_loop.finetune_data(stacked, self.pretrainer.fed)
        methods = list(dict.fromkeys(m for m, _ in items))
        phases = [run.checkpoints.phase(f"finetune_{m}", best=True) for m, run in items]
        several = len(methods) > 1
        with self.times.phase("fine-tuning"):
            result = finetune_loop.finetune(
                model,
                fts[0],
                groups.stack(starts),
                data,
                on_epoch=on_epoch,
                checkpoints=checkpoint.group_phase(phases),
                names=[*names, *(f"padding{i}" for i in range(stacked.num_markets - real))],
                phase="finetune_" + "+".join(methods),
                values=values,
                run_names=[
                    f"{run.label} {m}".strip() if several else run.label for m, run in items
                ],
                steps=finetune_loop.steps_per_epoch(fts[0], whole.num_train_rows),
                mesh=self.mesh,  # each device fine-tunes its own markets
            )
        with self.times.phase("evaluating"):
            metrics = evaluation.evaluate(
                model, result.params, *test, per_market_params=True, **evaluate
            )
        # each market's kept epoch and the last epoch it trained (results.json, per market)
        metrics.update(best_epoch=result.best_epoch, stop_epoch=result.stop_epoch)
        return [groups.run_part(metrics, i, grouped) for i in range(len(items))]
