"""The config checked as a whole, before anything is read or written: each dataclass
(model, federated, fine-tuning per mode, data, evaluation, synthetic data) checks its own
fields, and the fields without one (rounds, learning rates, runs, devices) are checked here.
ConfigError names the first bad field, its value and what is expected."""

from __future__ import annotations

import ml_collections

from fecosr_jax import evaluation, finetune, mesh, paradigms, pretraining, runner
from fecosr_jax.data import sources, synthetic
from fecosr_jax.errors import ConfigError


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**config.synthetic.to_dict())


def data_config(config: ml_collections.ConfigDict) -> sources.DataConfig:
    return sources.DataConfig(**config.data.to_dict())


def check(config: ml_collections.ConfigDict) -> None:
    """Checks every field before anything is read or written; ConfigError names the first
    bad one (the dataclasses check their own fields)."""
    pretraining.model_config(config)
    pretraining.fed_config(config)
    for mode in finetune.MODES:
        runner.finetune_config(config, mode)
    data_config(config)
    evaluation.EvalConfig(**config.eval.to_dict())
    if config.data.format == "synthetic":
        synthetic_config(config)
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
