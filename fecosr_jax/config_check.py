"""The config checked as a whole, before anything is read or written: each dataclass
(model, federated, fine-tuning per mode, synthetic data) checks its own fields, and the
fields without one (rounds, learning rates, sizes, evaluation, data) are checked here.
ConfigError names the first bad field, its value and what is expected."""

from __future__ import annotations

import ml_collections

from fecosr_jax import evaluation, finetune, mesh, paradigms, pretraining, runner
from fecosr_jax.data import synthetic
from fecosr_jax.errors import ConfigError


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**config.synthetic.to_dict())


def check(config: ml_collections.ConfigDict) -> None:
    """Checks every field before anything is read or written; ConfigError names the first
    bad one (the dataclasses check their own fields)."""
    pretraining.model_config(config)
    pretraining.fed_config(config)
    for mode in finetune.MODES:
        runner.finetune_config(config, mode)
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
        "finetune.adapter_dim": (ft.adapter_dim, ft.adapter_dim >= 1, "at least 1"),
        "eval.batch_size": (c.eval.batch_size, c.eval.batch_size >= 1, "at least 1 user"),
        "eval.protocol": (
            c.eval.protocol,
            c.eval.protocol in evaluation.PROTOCOLS,
            f"one of {', '.join(evaluation.PROTOCOLS)}",
        ),
        "data.max_len": (c.data.max_len, c.data.max_len >= 1, "at least 1 item"),
        "data.min_interactions": (
            c.data.min_interactions,
            c.data.min_interactions >= 3,
            "at least 3 (a training, a validation and a test item)",
        ),
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
    names = [m for m in str(c.data.markets).split(",") if m]
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ConfigError(f"config.data.markets={c.data.markets!r}: {', '.join(repeated)} twice")
    mesh.run_devices(c.get("num_devices", 0))  # refuses a device count this machine lacks
