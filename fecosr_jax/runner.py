"""The runner: trains methods for a group of runs (fecosr_jax.groups) on one set of splits.

`Runner.run(items)` takes (method, run) pairs whose methods fine-tune with one compiled
program (`Runner.program_key`: the same fine-tuning mode, architecture and markets): it
pretrains what they need (fecosr_jax.paradigms.SPECS: federated, pooled or from one source
market), then fine-tunes and evaluates every pair together on a leading run axis of the same
compiled programs (fecosr_jax.federated.round, fecosr_jax.finetune, fecosr_jax.evaluation),
and returns each pair's per-market test metrics. Each run logs and checkpoints into its own
workdir, each method under its own name.

What would be computed twice is computed once. Pairs that a method would train identically
share one training: `local` does not read S²CE's alpha, and CE pretraining (alpha = 0) does
not either, so in a sweep over alpha each seed's `local` and CE pretraining are trained for
one run and given to the others (their log lines and results too; the checkpoints are the
trained run's). Pretrainings are kept per run, so methods that share one (fecosr,
fecosr_no_adapt, fecosr_no_finetune) train it once, and S²CE and CE pretraining, one round's
program, train together (paradigms.share_a_round).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from fecosr_jax import (
    checkpoint,
    evaluation,
    finetune,
    mesh,
    metrics_log,
    paradigms,
    progress,
    reporting,
)
from fecosr_jax.data import stack_markets
from fecosr_jax.data.market import StackedMarkets
from fecosr_jax.errors import ConfigError
from fecosr_jax.federated import privacy
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig


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


@dataclasses.dataclass
class Run:
    """One run of a group: a seed's config, workdir, log and checkpoints (its own outputs)."""

    seed: int
    config: ml_collections.ConfigDict
    workdir: str
    label: str  # prefix of its log lines ("" for a run alone; "seed 1", "alpha0.5_seed1")
    log: metrics_log.RunLog | None  # opened once the data has loaded
    checkpoints: checkpoint.RunCheckpoints
    soft_labels: dict = dataclasses.field(default_factory=dict)  # for results.json


@dataclasses.dataclass
class Pretraining:
    """What a pretraining kind trains: the model, each run's federated settings
    (`adjust(its own)`), the markets it trains on and for how many rounds, and the stacked
    markets that fine-tuning and evaluation then use."""

    key: str  # its name in the logs and checkpoints
    model: ModelConfig
    adjust: Callable[[FedConfig], FedConfig]
    train: StackedMarkets
    names: list[str]
    num_rounds: int
    stacked: StackedMarkets


def _run_part(tree, i: int, grouped: bool):
    """Run i's part of a tree with a leading run axis (the tree itself for one run)."""
    return jax.tree.map(lambda x: x[i], tree) if grouped else tree


def _stack(trees: list):
    """One tree alone, or several on a leading run axis."""
    return trees[0] if len(trees) == 1 else fed_round.stack_runs(trees)


def _identity(values) -> tuple[float, ...]:
    """A hashable form of a run's values (FedValues, FinetuneValues)."""
    return tuple(float(np.asarray(x)) for x in jax.tree.leaves(values))


def _classes(items: list, identity: Callable) -> list[list]:
    """The items in classes of equal identity (in order of first appearance)."""
    out: dict[tuple, list] = {}
    for item in items:
        out.setdefault(identity(item), []).append(item)
    return list(out.values())


