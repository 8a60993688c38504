"""The ml_collections config as typed dataclasses, built in one place, and checked as a whole
before anything is read or written.

`model`, `federated`, `finetune`, `data`, `synthetic` and `evaluation` turn the config's
sections into fecosr_jax's dataclasses (model, federated pretraining, fine-tuning per mode,
data, synthetic data, evaluation), each of which checks its own fields. `check` builds them
all and checks the fields without a dataclass (rounds, learning rates, runs, devices);
ConfigError names the first bad field, its value and what is expected.
"""

from __future__ import annotations

import ml_collections

from fecosr_jax import evaluation as evaluation_lib
from fecosr_jax import mesh
from fecosr_jax.data import sources
from fecosr_jax.data import synthetic as synthetic_lib
from fecosr_jax.errors import ConfigError
from fecosr_jax.federated import privacy
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.finetune.config import MODES, FinetuneConfig
from fecosr_jax.model import ModelConfig
from fecosr_jax.runs import paradigms


def model(config: ml_collections.ConfigDict) -> ModelConfig:
    """config.model, with the sequence length of config.data."""
    return ModelConfig(max_len=config.data.max_len, **config.model.to_dict())


def federated(config: ml_collections.ConfigDict) -> FedConfig:
    """config.federated, seeded by config.seed."""
    return FedConfig(seed=config.seed, **config.federated.to_dict())


def finetune(config: ml_collections.ConfigDict, mode: str) -> FinetuneConfig:
    """config.finetune in one mode (fecosr_jax.finetune.config.MODES), seeded by config.seed,
    validating with config.eval's batch size."""
    return FinetuneConfig(
        mode=mode,
        seed=config.seed,
        eval_batch_size=config.eval.batch_size,
        **config.finetune.to_dict(),
    )


def data(config: ml_collections.ConfigDict) -> sources.DataConfig:
    """config.data."""
    return sources.DataConfig(**config.data.to_dict())


def synthetic(config: ml_collections.ConfigDict) -> synthetic_lib.SyntheticConfig:
    """config.synthetic (the generator's settings, read when config.data.format is synthetic)."""
    return synthetic_lib.SyntheticConfig(**config.synthetic.to_dict())


def evaluation(config: ml_collections.ConfigDict) -> evaluation_lib.EvalConfig:
    """config.eval."""
    return evaluation_lib.EvalConfig(**config.eval.to_dict())


def check(config: ml_collections.ConfigDict) -> None:
    """Checks every field before anything is read or written; ConfigError names the first
    bad one (the dataclasses check their own fields)."""
    model(config)
    fed_config = federated(config)
    for mode in MODES:
        finetune(config, mode)
    privacy.check_sent(fed_config.dp, fed_config.weighting, data(config).catalogue)
    evaluation(config)
    if config.data.format == "synthetic":
        synthetic(config)
    paradigms.parse_methods(config.methods)
    c, fed, ft = config, config.federated, config.finetune
    checks = {
        "num_rounds": (c.num_rounds, c.num_rounds >= 1, "at least 1 federated round"),
        "federated.client_lr": (fed.client_lr, fed.client_lr > 0, "a positive learning rate"),
        "federated.server_lr": (fed.server_lr, fed.server_lr > 0, "a positive learning rate"),
        "finetune.lr": (ft.lr, ft.lr > 0, "a positive learning rate"),
        "finetune.batch_size": (ft.batch_size, ft.batch_size >= 1, "at least 1 row per step"),
        "finetune.steps_per_epoch": (ft.steps_per_epoch, ft.steps_per_epoch >= 0, "0 or more"),
        "finetune.adapter_dim": (ft.adapter_dim, ft.adapter_dim >= 0, "0 (no adapter) or more"),
    }
    runs_per_step = c.get("runs_per_step", 0)
    checks["runs_per_step"] = (
        runs_per_step,
        isinstance(runs_per_step, int) and runs_per_step >= 0,
        "0 (every run at once) or a positive number of runs trained together",
    )
    for field, (value, ok, expected) in checks.items():
        if not ok:
            raise ConfigError(f"config.{field}={value!r}: expected {expected}")
    mesh.run_devices(c.get("num_devices", 0))  # refuses a device count this machine lacks
