"""Pretrainings for a group of runs (fecosr_jax.runs.groups): what each kind of pretraining
(fecosr_jax.runs.paradigms.PRETRAININGS) trains, its privacy plan with DP on, and training it.

`Pretrainer.pretrain(kind, source, runs)` trains a kind for runs that will fine-tune from it,
once per run: runs with equal values train once, the runs of a group train together on a
leading run axis of one compiled round, and a pretraining that shares the round's program
(S²CE and CE, paradigms.share_a_round) trains with them. The pretraining loop itself (resume,
NaN check, preemption) is fecosr_jax.federated.loop.run_rounds over fecosr_jax.federated.round.
Each finished pretraining is written to WORKDIR/pretrained/<key>/, and with
config.pretrained a run loads one instead of pretraining (fecosr_jax.store.pretrained).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh

from fecosr_jax import distributed, progress
from fecosr_jax import mesh as mesh_lib
from fecosr_jax.data import sources, stack_markets
from fecosr_jax.data.split import MarketSplit, StackedMarkets, union_vocabulary
from fecosr_jax.errors import ConfigError
from fecosr_jax.federated import loop as fed_loop
from fecosr_jax.federated import privacy
from fecosr_jax.federated import round as fed_round
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig
from fecosr_jax.runs import groups, paradigms, typed_configs
from fecosr_jax.store import checkpoint, resume
from fecosr_jax.store import pretrained as pretrained_lib
from fecosr_jax.store.files import json_float


@dataclasses.dataclass
class Pretraining:
    """What a pretraining kind trains: the model, each run's federated settings
    (`adjust(its own)`), the markets it trains on and for how many rounds, and the stacked
    markets and model that fine-tuning and evaluation then use (an item-ID model's
    vocabulary grows there by the items no pretraining market had: `Pretrainer.start`)."""

    key: str  # its name in the logs and checkpoints
    model: ModelConfig
    adjust: Callable[[FedConfig], FedConfig]
    train: StackedMarkets
    names: list[str]
    num_rounds: int
    stacked: StackedMarkets
    finetune_model: ModelConfig

    @property
    def kind(self) -> str:
        """Its kind (a key of paradigms.PRETRAININGS): the key without a source's @market."""
        return self.key.partition("@")[0]

    @property
    def scope(self) -> str:
        return paradigms.PRETRAININGS[self.kind].scope