class Runner:
    """Runs the methods of one config on one set of splits, sharing pretrainings."""

    def __init__(
        self, config, splits, stacked, names, methods: list[str] | None = None, times=None
    ):
        self.config, self.splits, self.stacked, self.names = config, splits, stacked, names
        self.times = times or progress.PhaseTimes()  # seconds per phase, for the run's end
        self.methods = methods or []  # the group's methods: which pretrainings it will need
        self.devices = mesh.run_devices(config.get("num_devices", 0))
        self.mesh = fed_round.make_mesh(self.devices)
        self.model = model_config(config)
        self.fed = fed_config(config)  # the group's program (its values are the first run's)
        self.pretrainings: dict[tuple[str, str | None], Pretraining] = {}
        self.pretrained: dict[tuple[str, str], object] = {}  # (key, workdir) -> params
        self.plans: dict[str, privacy.Plan] = {}  # pretraining key -> its DP plan
        self.id_stacked: StackedMarkets | None = None  # the markets over the union vocabulary
        self.transfer_source = config.transfer_source or names[paradigms.default_source(stacked)]
        if self.transfer_source not in names:
            raise ConfigError(
                f"config.transfer_source={config.transfer_source!r} is not a market "
                f"of this dataset ({', '.join(names)})"
            )

    def pretraining(self, kind: str, source: str | None) -> Pretraining:
        """What pretraining `kind` (paradigms.PRETRAININGS) trains: a source kind on `source`
        (default config.transfer_source), item-ID kinds on the union vocabulary."""
        source = source or self.transfer_source
        if (kind, source) in self.pretrainings:
            return self.pretrainings[(kind, source)]
        spec, multiple, names = paradigms.PRETRAININGS[kind], len(self.devices), self.names
        key = kind
        if spec.scope == "source" and source != self.transfer_source:
            key = f"{kind}@{source}"  # its own name in the logs and checkpoints
        if spec.items == "id":
            if self.id_stacked is None:  # one object: the ID methods fine-tune together
                self.id_stacked = paradigms.id_stacked(self.splits, multiple)
            stacked = self.id_stacked
            model = paradigms.id_model_config(self.model, stacked.item_mask.shape[1] - 1)
        else:
            stacked, model = self.stacked, self.model
        train, trained_on = stacked, names
        if spec.scope == "source":
            trained_on, keep = [source], names.index(source)
            train = (
                paradigms.id_stacked(self.splits, multiple, keep=[keep])
                if spec.items == "id"
                else stack_markets([self.splits[keep]], num_markets_multiple=multiple)
            )
        rounds = self.config.num_rounds
        if spec.scope == "pooled":
            rounds *= self.fed.local_steps  # as many gradient steps per market
        adjust = functools.partial(paradigms.adjust, spec)
        self.pretrainings[(kind, source)] = Pretraining(
            key, model, adjust, train, trained_on, rounds, stacked
        )
        return self.pretrainings[(kind, source)]

    def privacy_plan(self, p: Pretraining, fed: FedConfig) -> privacy.Plan | None:
        """The privacy plan of pretraining `p` with settings `fed` (None with DP off). It
        depends on the program only (DP settings, batch, K), the same for every run of the
        group: planned once per pretraining."""
        if not fed.dp.enabled:
            return None
        if p.key not in self.plans:
            self.plans[p.key] = privacy.plan(
                fed.dp,
                p.names,
                p.train.num_train_rows[: len(p.names)],
                batch_size=fed.batch_size,
                local_steps=fed.local_steps,
                num_rounds=p.num_rounds,
                train_windows=self.config.data.train_windows,
            )
        return self.plans[p.key]

    def _dp_pretrainings(self, methods: list[str]) -> list[Pretraining]:
        """The pretrainings `methods` need, each once."""
        out: dict[str, Pretraining] = {}
        for method in methods:
            base, source = paradigms.split_method(method)
            kind = paradigms.SPECS[base].pretraining
            if kind is not None:
                p = self.pretraining(kind, source)
                out[p.key] = p
        return list(out.values())

    def check_privacy(self):
        """Refuses (ConfigError) DP settings that cannot hold on this data, before anything
        is written: every pretraining the methods need is planned."""
        if not self.fed.dp.enabled:  # the program's: the same for every run of the group
            return
        for p in self._dp_pretrainings(self.methods):
            self.privacy_plan(p, p.adjust(self.fed))

    def privacy_report(self, run: Run, methods: list[str]) -> dict[str, dict]:
        """results.json's "privacy" of `run`: per private pretraining of `methods`, each
        market's epsilon over the rounds it trained in (a function of the config, so a
        resumed run reports what the uninterrupted one would)."""
        out = {}
        if not self.fed.dp.enabled:
            return out
        for p in self._dp_pretrainings(methods):
            fed = p.adjust(fed_config(run.config))
            plan = self.privacy_plan(p, fed)
            if plan is not None:
                trained = fed_round.rounds_trained(fed, len(p.names), p.num_rounds)
                out[p.key] = plan.report(trained[-1])
        return out

    def _fed_values(self, p: Pretraining, run: Run) -> tuple[float, ...]:
        return _identity(p.adjust(fed_config(run.config)).values())

    def _will_need(self, kind: str, run: Run) -> bool:
        """Whether a method of the group that `run` has not finished pretrains `kind`."""
        done = run.checkpoints.progress
        return any(
            paradigms.SPECS[paradigms.split_method(m)[0]].pretraining == kind
            and m not in done["methods"]
            and m not in done["skipped"]
            for m in self.methods
        )

    def pretrain(self, kind: str, source: str | None, runs: list[Run]):
        """(model config, shared params, stacked markets for fine-tuning) of a kind for a
        group of runs (params [R, ...] for several). Each run's params are kept; runs with
        equal values train once, and a pretraining of the same round (paradigms.share_a_round)
        that the runs will need trains with them."""
        p = self.pretraining(kind, source)
        members = [(p, run) for run in runs if (p.key, run.workdir) not in self.pretrained]
        bound = self.config.get("runs_per_step", 0)  # runs trained at once (0 = no bound)
        partners = [
            k for k in paradigms.PRETRAININGS if k != kind and paradigms.share_a_round(k, kind)
        ]
        for partner in partners if members else ():
            q = self.pretraining(partner, source)
            wanted = [
                (q, run)
                for run in runs
                if (q.key, run.workdir) not in self.pretrained and self._will_need(partner, run)
            ]
            members += wanted[: max(0, bound - len(members)) if bound else None]
        if members:
            classes = _classes(members, lambda m: self._fed_values(*m))
            params = self._rounds(classes)
            for i, same in enumerate(classes):
                for q, run in same:
                    self.pretrained[(q.key, run.workdir)] = _run_part(params, i, len(classes) > 1)
        return p.model, _stack([self.pretrained[(p.key, run.workdir)] for run in runs]), p.stacked

    def _rounds(self, classes: list[list[tuple[Pretraining, Run]]]):
        """Trains the first (pretraining, run) of each class (params [R, ...] for several;
        the pretrainings share one round), logged for every member of the class."""
        reps = [members[0] for members in classes]
        p = reps[0][0]  # what the pretrainings share: model, markets, rounds
        every = max(1, p.num_rounds // 10)
        grouped = len(reps) > 1
        kinds = list(dict.fromkeys(q.key for q, _ in reps))

        semantic_dim = p.train.semantics.shape[-1]
        starts = [paradigms.initial_params(q.model, run.seed, semantic_dim) for q, run in reps]
        feds = [q.adjust(fed_config(run.config)) for q, run in reps]
        assert len({f.program() for f in feds}) == 1, "only values may differ in one round"
        plan = self.privacy_plan(p, feds[0])  # the same for every run: DP is the program's

        if plan is not None:  # [rounds, M] rounds trained so far, per class of runs
            trained = [fed_round.rounds_trained(f, len(p.names), p.num_rounds) for f in feds]

        def spent(i: int, r: int) -> dict[str, float]:
            """Each market's epsilon after round r (the rounds it trained in count)."""
            return {n: plan.epsilon(j, int(trained[i][r - 1, j])) for j, n in enumerate(p.names)}

        def on_round(r, metrics):
            for i, members in enumerate(classes):
                m = _run_part(metrics, i, grouped)
                values = {
                    "loss": reporting.clean(m["loss"]),
                    "delta_cosine": reporting.clean(m["delta_cosine"]),
                    "delta_agreement": reporting.clean(m["delta_agreement"]),
                    "market_loss": {
                        n: reporting.clean(m["market_loss"][j]) for j, n in enumerate(p.names)
                    },
                    "market_drift": {
                        n: reporting.clean(m["market_drift"][j]) for j, n in enumerate(p.names)
                    },
                }
                show = r % every == 0 or r == p.num_rounds
                if plan is not None and show:
                    epsilon = spent(i, r)
                    values["epsilon"] = max(epsilon.values())
                    values["market_epsilon"] = epsilon
                for q, run in members:
                    run.log.log(
                        q.key, "pretrain", r, values, curve="loss", progress=show,
                        total=p.num_rounds,
                    )  # fmt: skip

        if grouped:
            print(f"-- pretraining {' + '.join(kinds)}: {len(reps)} runs in one round", flush=True)
        phases = [run.checkpoints.phase(f"pretrain_{q.key}") for q, run in reps]
        with self.times.phase("pretraining"):
            return paradigms.run_rounds(
                p.model,
                feds[0],
                p.train,
                p.names,
                p.num_rounds,
                _stack(starts),
                self.mesh,
                on_round,
                checkpoints=checkpoint.GroupPhase(phases) if grouped else phases[0],
                phase="pretrain_" + "+".join(kinds),
                values=fed_round.stack_runs([f.values() for f in feds]) if grouped else None,
                run_names=[f"{run.label} {q.key}".strip() for q, run in reps],
                privacy=plan,
            )

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

    def _base(self, method: str) -> tuple[ModelConfig, StackedMarkets]:
        """The architecture a method starts from and the stacked markets it fine-tunes and
        is evaluated on."""
        base, source = paradigms.split_method(method)
        kind = paradigms.SPECS[base].pretraining
        if kind is None:
            return self._local_base()
        p = self.pretraining(kind, source)
        return p.model, p.stacked

    def program_key(self, method: str) -> tuple:
        """Methods with equal keys fine-tune (or evaluate) with one compiled program on the
        same markets, so `run` can train them together."""
        model, stacked = self._base(method)
        mode = paradigms.SPECS[paradigms.split_method(method)[0]].finetune
        if mode is not None:
            ft = finetune_config(self.config, mode)
            model = finetune.model_config_for(model, ft, stacked.item_mask.shape[1] - 1)
        return (mode, model, id(stacked))

    def run(self, items: list[tuple[str, Run]]) -> dict[tuple[str, str], dict]:
        """Per-market test metrics [M] of each (method, run), with "ranks" [M, U]
        (evaluation.evaluate), keyed by (method, run workdir). The methods share a
        `program_key`: every pair fine-tunes and evaluates on one run axis. Pairs that would
        train identically (the same pretraining, equal values) train once."""
        assert len({self.program_key(m) for m, _ in items}) == 1, "one program per call"

        def identity(item):
            method, run = item
            base, source = paradigms.split_method(method)
            spec = paradigms.SPECS[base]
            pre = ft = None
            if spec.pretraining is not None:
                p = self.pretraining(spec.pretraining, source)
                pre = (p.key, self._fed_values(p, run))
            if spec.finetune is not None:
                ft = _identity(finetune_config(run.config, spec.finetune).values())
            return (pre, ft, run.seed)

        classes = _classes(items, identity)
        metrics = self._run_classes(classes)
        return {
            (method, run.workdir): dict(m)
            for members, m in zip(classes, metrics, strict=True)
            for method, run in members
        }

    def _params(self, items: list[tuple[str, Run]]):
        """The pretrained shared params of each (method, run) ([R, ...]; None without a
        pretraining), the methods' pretrainings trained first."""
        needed: dict[tuple, list[Run]] = {}
        for method, run in items:
            base, source = paradigms.split_method(method)
            kind = paradigms.SPECS[base].pretraining
            if kind is not None:
                needed.setdefault((kind, source), []).append(run)
        if not needed:
            return None
        for (kind, source), runs in needed.items():
            self.pretrain(kind, source, runs)
        parts = []
        for method, run in items:
            base, source = paradigms.split_method(method)
            p = self.pretraining(paradigms.SPECS[base].pretraining, source)
            parts.append(self.pretrained[(p.key, run.workdir)])
        return _stack(parts)

    def _run_classes(self, classes: list[list[tuple[str, Run]]]) -> list[dict]:
        """The first (method, run) of each class, logged for every member; each class's
        metrics."""
        items = [members[0] for members in classes]
        runs = [run for _, run in items]
        grouped = len(items) > 1
        method = items[0][0]
        model, stacked = self._base(method)
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
            mesh=self.mesh,  # each device evaluates its own markets
        )
        test = (stacked.test_inputs, stacked.test_targets, stacked.semantics, stacked.item_mask)
        if mode is None:
            with self.times.phase("evaluating"):
                metrics = evaluation.evaluate(model, params, *test, **evaluate)
            return [_run_part(metrics, i, grouped) for i in range(len(items))]
        fts = [finetune_config(run.config, mode) for run in runs]
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
            for i, members in enumerate(classes):
                n, lo, a = (_run_part(x, i, grouped) for x in (ndcg, loss, active))
                values = {
                    "valid_ndcg@10": reporting.clean(np.mean(n[:real])),
                    "loss": (  # of the markets that trained this epoch
                        reporting.clean(np.mean(lo[:real][a[:real]])) if a[:real].any() else None
                    ),
                    "markets_active": int(a[:real].sum()),
                    "markets_stopped": [name for j, name in enumerate(self.names) if not a[j]],
                    "market_valid_ndcg@10": {
                        name: reporting.clean(n[j]) for j, name in enumerate(self.names)
                    },
                }
                for m, run in members:
                    run.log.log(
                        m, "finetune", epoch, values, curve="valid_ndcg@10", progress=True,
                        total=fts[0].max_epochs,  # at most: early stopping may end it sooner
                    )  # fmt: skip

        data = paradigms.finetune_data(stacked, self.fed)
        methods = list(dict.fromkeys(m for m, _ in items))
        phases = [run.checkpoints.phase(f"finetune_{m}", best=True) for m, run in items]
        several = len(methods) > 1
        with self.times.phase("fine-tuning"):
            result = finetune.finetune(
                model,
                fts[0],
                _stack(starts),
                data,
                on_epoch=on_epoch,
                checkpoints=checkpoint.GroupPhase(phases) if grouped else phases[0],
                names=[*self.names, *(f"padding{i}" for i in range(stacked.num_markets - real))],
                phase="finetune_" + "+".join(methods),
                values=fed_round.stack_runs([ft.values() for ft in fts]) if grouped else None,
                run_names=[
                    f"{run.label} {m}".strip() if several else run.label for m, run in items
                ],
                mesh=self.mesh,  # each device fine-tunes its own markets
            )
        with self.times.phase("evaluating"):
            metrics = evaluation.evaluate(
                model, result.params, *test, per_market_params=True, **evaluate
            )
        return [_run_part(metrics, i, grouped) for i in range(len(items))]
