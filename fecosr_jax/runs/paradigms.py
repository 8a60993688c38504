"""The paradigms compared on the same data and splits (docs/design.md §5).

Every method = a pretraining (or none) followed by a fine-tuning mode (or none): a row of
SPECS, whose pretraining is data too (`Pretraining`: its loss and scope, in PRETRAININGS). The
runner (fecosr_jax.runs.runner) reads nothing else, so a new method is one new row.

  method               pretraining                              fine-tuning
  local                none (each market alone)                 scratch: text + ID + adapters
  transfer             one source market (one-to-one)           adapt, on every market
  transfer_id          one source market, CE, item-ID model     plain, on every market
                       over the union vocabulary
  centralized          pooled data of all markets (S²CE)        adapt
  fedavg_ce            federated, CE                            plain
  fecosr               federated, S²CE                          adapt
  fecosr_no_s2ce       federated, CE                            adapt
  fecosr_no_adapt      federated, S²CE                          plain
  fecosr_no_finetune   federated, S²CE                          none (evaluated as is)
  fedavg_id            federated, CE, item-ID model over the    plain
                       union vocabulary (catalogues matched by id)

The one-to-one methods (`transfer`, `transfer_id`) take their source from
config.transfer_source, or from the method name: `transfer_id@de` pretrains on market de, and
`transfer_id@each` stands for one such method per market (each market in turn as the source).

Centralised training is the pooled-data reference: each step draws a batch from every market
and applies Adam to the example-weighted mean gradient. It runs through the same compiled
round with K = 1, SGD lr 1 clients and an Adam server (lr = client lr), for num_rounds *
local_steps steps, the same number of gradient steps per market as federated pretraining.

Without semantic vectors every text method refuses with the reason; `local` then trains an
ID-only model and `fedavg_id` still runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fecosr_jax import keys
from fecosr_jax.data.split import (
    MarketSplit,
    StackedMarkets,
    stack_markets,
    to_union_vocabulary,
    union_vocabulary,
)
from fecosr_jax.errors import ConfigError
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.federated.privacy import DPConfig
from fecosr_jax.model import ModelConfig, init_params


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """What a pretraining is, as data.

    Attributes:
      loss: "s2ce" (config.federated's alpha and tau_s), "ce" (S²CE's program with alpha 0)
        or "id_ce" (plain CE of an item-ID model over the union vocabulary, no text vectors).
      scope: "federated" (every market a client), "pooled" (every market's data in one
        Adam step, through the round with K = 1: centralized_config) or "source" (one source
        market alone).
    """

    loss: str
    scope: str

    @property
    def items(self) -> str:
        """How items are represented: "id" (union vocabulary) or "text" (A(s_i))."""
        return "id" if self.loss == "id_ce" else "text"


# The pretrainings, by the name their logs and checkpoints carry.
PRETRAININGS = {
    "federated_s2ce": Pretraining("s2ce", "federated"),
    "federated_ce": Pretraining("ce", "federated"),
    "central_s2ce": Pretraining("s2ce", "pooled"),
    "source_s2ce": Pretraining("s2ce", "source"),
    "federated_id_ce": Pretraining("id_ce", "federated"),
    "source_id_ce": Pretraining("id_ce", "source"),
}


def adjust(pretraining: Pretraining, fed: FedConfig) -> FedConfig:
    """A run's federated settings for this pretraining."""
    if pretraining.loss == "id_ce":
        fed = dataclasses.replace(fed, loss="ce")
    else:  # CE is S²CE with alpha = 0: one compiled round serves both
        alpha = fed.alpha if pretraining.loss == "s2ce" else 0.0
        fed = dataclasses.replace(fed, loss="s2ce", alpha=alpha)
    return centralized_config(fed) if pretraining.scope == "pooled" else fed


