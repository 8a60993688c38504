"""XMRec (Bonab et al., CIKM 2021) loaders: ratings per market and item metadata.

Ratings: one row per interaction, `userId itemId rate date` separated by whitespace, an optional
header line, plain or gzip (`.gz`). Dates are YYYY-MM-DD; rows of one user with the same date
keep file order. Metadata: one item per line, each line a Python literal dict (the Amazon
format) or a JSON object, with an item id (`asin`) and a `title`; parsed with
`ast.literal_eval` (never `eval`), JSON as a fallback for `true/false/null`.
"""

from __future__ import annotations

import ast
import datetime
import glob
import gzip
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import (
    Interactions,
    Market,
    kcore_filter,
    market_from_interactions,
    repeated_rows,
)

RATING_COLUMNS = ("userId", "itemId", "rate", "date")
_HEADER_NAMES = {("userid", "itemid", "rate", "date"), ("userid", "itemid", "rating", "date")}

# Where a market's ratings file may be, relative to the data folder ({m} = market name):
# the 5-core files of FOREC / efficient-xmrec, then the full XMRec release layouts.
RATING_PATTERNS = (
    "{m}_5core.txt",
    "{m}_5core.txt.gz",
    "ratings_{m}_*.txt",
    "ratings_{m}_*.txt.gz",
    "{m}/*/ratings_{m}_*.txt",
    "{m}/*/ratings_{m}_*.txt.gz",
    "{m}/ratings*.txt",
    "{m}/ratings*.txt.gz",
)
METADATA_PATTERNS = (
    "metadata_{m}_*.json",
    "metadata_{m}_*.json.gz",
    "{m}/*/metadata_{m}_*.json",
    "{m}/*/metadata_{m}_*.json.gz",
    "{m}/metadata*.json",
    "{m}/metadata*.json.gz",
)
_EPOCH = datetime.date(1970, 1, 1)


