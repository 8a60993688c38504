"""Synthetic cross-market data with a known structure (docs/design.md §4).

Users move between K latent semantic clusters by a first-order Markov chain; each step emits
an item of the current cluster from the market's catalogue, by the market's popularity. All
markets share one transition matrix `T` up to a heterogeneity knob. Items carry semantic
vectors = their cluster centre + noise, so semantically close items are behaviourally
interchangeable: exactly the structure S²CE assumes.

The knobs (`SyntheticConfig`) and what each does to the data:

* `num_markets`, `users_per_market`, `items_per_market`: sizes. `market_size_spread` is the
  log-normal sigma of the per-market user count (0 = all markets the same size).
* `overlap`: the fraction of each catalogue drawn from a core shared by all markets; the rest
  is private to the market. 0 = disjoint catalogues, 1 = identical catalogues. Shared items
  have the same id (`i<k>`), cluster and vector in every market.
* `heterogeneity` h in [0, 1]: market m moves by T_m = (1 - h) T + h R_m, R_m a market-private
  random transition matrix. 0 = one shared behaviour, 1 = unrelated behaviours.
* `transition_concentration`: Dirichlet concentration of each transition row; small values
  give peaked rows (predictable next clusters), large values near-uniform rows.
* `popularity_skew` (mean Zipf exponent of the within-cluster item popularity) and
  `popularity_skew_spread` (per-market log-normal spread of that exponent); each market ranks
  its items in its own random order.
* `mean_length`, `min_length`: per-user length = min_length + Poisson(mean - min).
* `semantic_dim`, `semantic_noise`: item vector = unit cluster centre + noise * N(0, I/d).
* `seed`: everything is a deterministic function of the config. Market m's data depends only
  on (seed, m) and the shared parts, so adding markets leaves existing markets unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fecosr_jax.data.market import Interactions, Market, market_from_interactions
from fecosr_jax.errors import ConfigError

# Stream tags for np.random.default_rng([seed, tag, ...]): one independent stream per purpose.
_SHARED, _MARKET = 0, 1


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_markets: int = 8
    users_per_market: int = 300
    items_per_market: int = 400
    market_size_spread: float = 0.5
    num_clusters: int = 24
    overlap: float = 0.5
    heterogeneity: float = 0.3
    transition_concentration: float = 0.1
    popularity_skew: float = 1.0
    popularity_skew_spread: float = 0.3
    mean_length: float = 12.0
    min_length: int = 5
    semantic_dim: int = 32
    semantic_noise: float = 0.3
    seed: int = 0

    def __post_init__(self):
        checks = {
            "num_markets": self.num_markets >= 1,
            "users_per_market": self.users_per_market >= 1,
            "items_per_market": self.items_per_market >= 1,
            "num_clusters": self.num_clusters >= 1,
            "overlap": 0.0 <= self.overlap <= 1.0,
            "heterogeneity": 0.0 <= self.heterogeneity <= 1.0,
            "transition_concentration": self.transition_concentration > 0,
            "min_length": self.min_length >= 3,
            "mean_length": self.mean_length >= self.min_length,
            "semantic_dim": self.semantic_dim >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"config.synthetic: invalid {bad} in {self}")


@dataclasses.dataclass(frozen=True)
class MarketTruth:
    """The generating process of one market, in its local item indices.

    Attributes:
      transitions: [K, K] the market's cluster transition matrix T_m (rows sum to 1).
      item_cluster: [N + 1] int32 cluster of each local item (index 0 = padding: -1).
      item_weight: [N + 1] float64 probability of the item within its cluster (0 for padding).
    """

    transitions: np.ndarray
    item_cluster: np.ndarray
    item_weight: np.ndarray


def _dirichlet_rows(rng: np.random.Generator, k: int, concentration: float) -> np.ndarray:
    rows = rng.dirichlet(np.full(k, concentration), size=k)
    return rows / rows.sum(axis=1, keepdims=True)


def _shared_parts(config: SyntheticConfig):
    """Cluster centres, shared transitions, core items' clusters and vectors."""
    k, d = config.num_clusters, config.semantic_dim
    rng = np.random.default_rng([config.seed, _SHARED])
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    transitions = _dirichlet_rows(rng, k, config.transition_concentration)
    n_core = round(config.overlap * config.items_per_market)
    core_cluster = rng.permutation(np.arange(n_core) % k)
    core_vectors = centres[core_cluster] + config.semantic_noise * rng.normal(
        size=(n_core, d)
    ) / np.sqrt(d)
    return centres, transitions, core_cluster, core_vectors