def share_a_round(a: str, b: str) -> bool:
    """Whether two pretrainings run as runs of one compiled round on the same markets (S²CE
    and CE over the same scope and items), so they can train together."""
    pa, pb = PRETRAININGS[a], PRETRAININGS[b]
    text_losses = {pa.loss, pb.loss} <= {"s2ce", "ce"}
    return text_losses and pa.scope == pb.scope != "source"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    pretraining: str | None  # key of PRETRAININGS, or None
    finetune: str | None  # fine-tuning mode, or None
    needs_semantics: bool


SPECS = {
    "local": MethodSpec(None, "scratch", False),
    "transfer": MethodSpec("source_s2ce", "adapt", True),
    "transfer_id": MethodSpec("source_id_ce", "plain", False),
    "centralized": MethodSpec("central_s2ce", "adapt", True),
    "fedavg_ce": MethodSpec("federated_ce", "plain", True),
    "fecosr": MethodSpec("federated_s2ce", "adapt", True),
    "fecosr_no_s2ce": MethodSpec("federated_ce", "adapt", True),
    "fecosr_no_adapt": MethodSpec("federated_s2ce", "plain", True),
    "fecosr_no_finetune": MethodSpec("federated_s2ce", None, True),
    "fedavg_id": MethodSpec("federated_id_ce", "plain", False),
}


METHODS = tuple(SPECS)  # every method, in the table's order ("all")

SOURCE_METHODS = ("transfer", "transfer_id")  # one-to-one: they take a source market


def split_method(method: str) -> tuple[str, str | None]:
    """A method name and its source market: transfer_id@de -> (transfer_id, de); a name
    without a source -> (name, None)."""
    base, at, source = method.partition("@")
    return base, (source if at else None)


def uses_s2ce(method: str) -> bool:
    """Whether a method's pretraining uses the S²CE loss."""
    kind = SPECS[split_method(method)[0]].pretraining
    return kind is not None and PRETRAININGS[kind].loss == "s2ce"


def parse_methods(text: str) -> list[str]:
    """Method names from a comma-separated config string ("all" = every method). A one-to-one
    method may name its source: "transfer_id@de", or "transfer_id@each" (expand_sources)."""
    names = list(METHODS) if text.strip() == "all" else [m for m in text.split(",") if m]
    parts = [split_method(m) for m in names]
    unknown = [m for m, (base, _) in zip(names, parts, strict=True) if base not in SPECS]
    bad = [
        m
        for m, (base, source) in zip(names, parts, strict=True)
        if source is not None and (base not in SOURCE_METHODS or not source)
    ]
    if bad:
        raise ConfigError(
            f"config.methods: {', '.join(bad)}: only {' and '.join(SOURCE_METHODS)} take a "
            "source market (METHOD@MARKET or METHOD@each)"
        )
    if unknown:
        raise ConfigError(f"config.methods: unknown methods {unknown}; known: {', '.join(METHODS)}")
    if not names:
        raise ConfigError("config.methods is empty")
    return names


def expand_sources(
    methods: list[str], markets: list[str], members: list[str] | None = None
) -> list[str]:
    """Replaces METHOD@each by one METHOD@MARKET per market that pretrains (`members`,
    default every market); a named source must be such a market."""
    members = markets if members is None else members
    out = []
    for method in methods:
        base, source = split_method(method)
        if source == "each":
            out += [f"{base}@{m}" for m in members]
            continue
        if source is not None and source not in markets:
            raise ConfigError(
                f"config.methods: {method}: {source!r} is not a market of this dataset "
                f"({', '.join(markets)})"
            )
        if source is not None and source not in members:
            raise ConfigError(
                f"config.methods: {method}: {source!r} does not take part in pretraining "
                f"(config.data.newcomers; the markets that do: {', '.join(members)})"
            )
        out.append(method)
    return list(dict.fromkeys(out))


def takes_the_default_source(methods: Sequence[str]) -> bool:
    """Whether a one-to-one method of `methods` names no source, so that it pretrains on the
    run's default (config.transfer_source, else the market with most training targets)."""
    parts = [split_method(m) for m in methods]
    return any(base in SOURCE_METHODS and source is None for base, source in parts)


