"""The experiment runner: config + workdir -> outputs in the workdir."""

from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from fecosr_jax.data import StackedMarkets, leave_one_out, stack_markets, summary, synthetic
from fecosr_jax.data.market import Market
from fecosr_jax.data.sources import markets_from_config


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**config.synthetic.to_dict())


def prepare_markets(
    config: ml_collections.ConfigDict, *, num_markets_multiple: int = 1
) -> tuple[list[Market], StackedMarkets]:
    """Loads the markets of `config.data`, splits them and stacks them on the market axis."""
    markets = markets_from_config(config.data, synthetic_config(config))
    splits = [
        leave_one_out(m, config.data.max_len, min_interactions=config.data.min_interactions)
        for m in markets
    ]
    return markets, stack_markets(splits, num_markets_multiple=num_markets_multiple)


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON through a temporary file and a rename: never a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the experiment of `config`, writing its outputs under `workdir`.

    Returns:
      A summary dict (currently the market statistics).
    """
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
    markets, stacked = prepare_markets(config)
    table = summary.format_tables(markets)
    logging.info("markets:\n%s", table)
    print(table)
    print(
        f"\nstacked: {stacked.num_markets} markets, train {stacked.train.shape}, "
        f"item_mask {stacked.item_mask.shape}, semantics "
        f"{None if stacked.semantics is None else stacked.semantics.shape}"
    )
    return {"markets": summary.market_stats(markets)}