def _generate_market(config, m, centres, shared_t, core_cluster, core_vectors):
    """One market's interactions, item vectors (by global id) and truth (by global id)."""
    k, d = config.num_clusters, config.semantic_dim
    rng = np.random.default_rng([config.seed, _MARKET, m])
    n_core = len(core_cluster)
    n_private = config.items_per_market - n_core
    # Catalogue: the shared core plus this market's private items (global ids after the core).
    private_ids = n_core + m * n_private + np.arange(n_private)
    private_cluster = rng.permutation(np.arange(n_private) % k)
    private_vectors = centres[private_cluster] + config.semantic_noise * rng.normal(
        size=(n_private, d)
    ) / np.sqrt(d)
    ids = np.concatenate([np.arange(n_core), private_ids])
    cluster = np.concatenate([core_cluster, private_cluster]).astype(np.int32)
    vectors = np.concatenate([core_vectors, private_vectors]).astype(np.float32)

    # Behaviour: shared transitions mixed with a private matrix, restricted to clusters that
    # have items in this catalogue.
    h = config.heterogeneity
    t = (1 - h) * shared_t + h * _dirichlet_rows(rng, k, config.transition_concentration)
    present = np.bincount(cluster, minlength=k) > 0
    t = t * present[None, :]
    empty = t.sum(axis=1) == 0
    t[empty] = present / present.sum()
    t /= t.sum(axis=1, keepdims=True)

    # Popularity: Zipf over a market-specific random ranking, normalised within each cluster.
    skew = config.popularity_skew * np.exp(config.popularity_skew_spread * rng.normal())
    rank = rng.permutation(len(ids))
    weight = (rank + 1.0) ** (-skew)
    weight /= np.bincount(cluster, weights=weight, minlength=k)[cluster]

    # Sampling tables: items sorted by cluster; key = cluster + within-cluster CDF in (0, 1].
    order = np.lexsort((np.arange(len(ids)), cluster))
    sorted_cluster = cluster[order]
    cdf = np.zeros(len(ids))
    for c in np.flatnonzero(present):
        sel = sorted_cluster == c
        w = np.cumsum(weight[order][sel])
        w[-1] = 1.0
        cdf[sel] = w
    keys = sorted_cluster + cdf

    spread = config.market_size_spread
    num_users = max(
        1, round(config.users_per_market * np.exp(spread * rng.normal() - spread**2 / 2))
    )
    lengths = config.min_length + rng.poisson(config.mean_length - config.min_length, num_users)
    steps = int(lengths.max())
    t_cdf = np.cumsum(t, axis=1)
    start = present / present.sum()
    state = rng.choice(k, size=num_users, p=start)
    seq = np.zeros((num_users, steps), dtype=np.int64)
    for step in range(steps):
        pick = np.searchsorted(keys, state + rng.random(num_users), side="right")
        seq[:, step] = order[np.minimum(pick, len(ids) - 1)]
        u = rng.random(num_users)[:, None]
        state = np.minimum((u > t_cdf[state]).sum(axis=1), k - 1)
    valid = np.arange(steps)[None, :] < lengths[:, None]
    users = np.repeat(np.arange(num_users), lengths)
    rows = seq[valid]  # row-major: each user's items in time order
    name = f"m{m:04d}"
    log = Interactions(
        users=np.char.add(f"{name}-u", users.astype(str)),
        items=np.char.add("i", ids[rows].astype(str)),
        times=np.concatenate([np.arange(n) for n in lengths]).astype(np.float64),
        source=f"synthetic(seed={config.seed}, market={m})",
    )
    by_id = {f"i{g}": j for j, g in enumerate(ids.tolist())}
    return name, log, vectors, cluster, weight, t, by_id


def generate(
    config: SyntheticConfig, published: bool = False
) -> tuple[list[Market], list[MarketTruth]]:
    """Generates `config.num_markets` markets with semantic vectors and item text.

    Args:
      config: the generator's settings.
      published: each market's catalogue is the generator's (config.items_per_market items,
        its published catalogue: config.data.catalogue "published"); False = the items that
        occur in its sequences.

    Returns:
      (markets, truths): each market's data (semantics attached) and its generating process
      in local item indices.
    """
    centres, shared_t, core_cluster, core_vectors = _shared_parts(config)
    markets, truths = [], []
    for m in range(config.num_markets):
        name, log, vectors, cluster, weight, t, by_id = _generate_market(
            config, m, centres, shared_t, core_cluster, core_vectors
        )
        catalogue = list(by_id) if published else None
        market = market_from_interactions(name, log, catalogue=catalogue)
        j = np.asarray([by_id[i] for i in market.item_ids.tolist()])
        sem = np.zeros((market.num_items + 1, config.semantic_dim), np.float32)
        sem[1:] = vectors[j]
        text = tuple(
            f"synthetic item {i} of cluster {c}"
            for i, c in zip(market.item_ids.tolist(), cluster[j].tolist(), strict=True)
        )
        markets.append(market.replace(semantics=sem, item_text=text))
        truths.append(
            MarketTruth(
                transitions=t,
                item_cluster=np.concatenate([[-1], cluster[j]]).astype(np.int32),
                item_weight=np.concatenate([[0.0], weight[j]]),
            )
        )
    return markets, truths


def synthetic_markets(config: SyntheticConfig, published: bool = False) -> list[Market]:
    """The markets of `generate`, without the truth."""
    return generate(config, published)[0]