class Pretrainer:
    """Trains the pretrainings a group's methods need, each once per run, and keeps them."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        splits: list[MarketSplit],
        stacked: StackedMarkets,
        names: list[str],
        methods: list[str],
        mesh: Mesh,
        times: progress.PhaseTimes,
    ):
        self.config, self.splits, self.stacked, self.names = config, splits, stacked, names
        self.methods, self.mesh, self.times = methods, mesh, times
        self.multiple = mesh.devices.size  # markets are padded to a multiple of the devices
        self.model = typed_configs.model(config)
        # The group's program (its values are the first run's).
        self.fed = typed_configs.federated(config)
        self.pretrainings: dict[tuple[str, str | None], Pretraining] = {}
        self.pretrained: dict[tuple[str, str], object] = {}  # (key, workdir) -> params
        self.plans: dict[tuple, privacy.Plan] = {}  # (pretraining key, DP settings) -> plan
        self.id_stacked: StackedMarkets | None = None  # the markets over the union vocabulary
        # The markets that pretrain: all but the newcomers (config.data.newcomers).
        self.members = typed_configs.data(config).pretrain_market_names(names)
        self.newcomers = [n for n in names if n not in self.members]
        self._keep = [names.index(n) for n in self.members]
        default = names[paradigms.default_source(stacked, among=self._keep)]
        self.transfer_source = config.transfer_source or default
        if self.transfer_source not in names:
            raise ConfigError(
                f"config.transfer_source={config.transfer_source!r} is not a market "
                f"of this dataset ({', '.join(names)})"
            )
        if self.transfer_source in self.newcomers:
            raise ConfigError(
                f"config.transfer_source={config.transfer_source!r} does not take part in "
                f"pretraining (config.data.newcomers={config.data.newcomers!r})"
            )
        # A pretrained model to start from instead of pretraining (config.pretrained).
        where = config.get("pretrained", "")
        self.loaded = pretrained_lib.read(where) if where else None
        self._loaded_params = None

    def pretraining(self, kind: str, source: str | None) -> Pretraining:
        """What pretraining `kind` (paradigms.PRETRAININGS) trains: a source kind on `source`
        (default config.transfer_source), item-ID kinds on the union vocabulary."""
        source = source or self.transfer_source
        if (kind, source) in self.pretrainings:
            return self.pretrainings[(kind, source)]
        spec, multiple, names = paradigms.PRETRAININGS[kind], self.multiple, self.names
        key = kind
        if spec.scope == "source" and source != self.transfer_source:
            key = f"{kind}@{source}"  # its own name in the logs and checkpoints
        if spec.items == "id":
            known, vocabulary = self.vocabularies()
            if self.id_stacked is None:  # one object: the ID methods fine-tune together
                self.id_stacked = paradigms.id_stacked(self.splits, multiple, vocabulary=vocabulary)
            stacked = self.id_stacked
            model = paradigms.id_model_config(self.model, len(known))
            finetune_model = paradigms.id_model_config(self.model, len(vocabulary))
        else:
            stacked, model, finetune_model = self.stacked, self.model, self.model
        train, trained_on = stacked, names
        if spec.scope == "source":
            trained_on, keep = [source], names.index(source)
            train = (
                paradigms.id_stacked(self.splits, multiple, keep=[keep], vocabulary=known)
                if spec.items == "id"
                else stack_markets([self.splits[keep]], num_markets_multiple=multiple)
            )
        elif self.newcomers:  # only the members' data: newcomers send nothing
            trained_on = self.members
            train = (
                paradigms.id_stacked(self.splits, multiple, keep=self._keep, vocabulary=known)
                if spec.items == "id"
                else stack_markets(
                    [self.splits[i] for i in self._keep], num_markets_multiple=multiple
                )
            )
        rounds = self.config.num_rounds
        if spec.scope == "pooled":
            rounds *= self.fed.local_steps  # as many gradient steps per market
        adjust = functools.partial(paradigms.adjust, spec)
        self.pretrainings[(kind, source)] = Pretraining(
            key, model, adjust, train, trained_on, rounds, stacked, finetune_model
        )
        return self.pretrainings[(kind, source)]

    def vocabularies(self) -> tuple[np.ndarray, np.ndarray]:
        """The item-ID models' vocabularies, item ids in index order: (what pretraining
        knows, what fine-tuning uses). Pretraining knows the catalogues of the markets that
        pretrain (or a loaded item-ID export's vocabulary); fine-tuning appends every other
        item of the run's markets, sorted. Without newcomers the two are the union of every
        catalogue."""
        items = self.loaded.meta["items"] if self.loaded is not None else {}
        if items.get("kind") == "id":
            known = np.asarray(items["vocabulary"])
        else:
            known = union_vocabulary([self.splits[i] for i in self._keep])
        rest = np.setdiff1d(union_vocabulary(self.splits), known)
        return known, np.concatenate([known, rest]) if rest.size else known

    def start(self, p: Pretraining, run: groups.Run):
        """The parameters `run` fine-tunes pretraining `p`'s methods from: its pretrained
        ones, an item-ID table grown by the items no pretraining market had
        (paradigms.extend_item_ids)."""
        params = self.pretrained[(p.key, run.workdir)]
        if p.finetune_model.num_item_ids > p.model.num_item_ids:
            params = paradigms.extend_item_ids(
                params, p.model, p.finetune_model.num_item_ids, run.seed
            )
        return params

    def privacy_plan(self, p: Pretraining, fed: FedConfig) -> privacy.Plan | None:
        """The privacy plan of pretraining `p` with settings `fed` (None with DP off): planned
        once per pretraining and DP settings (runs of a group may differ in their privacy
        budget)."""
        if not fed.dp.enabled:
            return None
        if (p.key, fed.dp) not in self.plans:
            private = self._private_releases()
            self.plans[(p.key, fed.dp)] = privacy.plan(
                fed.dp,
                p.names,
                p.train.num_users[: len(p.names)],
                batch_size=fed.batch_size,
                local_steps=fed.local_steps,
                num_rounds=p.num_rounds,
                releases=[sum(name in q.names for q in private) for name in p.names],
            )
        return self.plans[(p.key, fed.dp)]

    def _private_releases(self) -> list[Pretraining]:
        """The pretrainings the group's methods train with DP (pooled data has none; a loaded
        export was released before): a target epsilon is met by their composition."""
        return [
            q for q in self.needed(self.methods) if not self.is_loaded(q) and q.scope != "pooled"
        ]

    def composed_privacy(self, run: groups.Run, methods: list[str]) -> dict | None:
        """results.json's "privacy_composed" of `run` (privacy.run_report): per market, every
        release of its data by `methods`' pretrainings composed; None with DP off."""
        if not self.fed.dp.enabled:
            return None
        pooled = {p.key: p.names for p in self.needed(methods) if p.scope == "pooled"}
        public = privacy.unnoised(self.fed.weighting, self.config.data.catalogue)
        return privacy.run_report(self.privacy_report(run, methods), pooled, public)

    def needed(self, methods: list[str]) -> list[Pretraining]:
        """The pretrainings `methods` need, each once."""
        out: dict[str, Pretraining] = {}
        for method in methods:
            base, source = paradigms.split_method(method)
            kind = paradigms.SPECS[base].pretraining
            if kind is not None:
                p = self.pretraining(kind, source)
                out[p.key] = p
        return list(out.values())

    def check_privacy(self, configs: list[ml_collections.ConfigDict]):
        """Refuses (ConfigError) DP settings that cannot hold on this data, before anything
        is written: every pretraining the methods need is planned for every run's settings
        (`configs`, the group's). Logs privacy.advice's warning when a method pretrains."""
        if not self.fed.dp.enabled:  # the program's: the same for every run of the group
            return
        private = [p for p in self.needed(self.methods) if not self.is_loaded(p)]
        if private and (advice := privacy.advice(self.fed)):  # the group's optimiser kinds
            logging.warning(advice)
        for p in private:
            for config in configs:
                self.privacy_plan(p, p.adjust(typed_configs.federated(config)))

    def privacy_report(self, run: groups.Run, methods: list[str]) -> dict[str, dict]:
        """results.json's "privacy" of `run`: per private pretraining of `methods`, each
        market's epsilon over the rounds it trained in (a function of the config, so a
        resumed run reports what the uninterrupted one would)."""
        out = {}
        for p in self.needed(methods):
            if self.is_loaded(p):  # what the export's pretraining spent
                spent = self.loaded.meta.get("privacy")
            else:
                spent = self._privacy_of(p, run)
            if spent is not None:
                out[p.key] = spent
        return out

    def _privacy_of(self, p: Pretraining, run: groups.Run) -> dict | None:
        """Each market's epsilon over the rounds it trained in of `run`'s pretraining `p`
        (None with DP off)."""
        fed = p.adjust(typed_configs.federated(run.config))
        plan = self.privacy_plan(p, fed)
        if plan is None:
            return None
        trained = fed_round.rounds_trained(fed, len(p.names), p.num_rounds)
        return plan.report(trained[-1])

    # -- Pretrained models as artifacts (fecosr_jax.store.pretrained). ----------------------

    def is_loaded(self, p: Pretraining) -> bool:
        """Whether `p` comes from config.pretrained instead of being trained."""
        return self.loaded is not None and p.kind == self.loaded.meta["kind"]

    def item_space(self, p: Pretraining) -> dict:
        """What a market's items enter pretraining `p`'s model through: the vocabulary of an
        item-ID model, or the semantic vectors' source, dimension and what decides them."""
        if paradigms.PRETRAININGS[p.kind].items == "id":
            return {"kind": "id", "vocabulary": self.vocabularies()[0].tolist()}
        data = typed_configs.data(self.config)
        source = sources.semantic_source(data)
        out = {"kind": "text", "semantics": source, "dim": int(p.train.semantics.shape[-1])}
        if source == "text":
            out["text_model"] = data.text_model
        elif source == "random":
            out["seed"] = data.seed
        elif source == "synthetic":  # the generator's space: its whole config
            out["generator"] = dataclasses.asdict(typed_configs.synthetic(self.config))
        return out

    def check_loaded(self) -> None:
        """Refuses (ConfigError) a config.pretrained that the run's methods cannot start
        from: none of them fine-tunes from its pretraining, they need another one too, or its
        architecture or item space differs (pretrained_lib.check_fits)."""
        if self.loaded is None:
            return
        where = f"config.pretrained={self.loaded.directory}"
        if self.newcomers:
            raise ConfigError(
                f"config.data.newcomers={self.config.data.newcomers!r}: with "
                f"{where} nothing pretrains in this run"
            )
        needed = self.needed(self.methods)
        other = [p.key for p in needed if not self.is_loaded(p)]
        loaded = [p for p in needed if self.is_loaded(p)]
        if other or len(loaded) != 1:
            kinds = ", ".join(p.key for p in needed) or "none"
            raise ConfigError(
                f"{where} holds the pretraining {self.loaded.key}, but config.methods="
                f"{self.config.methods!r} pretrain {kinds}: keep the methods that fine-tune "
                f"from {self.loaded.meta['kind']} (and local)"
            )
        p = loaded[0]
        pretrained_lib.check_fits(self.loaded, p.model, self.item_space(p))
        like = paradigms.initial_params(p.model, 0, p.train.semantics.shape[-1])
        self._loaded_params = self.loaded.params(like)  # read and verified before any write

    def newcomer_markets(self) -> list[str]:
        """The markets that took no part in the pretraining the run's methods start from: by
        their data (fingerprints) where it comes from config.pretrained, else the run's
        newcomers."""
        if self.loaded is None:
            return self.newcomers
        seen = set(self.loaded.meta["trained_on"].values())
        return [n for n, f in resume.data_fingerprints(self.splits).items() if f not in seen]

    def provenance(self) -> dict | None:
        """results.json's "pretrained": where the loaded pretraining came from (None when
        the run pretrains itself)."""
        if self.loaded is None:
            return None
        meta = self.loaded.meta
        return {
            "directory": self.loaded.directory,
            "key": meta["key"],
            "trained_on": list(meta["trained_on"]),
            "seed": meta["seed"],
            "fingerprint": meta["fingerprint"],
        }

    def _export(self, p: Pretraining, run: groups.Run, params) -> None:
        """Writes `run`'s finished pretraining `p` to WORKDIR/pretrained/<key>/."""
        keep = [self.names.index(n) for n in p.names]
        meta = {
            "key": p.key,
            "kind": p.kind,
            "model": pretrained_lib.model_fields(p.model),
            "items": self.item_space(p),
            "trained_on": resume.data_fingerprints([self.splits[i] for i in keep]),
            "rounds": p.num_rounds,
            "seed": int(run.seed),
            "privacy": self._privacy_of(p, run),
        }
        pretrained_lib.write(  # every process (a collective); the first writes the files
            epath.Path(run.workdir) / "pretrained" / p.key,
            mesh_lib.to_host(params),
            meta,
            primary=distributed.is_primary(),
        )

    def fed_values(self, p: Pretraining, run: groups.Run) -> tuple[float, ...]:
        """What decides how `run` pretrains `p`: its federated values, dropout rate and, with
        DP on, its noise multipliers."""
        fed = p.adjust(typed_configs.federated(run.config))
        plan = self.privacy_plan(p, fed)
        sigma = () if plan is None else tuple(plan.noise_multiplier.tolist())
        return (*groups.identity(fed.values()), float(run.config.model.dropout), *sigma)

    def _will_need(self, kind: str, run: groups.Run) -> bool:
        """Whether a method of the group that `run` has not finished pretrains `kind`."""
        done = run.checkpoints.progress
        return any(
            paradigms.SPECS[paradigms.split_method(m)[0]].pretraining == kind
            and m not in done["methods"]
            and m not in done["skipped"]
            for m in self.methods
        )

    def pretrain(self, kind: str, source: str | None, runs: list[groups.Run]):
        """(model config, shared params, stacked markets for fine-tuning) of a kind for a
        group of runs (params [R, ...] for several). Each run's params are kept; runs with
        equal values train once, and a pretraining of the same round (paradigms.share_a_round)
        that the runs will need trains with them."""
        p = self.pretraining(kind, source)
        if self.is_loaded(p):  # config.pretrained (check_loaded): the same for every run
            if self._loaded_params is None:
                self.check_loaded()
            if any((p.key, run.workdir) not in self.pretrained for run in runs):
                trained_on = ", ".join(self.loaded.meta["trained_on"])
                print(
                    f"-- {p.key}: the pretrained model of {self.loaded.directory} (config."
                    f"pretrained; pretrained on {trained_on}), not trained here",
                    flush=True,
                )
            for run in runs:
                self.pretrained[(p.key, run.workdir)] = self._loaded_params
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
            classes = groups.classes(members, lambda m: self.fed_values(*m))
            params = self._rounds(classes)
            for i, same in enumerate(classes):
                for q, run in same:
                    trained = groups.run_part(params, i, len(classes) > 1)
                    self.pretrained[(q.key, run.workdir)] = trained
                    self._export(q, run, trained)
        return (
            p.model,
            groups.stack([self.pretrained[(p.key, run.workdir)] for run in runs]),
            p.stacked,
        )

    def _rounds(self, classes: list[list[tuple[Pretraining, groups.Run]]]):
        """Trains the first (pretraining, run) of each class (params [R, ...] for several;
        the pretrainings share one round), logged for every member of the class."""
        reps = [members[0] for members in classes]
        p = reps[0][0]  # what the pretrainings share: model, markets, rounds
        every = max(1, p.num_rounds // 10)
        grouped = len(reps) > 1
        kinds = list(dict.fromkeys(q.key for q, _ in reps))

        semantic_dim = p.train.semantics.shape[-1]
        starts = [paradigms.initial_params(q.model, run.seed, semantic_dim) for q, run in reps]
        feds = [q.adjust(typed_configs.federated(run.config)) for q, run in reps]
        assert len({f.program() for f in feds}) == 1, "only values may differ in one round"
        model, values = groups.together(
            p.model, [f.values() for f in feds], [run.config.model.dropout for _, run in reps]
        )
        plans = [self.privacy_plan(q, f) for (q, _), f in zip(reps, feds, strict=True)]
        private = feds[0].dp.enabled  # the program's: on or off for every run
        if private:  # [rounds, M] rounds trained so far, per class of runs
            trained = [fed_round.rounds_trained(f, len(p.names), p.num_rounds) for f in feds]

        def spent(i: int, r: int) -> dict[str, float]:
            """Each market's epsilon after round r (the rounds it trained in count)."""
            plan = plans[i]
            return {n: plan.epsilon(j, int(trained[i][r - 1, j])) for j, n in enumerate(p.names)}

        def on_round(r, metrics):
            for i, members in enumerate(classes):
                m = groups.run_part(metrics, i, grouped)
                values = {
                    "loss": json_float(m["loss"]),
                    "delta_cosine": json_float(m["delta_cosine"]),
                    "delta_agreement": json_float(m["delta_agreement"]),
                    "market_loss": {
                        n: json_float(m["market_loss"][j]) for j, n in enumerate(p.names)
                    },
                    "market_drift": {
                        n: json_float(m["market_drift"][j]) for j, n in enumerate(p.names)
                    },
                }
                show = r % every == 0 or r == p.num_rounds
                if private and show:
                    epsilon = spent(i, r)
                    values["epsilon"] = privacy.epsilon_json(max(epsilon.values()))
                    values["market_epsilon"] = {
                        n: privacy.epsilon_json(e) for n, e in epsilon.items()
                    }
                for q, run in members:
                    run.log.log(
                        q.key, "pretrain", r, values, curve="loss", progress=show,
                        total=p.num_rounds,
                    )  # fmt: skip

        if grouped:
            print(f"-- pretraining {' + '.join(kinds)}: {len(reps)} runs in one round", flush=True)
        phases = [run.checkpoints.phase(f"pretrain_{q.key}") for q, run in reps]
        with self.times.phase("pretraining"):
            return fed_loop.run_rounds(
                model,
                feds[0],
                p.train,
                p.names,
                p.num_rounds,
                groups.stack(starts),
                self.mesh,
                on_round,
                checkpoints=checkpoint.group_phase(phases),
                phase="pretrain_" + "+".join(kinds),
                values=values,
                run_names=[f"{run.label} {q.key}".strip() for q, run in reps],
                privacy=plans if private else (),
            )