def refusal(
    method: str,
    stacked: StackedMarkets,
    splits: list[MarketSplit],
) -> str | None:
    """Why a method cannot run on this data, or None."""
    method = split_method(method)[0]
    if SPECS[method].needs_semantics and stacked.semantics is None:
        return (
            f"{method} needs item semantic vectors (S²CE / text model) and this dataset "
            "has none: set config.data.semantics (text, npy) to run it"
        )
    if method in ("fedavg_id", "transfer_id") and len(splits) > 1:
        vocab = np.concatenate([s.item_ids for s in splits])
        if len(np.unique(vocab)) == len(vocab):
            return f"{method} needs catalogues that share item ids; these markets share none"
    return None


def id_model_config(base: ModelConfig, num_items: int) -> ModelConfig:
    """An ID-only SASRec over num_items + 1 indices (no text adaptor)."""
    return dataclasses.replace(
        base, use_text=False, num_item_ids=num_items + 1, item_id_init="normal"
    )


def id_stacked(
    splits: list[MarketSplit],
    multiple: int,
    keep: list[int] | None = None,
    vocabulary: np.ndarray | None = None,
) -> StackedMarkets:
    """The markets over one item vocabulary (default the union of all `splits`' catalogues),
    with placeholder semantics [M, V + 1, 1]; `keep` = the indices of the markets to stack
    (default all)."""
    vocabulary = union_vocabulary(splits) if vocabulary is None else vocabulary
    chosen = splits if keep is None else [splits[i] for i in keep]
    union = to_union_vocabulary(chosen, vocabulary)
    stacked = stack_markets(union, num_markets_multiple=multiple)
    zeros = np.zeros((*stacked.item_mask.shape, 1), np.float32)
    return dataclasses.replace(stacked, semantics=zeros)


def extend_item_ids(params, model: ModelConfig, num_item_ids: int, seed: int):
    """`params` of an item-ID `model` with rows appended to its item-ID table up to
    `num_item_ids`, for the items its pretraining never saw (a newcomer's): drawn like the
    model's own item-ID init, normal with std item_id_std (0: hidden ** -0.5), from
    keys.derive(seed, keys.NEW_ITEMS). Fine-tuning then learns them."""
    table = params["item_ids"]["embedding"]
    extra = num_item_ids - table.shape[0]
    if extra <= 0:
        return params
    std = model.item_id_std or model.hidden**-0.5
    key = keys.derive(seed, keys.NEW_ITEMS)
    rows = std * jax.random.normal(key, (extra, table.shape[1]), table.dtype)
    item_ids = {**params["item_ids"], "embedding": jnp.concatenate([table, rows])}
    return {**params, "item_ids": item_ids}


def centralized_config(fed: FedConfig) -> FedConfig:
    """Pooled-data training through the round: K = 1, SGD lr 1 clients, Adam server."""
    return dataclasses.replace(
        fed,
        local_steps=1,
        client_optimizer="sgd",
        client_lr=1.0,
        server_optimizer="fedadam",
        server_lr=fed.client_lr,
        server_b1=0.9,
        server_b2=0.999,
        server_eps=1e-8,
        fedprox_mu=0.0,
        clients_per_round=0,
        weighting="examples",
        dp=DPConfig(),  # pooled raw data has left the markets: nothing to protect here
    )


def default_source(stacked: StackedMarkets, among: Sequence[int] | None = None) -> int:
    """The transfer source by default: the real market with the most training targets (of
    the markets `among`, default all)."""
    allowed = np.asarray(stacked.market_mask, bool).copy()
    if among is not None:
        allowed &= np.isin(np.arange(allowed.size), among)
    return int(np.argmax(np.where(allowed, stacked.num_train_targets, -1)))


def initial_params(model_config: ModelConfig, seed: int, semantic_dim: int):
    return init_params(model_config, jax.random.key(seed), semantic_dim)
