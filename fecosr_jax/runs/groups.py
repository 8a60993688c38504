"""Groups of runs: which runs train together on the run axis of one set of compiled programs.

A run is one seed of one config, with its own workdir and outputs. Runs whose configs differ
only in per-run values (`VALUE_FIELDS`: the seed, S²CE's alpha and tau_s, the learning
rates, FedProx's mu, the dropout rate, DP's privacy budget) reach the compiled round,
fine-tuning epoch and evaluation as array arguments (fecosr_jax.federated.config.FedValues,
fecosr_jax.finetune.loop.FinetuneValues), so they form a group: every method trains the group's
runs together, `config.runs_per_step` at a time. Everything else (data, sizes, methods,
optimiser kinds, FedProx on or off, DP on or off, a frozen or trained shared part, dropout
on or off) must be equal within a group; `check_group` names what is not.

Groups come from `--config.seeds=N` (one run per seed) and from experiments.main's
`--run=NAME:FIELD=VALUE,...` (one run per flag, in WORKDIR/NAME), which launch/sweep.py
uses for the grid points that differ only in values.

`Run` is one run of a group as the runner and the pretrainer see it; `stack`, `run_part` and
`classes` put runs on the run axis, take one off it, and find runs that would train the same.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np

from fecosr_jax.errors import BadInput, ConfigError
from fecosr_jax.federated import round as round_lib
from fecosr_jax.model import ModelConfig, keep_probability

if TYPE_CHECKING:
    from fecosr_jax.store import metrics_log, resume

VALUE_FIELDS = (
    "seed",
    "federated.alpha",
    "federated.temperature",
    "federated.client_lr",
    "federated.server_lr",
    "federated.fedprox_mu",
    "finetune.lr",
    "finetune.shared_lr_mult",
    "model.dropout",
    "federated.dp.target_epsilon",
    "federated.dp.noise_multiplier",
)
# Values whose zero changes the program: FedProx off, the shared part frozen, no dropout.
_ZERO_IS_STRUCTURE = ("federated.fedprox_mu", "finetune.shared_lr_mult", "model.dropout")
# Fields of the group, not of one run.
_GROUP_FIELDS = ("seeds", "runs_per_step")
_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


class GroupError(BadInput):
    """Runs that cannot form a group, or a --run flag that cannot be read (bad input)."""


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
        raise ConfigError(
            f"config.seeds={text!r}: expected a count of seeds (--config.seeds=3) or a "
            "comma-separated list of distinct seeds (--config.seeds=0,1,2)"
        )
    return seeds


def with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of one seed's run."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.seed = seed
    config.seeds = "1"
    return config


def parse_run(text: str) -> tuple[str, dict[str, str]]:
    """`NAME:FIELD=VALUE,FIELD=VALUE` (a --run flag) -> (NAME, {FIELD: VALUE}); FIELD is one
    of VALUE_FIELDS. GroupError says what is wrong (the caller names the flag)."""
    name, colon, rest = text.partition(":")
    if not colon or not _NAME.match(name):
        raise GroupError(
            "expected NAME:FIELD=VALUE,... with NAME of letters, digits and "
            "._+- (e.g. --run=alpha0.5_seed1:federated.alpha=0.5,seed=1)"
        )
    values = {}
    for item in filter(None, rest.split(",")):
        field, eq, value = item.partition("=")
        if not eq or field not in VALUE_FIELDS:
            raise GroupError(
                f"{item!r}: a run sets FIELD=VALUE for FIELD one of "
                f"{', '.join(VALUE_FIELDS)} (other fields change the program: another process)"
            )
        values[field] = value
    return name, values


def run_config(
    config: ml_collections.ConfigDict, values: dict[str, str]
) -> ml_collections.ConfigDict:
    """`config` with the per-run values set (parsed as the type of the field they replace)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field, text in values.items():
        *parents, leaf = field.split(".")
        node = config
        for p in parents:
            node = node[p]
        kind = type(node[leaf])
        try:
            node[leaf] = kind(float(text)) if kind is not int else int(text)
        except ValueError as e:
            raise GroupError(f"{field}={text!r}: expected a {kind.__name__}") from e
    return config


