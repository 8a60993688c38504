"""Stage 2's settings (docs/design.md §2): the fine-tuning modes, a run's settings
(`FinetuneConfig`) and the per-run values the compiled epoch takes as arrays (`FinetuneValues`),
and the architecture each mode fine-tunes (`model_config_for`).

Modes:
  "adapt":   the market-specific adaptation module: an item-ID embedding table added to A(s_i)
             (zero-initialised) and bottleneck adapters after each block (up-projection
             zero-initialised), so fine-tuning starts exactly at the pretrained model. The shared
             part is frozen (shared_lr_mult = 0) or trained with lr * shared_lr_mult.
  "plain":   the pretrained model itself, all of it trained with lr (no adaptation module).
  "scratch": the adapt-mode architecture from a random init, all of it trained with lr: the
             `local` paradigm (each market alone).
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import numpy as np

from fecosr_jax.errors import ConfigError, check_ranges
from fecosr_jax.model import ModelConfig

MODES = ("adapt", "plain", "scratch")


@flax.struct.dataclass
class FinetuneValues:
    """Per-run values of fine-tuning, as arrays (scalars; [R] on a run axis).

    Attributes:
      seed: int32, seeds batches and dropout.
      lr: float32, the learning rate of the market-specific parts (all of plain / scratch).
      shared_lr: float32, adapt mode: the shared part's learning rate (lr * shared_lr_mult).
      dropout_keep: float32 keep probability of the model's dropout, for runs whose rates
        differ (fecosr_jax.runs.groups.dropout); None = the model config's rate, a constant.
    """

    seed: jax.Array
    lr: jax.Array
    shared_lr: jax.Array
    dropout_keep: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Attributes:
    mode: "adapt", "plain" or "scratch" (module docstring).
    lr: learning rate (Adam) of the market-specific parts and of plain/scratch training.
    shared_lr_mult: adapt mode: the shared part's lr multiplier (0 = frozen).
    adapter_dim: width of the bottleneck adapters (adapt, scratch).
    batch_size: training rows per step.
    steps_per_epoch: optimiser steps between validations; 0 = one pass over the largest
      market's training rows.
    max_epochs, patience, min_budget: each market keeps its best validation NDCG@10 epoch's
      parameters. By default (min_budget 1) every market of every method trains all
      max_epochs, so the stopping rule cannot decide a comparison (docs/results.md "Early
      stopping"). Early stopping is an opt-in for speed: with min_budget < 1 a market stops
      once `patience` epochs have passed without a new best and it has trained `min_epochs` =
      ceil(min_budget * max_epochs) epochs, the same for every method (0 = patience alone).
      An epoch is `steps_per_epoch` optimiser steps, the same for every market and method on
      the same data, so patience and budget count the same steps.
    loss_impl, block_size: dense or blockwise CE (large catalogues).
    markets_per_step: (run, market) pairs a device fine-tunes together (vmapped); the rest
      follow in sequence inside the same compiled epoch. 0 = one at a time on a CPU (there a
      sequence of small products is faster than a batch of them, and a market that has
      stopped is skipped instead of computed and discarded), all at once on an accelerator
      (a batch fills it). Settings agree up to rounding (XLA orders a batched product
      differently); the test config's results.json is byte-identical across them.
    eval_batch_size: users scored at once in validation.
    seed: batches and dropout come from (seed, epoch, market, step).
    """

    mode: str = "adapt"
    lr: float = 1e-3
    shared_lr_mult: float = 0.1
    adapter_dim: int = 16
    batch_size: int = 64
    steps_per_epoch: int = 0
    max_epochs: int = 30
    patience: int = 3
    min_budget: float = 1.0
    loss_impl: str = "dense"
    block_size: int = 4096
    markets_per_step: int = 0
    eval_batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"config.finetune: mode={self.mode!r}: expected one of {MODES}")
        if self.shared_lr_mult < 0 or self.max_epochs < 1 or self.patience < 1:
            raise ConfigError(f"config.finetune: out of range: {self}")
        checks = {
            "min_budget": (0 <= self.min_budget <= 1, "a share of max_epochs, 0 to 1"),
            "markets_per_step": (
                self.markets_per_step >= 0,
                "0 (auto) or a positive number of markets",
            ),
        }
        check_ranges("config.finetune", self, checks)

    def values(self) -> FinetuneValues:
        """This config's per-run values (host arrays)."""
        return FinetuneValues(
            seed=np.asarray(self.seed, np.int32),
            lr=np.asarray(self.lr, np.float32),
            shared_lr=np.asarray(self.lr * self.shared_lr_mult, np.float32),
        )

    def program(self) -> FinetuneConfig:
        """What shapes the compiled epoch, per-run values and the host's stopping rule
        replaced by placeholders. The shared part stays frozen or trained (mult 0 or not)."""
        return dataclasses.replace(
            self,
            seed=0,
            lr=0.0,
            shared_lr_mult=1.0 if self.shared_lr_mult else 0.0,
            max_epochs=1,
            patience=1,
            min_budget=0.0,
        )

    @property
    def min_epochs(self) -> int:
        """Epochs every market trains before early stopping may end it."""
        return math.ceil(self.min_budget * self.max_epochs - 1e-9)


def model_config_for(base: ModelConfig, ft: FinetuneConfig, num_items: int) -> ModelConfig:
    """The fine-tuning architecture: base + adaptation module (adapt, scratch) over
    num_items + 1 item indices."""
    if ft.mode == "plain":
        return base
    return dataclasses.replace(
        base,
        num_item_ids=num_items + 1,
        adapter_dim=ft.adapter_dim,
        item_id_init="zeros" if ft.mode == "adapt" else "normal",
    )
