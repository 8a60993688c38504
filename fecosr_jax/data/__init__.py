"""Market data: loaders, the leave-one-out split, stacked device arrays, synthetic markets."""

from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import (
    Interactions,
    Market,
    catalogue_overlap,
    kcore_filter,
    market_from_interactions,
)
from fecosr_jax.data.split import (
    MarketSplit,
    StackedMarkets,
    leave_one_out,
    stack_markets,
    train_pairs,
)

__all__ = [
    "DataError",
    "Interactions",
    "Market",
    "MarketSplit",
    "StackedMarkets",
    "catalogue_overlap",
    "kcore_filter",
    "leave_one_out",
    "market_from_interactions",
    "stack_markets",
    "train_pairs",
]