def _program_fields(config: ml_collections.ConfigDict) -> dict[str, object]:
    """The flattened config without its per-run values (a zero that is structure kept as
    zero or not) and without the group's own fields."""
    flat: dict[str, object] = {}

    def walk(prefix, node):
        for key, value in node.items():
            field = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{field}.", value)
            elif field in _ZERO_IS_STRUCTURE:
                flat[field] = f"{'non' if value else ''}zero"
            elif field not in VALUE_FIELDS and field not in _GROUP_FIELDS:
                flat[field] = value

    walk("", config.to_dict())
    return flat


def check_group(configs: list[ml_collections.ConfigDict], names: list[str]) -> None:
    """Raises GroupError naming the first field (other than a per-run value) in which a
    run's config differs from the first run's."""
    first = _program_fields(configs[0])
    for config, name in zip(configs[1:], names[1:], strict=True):
        fields = _program_fields(config)
        for field in sorted(set(first) | set(fields)):
            a, b = first.get(field), fields.get(field)
            if a != b:
                raise GroupError(
                    f"runs {names[0]} and {name} differ in config.{field} "
                    f"({json.dumps(a)} vs {json.dumps(b)}): only {', '.join(VALUE_FIELDS)} "
                    "may differ between the runs of one group (run the others separately)"
                )


def chunks(items: list, size: int) -> list[list]:
    """items in consecutive groups of `size` (0 = one group)."""
    size = size or len(items) or 1
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclasses.dataclass
class Run:
    """One run of a group: a seed's config, workdir, log and checkpoints (its own outputs)."""

    seed: int
    config: ml_collections.ConfigDict
    workdir: str
    label: str  # prefix of its log lines ("" for a run alone; "seed 1", "alpha0.5_seed1")
    log: metrics_log.RunLog | None  # opened once the data has loaded
    checkpoints: resume.RunCheckpoints
    soft_labels: dict = dataclasses.field(default_factory=dict)  # for results.json


def run_part(tree, i: int, grouped: bool):
    """Run i's part of a tree with a leading run axis (the tree itself for one run)."""
    return jax.tree.map(lambda x: x[i], tree) if grouped else tree


def stack(trees: list):
    """One tree alone, or several on a leading run axis."""
    return trees[0] if len(trees) == 1 else round_lib.stack_runs(trees)


def identity(values) -> tuple[float, ...]:
    """A hashable form of a run's values (FedValues, FinetuneValues)."""
    return tuple(float(np.asarray(x)) for x in jax.tree.leaves(values))


def dropout(model: ModelConfig, rates: list[float]) -> tuple[ModelConfig, np.ndarray | None]:
    """The model config and the dropout keep probabilities (values' `dropout_keep`) that train
    runs with dropout rates `rates` together. One rate stays a constant of the program, so
    such runs compute bit for bit what they compute alone; several reach it as data, [R]
    float32 (XLA folds a constant rate into the products, so the rate as data moves results
    by rounding, ~1e-5 in a gradient)."""
    if len(set(rates)) == 1:
        return dataclasses.replace(model, dropout=rates[0]), None
    return model, np.stack([keep_probability(r) for r in rates])


def together(model: ModelConfig, values: list, rates: list[float]):
    """(model config, values) that train runs with per-run `values` (FedValues or
    FinetuneValues, one per run) and dropout rates `rates` together: the values stacked on a
    run axis with the rates' keep probabilities (`dropout`), or None for one run (the
    program's own values)."""
    model, keep = dropout(model, rates)
    if len(values) == 1:
        return model, None
    return model, round_lib.stack_runs(values).replace(dropout_keep=keep)


def classes(items: list, identity: Callable) -> list[list]:
    """The items in classes of equal identity (in order of first appearance)."""
    out: dict[tuple, list] = {}
    for item in items:
        out.setdefault(identity(item), []).append(item)
    return list(out.values())
