"""The federated algorithm's settings, as one frozen dataclass (built from config.federated)."""

from __future__ import annotations

import dataclasses

LOSSES = ("s2ce", "ce")
LOSS_IMPLS = ("dense", "blockwise")
CLIENT_OPTIMIZERS = ("adam", "sgd")
SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")
WEIGHTINGS = ("examples", "uniform")


@dataclasses.dataclass(frozen=True)
class FedConfig:
    """One federated round's settings (DESIGN.md §2, Federated optimisation).

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

    def __post_init__(self):
        choices = {
            "loss": (self.loss, LOSSES),
            "loss_impl": (self.loss_impl, LOSS_IMPLS),
            "client_optimizer": (self.client_optimizer, CLIENT_OPTIMIZERS),
            "server_optimizer": (self.server_optimizer, SERVER_OPTIMIZERS),
            "weighting": (self.weighting, WEIGHTINGS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"config.federated.{name}={value!r}: expected one of {allowed}")
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
        for name, ok in ranges.items():
            if not ok:
                raise ValueError(f"config.federated.{name}={getattr(self, name)!r} is out of range")
