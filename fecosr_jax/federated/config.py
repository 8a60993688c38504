"""The federated algorithm's settings (built from config.federated), split in two:

- `FedConfig`, the frozen dataclass a user sets, and `FedConfig.program()`, the part of it
  that shapes the compiled round (sizes, K, batch, optimiser kinds, loss form): a static
  argument, so equal programs are compiled once.
- `FedValues`, the per-run values (seed, alpha, tau_s, learning rates, FedProx mu): array
  arguments of the compiled round, so runs that differ only in them (seeds, S²CE against CE,
  a sweep over alpha) share one program.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import numpy as np

from fecosr_jax.errors import ConfigError, check_ranges
from fecosr_jax.federated.privacy import DPConfig

LOSSES = ("s2ce", "ce")
LOSS_IMPLS = ("dense", "blockwise")
CLIENT_OPTIMIZERS = ("adam", "sgd")
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")
WEIGHTINGS = ("examples", "uniform")


@flax.struct.dataclass
class FedValues:
    """Per-run values of federated training, as arrays (scalars; [R] on a run axis).

    Attributes:
      seed: int32, seeds participation, batches and dropout.
      alpha: float32, the S²CE soft-label weight (0 = CE).
      temperature: float32, tau_s of the soft label.
      client_lr, server_lr: float32 learning rates.
      fedprox_mu: float32 FedProx weight (used when the program has FedProx on).
      dropout_keep: float32 keep probability of the model's dropout, for runs whose rates
        differ (fecosr_jax.runs.groups.dropout); None = the model config's rate, a constant.
      dp_noise: [M] float32 noise multipliers (sigma per market; [R, M] on a run axis) for
        runs whose sigmas differ (a sweep over the privacy budget); None = the round data's
        dp_noise, the same for every run.
    """

    seed: jax.Array
    alpha: jax.Array
    temperature: jax.Array
    client_lr: jax.Array
    server_lr: jax.Array
    fedprox_mu: jax.Array
    dropout_keep: jax.Array | None = None
    dp_noise: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class FedConfig:
    """One federated round's settings (docs/design.md §2, Federated optimisation).

    Attributes:
      local_steps: K optimiser steps per client per round.
      batch_size: sequences per local step (sampled uniformly from the market's users).
      client_optimizer, client_lr: the local optimiser.
      server_optimizer, server_lr: FedAvg (SGD on the mean delta; lr 1 = plain averaging),
        FedAdam or FedYogi (Reddi et al. 2021) with server_b1, server_b2, server_eps.
      fedprox_mu: FedProx proximal weight mu ((mu / 2) * ||w - w_global||^2); 0 = off.
      clients_per_round: markets sampled per round from (seed, round); 0 = all markets.
      weighting: aggregation weights, "examples" (training targets) or "uniform".
      loss: "s2ce" or "ce"; alpha and temperature (tau_s) are S²CE's.
      loss_impl: "dense" ([B, L, N] logits) or "blockwise" (never materialised).
      block_size: items per block for the blockwise loss.
      markets_per_step: markets trained together (vmapped) on a device; the device's other
        markets follow in sequence inside the same compiled round (lax.map with batch_size).
        0 = all of them at once. Small values bound memory at large M and suit CPUs, where a
        batched product of many small matrices is slower than a sequence of them.
      seed: seeds participation, batches and dropout: keys come from (seed, round, market,
        step), so a resumed run repeats them exactly.
      dp: user-level differential privacy of every local step (federated/privacy.py).

    seed, alpha, temperature, client_lr, server_lr and fedprox_mu reach the compiled round as
    `values()`, not as constants; `program()` is the rest.
    """

    local_steps: int = 5
    batch_size: int = 32
    client_optimizer: str = "adam"
    client_lr: float = 1e-3
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    server_b1: float = 0.9
    server_b2: float = 0.99
    server_eps: float = 1e-3
    fedprox_mu: float = 0.0
    clients_per_round: int = 0
    weighting: str = "examples"
    loss: str = "s2ce"
    alpha: float = 0.2
    temperature: float = 0.1
    loss_impl: str = "dense"
    block_size: int = 4096
    markets_per_step: int = 0
    seed: int = 0
    dp: DPConfig = DPConfig()

    def __post_init__(self):
        if isinstance(self.dp, dict):  # from config.federated.to_dict()
            object.__setattr__(self, "dp", DPConfig(**self.dp))
        choices = {
            "loss": (self.loss, LOSSES),
            "loss_impl": (self.loss_impl, LOSS_IMPLS),
            "client_optimizer": (self.client_optimizer, CLIENT_OPTIMIZERS),
            "server_optimizer": (self.server_optimizer, SERVER_OPTIMIZERS),
            "weighting": (self.weighting, WEIGHTINGS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"config.federated.{name}={value!r}: expected one of {allowed}")
        ranges = {
            "local_steps": self.local_steps >= 1,
            "batch_size": self.batch_size >= 1,
            "alpha": 0.0 <= self.alpha <= 1.0,
            "temperature": self.temperature > 0,
            "clients_per_round": self.clients_per_round >= 0,
            "fedprox_mu": self.fedprox_mu >= 0,
            "block_size": self.block_size >= 1,
            "markets_per_step": self.markets_per_step >= 0,
        }
        check_ranges("config.federated", self, ranges)

    def values(self) -> FedValues:
        """This config's per-run values (host arrays). With loss "ce" alpha is 0."""
        return FedValues(
            seed=np.asarray(self.seed, np.int32),
            alpha=np.asarray(self.alpha if self.loss == "s2ce" else 0.0, np.float32),
            temperature=np.asarray(self.temperature, np.float32),
            client_lr=np.asarray(self.client_lr, np.float32),
            server_lr=np.asarray(self.server_lr, np.float32),
            fedprox_mu=np.asarray(self.fedprox_mu, np.float32),
        )

    def program(self) -> FedConfig:
        """The settings that shape the compiled round, with every per-run value replaced by a
        placeholder: configs with equal programs share one compiled round. FedProx stays on
        or off (mu > 0), its weight is a value; DP's noise multipliers come in as data (the
        round's dp_noise, or FedValues.dp_noise), so the privacy budget is not the program's,
        nor is what the run declares public."""
        return dataclasses.replace(
            self,
            seed=0,
            alpha=0.0,
            temperature=1.0,
            client_lr=0.0,
            server_lr=0.0,
            fedprox_mu=1.0 if self.fedprox_mu else 0.0,
            dp=dataclasses.replace(self.dp, noise_multiplier=1.0, target_epsilon=0.0, public=""),
        )