def open_text(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a UTF-8 text file (a leading byte-order mark dropped), gunzipped when the
    name ends in .gz. A missing, binary or undecodable file, or a .gz that is not gzip, is a
    DataError naming the file (and line)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise DataError(
                        "not UTF-8 text (a binary file, or another encoding)",
                        path=path,
                        line=lineno,
                    ) from None
                if "\x00" in line:
                    raise DataError("a NUL byte: a binary file, not text", path=path, line=lineno)
                yield line
    except gzip.BadGzipFile:
        raise DataError("named .gz but not a gzip file", path=path) from None


def load_ratings(path: str | os.PathLike, *, duplicates: str = "drop") -> Interactions:
    """Reads one XMRec ratings file (`userId itemId rate date`, header optional, .gz optional).

    Args:
      path: the file.
      duplicates: "drop" (a row equal to an earlier one in all four fields goes, counted in
        the log) or "keep" (market.DUPLICATES).

    Returns:
      The rows in file order; `times` are days since 1970-01-01.

    Raises:
      DataError: missing file, wrong column count, non-numeric rating, bad date, or no rows;
        the message names the file, line and field.
    """
    users, items, times, rows = [], [], [], []
    for lineno, line in enumerate(open_text(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if lineno == 1 and tuple(p.lower() for p in parts) in _HEADER_NAMES:
            continue
        if len(parts) != 4:
            raise DataError(
                f"expected 4 columns {' '.join(RATING_COLUMNS)}, "
                f"found {len(parts)}: {line.strip()!r}",
                path=path,
                line=lineno,
            )
        user, item, rate, date = parts
        try:
            float(rate)
        except ValueError:
            raise DataError(
                f"rating {rate!r} is not a number", path=path, line=lineno, field="rate"
            ) from None
        try:
            day = (datetime.date.fromisoformat(date) - _EPOCH).days
        except ValueError:
            raise DataError(
                f"date {date!r} is not YYYY-MM-DD", path=path, line=lineno, field="date"
            ) from None
        users.append(user)
        items.append(item)
        times.append(day)
        rows.append((user, item, rate, date))
    if not users:
        raise DataError("no interactions in file", path=path)
    log = Interactions(
        users=np.asarray(users),
        items=np.asarray(items),
        times=np.asarray(times, dtype=np.float64),
        source=os.fspath(path),
    )
    return log.select(~repeated_rows(rows, os.fspath(path), duplicates))


def _item_text(record: dict) -> str:
    """Title plus the categories of a metadata record."""
    title = str(record.get("title") or "").strip()
    cats = record.get("categories") or record.get("category") or []
    flat: list[str] = []
    for c in cats if isinstance(cats, list) else [cats]:
        for name in c if isinstance(c, list) else [c]:
            name = str(name).strip()
            if name and name not in flat:
                flat.append(name)
    if flat:
        return f"{title}. Categories: {', '.join(flat)}" if title else ", ".join(flat)
    return title


def load_metadata(path: str | os.PathLike, *, id_field: str = "asin") -> dict[str, str]:
    """Reads XMRec/Amazon item metadata: item id -> text (title + categories).

    Each line is a Python literal dict (parsed with ast.literal_eval, never eval) or a JSON
    object. Lines without a title still count (their text is the categories, or "").

    Raises:
      DataError: a line that is not a literal dict, or a dict without the id field.
    """
    texts: dict[str, str] = {}
    for lineno, line in enumerate(open_text(path), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(
                    "not a Python literal dict or JSON object", path=path, line=lineno
                ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"expected a dict literal, found {type(record).__name__}", path=path, line=lineno
            )
        item = record.get(id_field)
        if item is None:
            raise DataError("missing item id", path=path, line=lineno, field=id_field)
        texts[str(item)] = _item_text(record)
    return texts


def find_market_file(
    data_dir: str | os.PathLike, market: str, patterns: Sequence[str]
) -> str | None:
    """The first file under data_dir matching one of the patterns for this market, or None."""
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(os.fspath(data_dir), pattern.format(m=market))))
        if hits:
            return hits[0]
    return None


def available_markets(data_dir: str | os.PathLike) -> list[str]:
    """Market names that have a ratings file under data_dir.

    Raises:
      DataError: data_dir is not a folder.
    """
    if not os.path.isdir(data_dir):
        raise DataError("data folder not found", path=data_dir)
    names = set()
    for path in glob.glob(os.path.join(os.fspath(data_dir), "**", "*"), recursive=True):
        base = os.path.basename(path)
        if base.endswith(("_5core.txt", "_5core.txt.gz")):
            names.add(base.split("_5core")[0])
        elif base.startswith("ratings_") and ".txt" in base:
            names.add(base.split("_")[1])
    return sorted(names)


def ratings_path(data_dir: str | os.PathLike, market: str) -> str:
    """The ratings file of a market under data_dir.

    Raises:
      DataError: unknown market (no file matches RATING_PATTERNS); the message lists the
        markets that do have files.
    """
    path = find_market_file(data_dir, market, RATING_PATTERNS)
    if path is None:
        raise DataError(
            f"unknown market '{market}': no ratings file for it "
            f"(markets found: {', '.join(available_markets(data_dir)) or 'none'})",
            path=data_dir,
            field="markets",
        )
    return path


def load_markets(
    data_dir: str | os.PathLike,
    markets: Sequence[str],
    *,
    metadata_dir: str | os.PathLike | None = None,
    kcore: int = 0,
    duplicates: str = "drop",
    published: bool = False,
) -> list[Market]:
    """Loads XMRec markets from a folder of ratings files (and optional metadata files).

    Args:
      data_dir: folder holding one ratings file per market (see RATING_PATTERNS).
      markets: market names, e.g. ["ca", "de", "fr", "uk"].
      metadata_dir: folder with metadata files (see METADATA_PATTERNS) giving item titles; None
        for ratings only.
      kcore: if > 1, k-core filter each market (users and items with >= kcore rows).
      duplicates: exact duplicate rows "drop" (counted in the log) or "keep".
      published: each market's catalogue is the items of its metadata file (what the market
        lists for sale: config.data.catalogue "published"); False = the items of its rows.

    Returns:
      One Market per name, in the given order.

    Raises:
      DataError: unknown market name (the message lists those found), bad file content.
    """
    if not os.path.isdir(data_dir):
        raise DataError("data folder not found", path=data_dir)
    if not markets:
        raise DataError("no markets given", field="markets")
    if published and metadata_dir is None:
        raise DataError(
            "the published catalogue of an XMRec market is its metadata file: set "
            "config.data.metadata_path, or use config.data.catalogue=interactions",
            field="config.data.catalogue",
        )
    out = []
    for name in markets:
        ratings = load_ratings(ratings_path(data_dir, name), duplicates=duplicates)
        interactions = kcore_filter(ratings, kcore)
        text = None
        if metadata_dir is not None:
            meta = find_market_file(metadata_dir, name, METADATA_PATTERNS)
            if meta is None:
                raise DataError(f"no metadata file for market '{name}'", path=metadata_dir)
            text = load_metadata(meta)
        catalogue = list(text) if published else None
        out.append(
            market_from_interactions(name, interactions, item_text=text, catalogue=catalogue)
        )
    return out
