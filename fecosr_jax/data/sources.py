"""One entry point for every data source: `load_source(format, path, ...)` -> markets."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fecosr_jax.data import recbole, semantics, synthetic, xmrec
from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import Interactions, Market, kcore_filter, market_from_interactions

FORMATS = ("xmrec", "recbole", "ml100k_regions", "synthetic")


def _kcore_market(market: Market, k: int) -> Market:
    """k-core filter of an already built market (used for synthetic data)."""
    if k <= 1:
        return market
    users = np.repeat(market.user_ids, market.lengths)
    items = market.item_ids[market.items - 1]
    times = np.concatenate([np.arange(n) for n in market.lengths]).astype(np.float64)
    log = kcore_filter(Interactions(users, items, times, source=market.name), k)
    kept = market_from_interactions(market.name, log)
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

    Returns:
      The markets, in order.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}', expected one of {FORMATS}", field="format")
    if fmt == "synthetic":
        out = synthetic.synthetic_markets(synthetic_config or synthetic.SyntheticConfig())
        if markets is not None:
            by_name = {m.name: m for m in out}
            unknown = [m for m in markets if m not in by_name]
            if unknown:
                raise DataError(
                    f"unknown markets {unknown} (synthetic markets are m0000..m{len(out) - 1:04d})",
                    field="markets",
                )
            out = [by_name[m] for m in markets]
        return [_kcore_market(m, kcore) for m in out]
    if path is None:
        raise DataError(f"format '{fmt}' needs a data path", field="path")
    if fmt == "xmrec":
        if not markets:
            raise DataError(
                f"xmrec needs market names (found: {', '.join(xmrec.available_markets(path))})",
                field="markets",
            )
        return xmrec.load_markets(path, markets, metadata_dir=metadata_path, kcore=kcore)
    if fmt == "ml100k_regions":
        return recbole.load_ml100k_regions(path, markets, kcore=kcore)
    return recbole.load_markets(path, dataset, markets=markets, kcore=kcore)


SEMANTIC_SOURCES = ("auto", "synthetic", "text", "npy", "random", "none")


def markets_from_config(data, synthetic_config: synthetic.SyntheticConfig) -> list[Market]:
    """Markets with semantic vectors as `config.data` asks (see experiments/configs/default.py).

    `data.semantics`: "auto" = the generator's vectors for synthetic data, else none;
    "text" = encode item text (data.text_model, cached in data.cache_dir); "npy" = the table
    data.vectors_path + data.ids_path; "random" = id-keyed random vectors (plumbing only);
    "none" = no vectors (S²CE methods then refuse to run).
    """
    if data.semantics not in SEMANTIC_SOURCES:
        raise DataError(
            f"unknown semantics source '{data.semantics}', expected one of {SEMANTIC_SOURCES}",
            field="config.data.semantics",
        )
    names = [m for m in str(data.markets).split(",") if m] or None
    markets = load_source(
        data.format,
        data.path or None,
        markets=names,
        kcore=data.kcore,
        metadata_path=data.metadata_path or None,
        dataset=data.dataset,
        synthetic_config=synthetic_config,
    )
    source = data.semantics
    if source == "auto":
        source = "synthetic" if data.format == "synthetic" else "none"
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
