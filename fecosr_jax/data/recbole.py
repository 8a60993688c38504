"""RecBole atomic files (.inter / .item / .user) and the "ml-100k regions" markets.

Atomic files are tab-separated with a typed header (`name:type`, types token, token_seq,
float, float_seq). Interactions need `user_id` and `item_id` fields; `timestamp` orders each
user's rows (file order on ties, or when there is no timestamp). Item text joins every
non-id field of the .item file ("Toy Story. 1995. Animation Children's Comedy" for ml-100k:
title, year, genres).

ml-100k regions (../shared/data/README.md): market = first character of the user's zip_code
when it is a digit (the ten US ZIP regions 0-9), else market "x". The catalogue is shared.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import (
    Interactions,
    Market,
    kcore_filter,
    market_from_interactions,
    repeated_rows,
)
from fecosr_jax.data.xmrec import open_text

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclasses.dataclass(frozen=True)
class AtomicTable:
    """One atomic file: field names, their types, string columns in file order, and the file
    line of each row (for messages)."""

    path: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    columns: dict[str, list[str]]
    lines: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.columns[self.names[0]]) if self.names else 0

    def column(self, name: str) -> list[str]:
        if name not in self.columns:
            raise DataError(
                f"missing field (fields: {', '.join(self.names)})", path=self.path, field=name
            )
        return self.columns[name]

    def numbers(self, name: str) -> np.ndarray:
        """A field's values as float64 whatever its declared type (a `timestamp:token`
        included); a value that is not a number is a DataError naming the file, line and
        field."""
        values = self.column(name)
        try:
            return np.asarray(values, dtype=np.float64)
        except ValueError:
            for row, value in enumerate(values):
                try:
                    float(value)
                except ValueError:
                    raise DataError(
                        f"{value!r} is not a number",
                        path=self.path,
                        line=self.lines[row] if self.lines else None,
                        field=name,
                    ) from None
            raise


def read_atomic(path: str | os.PathLike) -> AtomicTable:
    """Reads a RecBole atomic file.

    Raises:
      DataError: missing file, bad header, wrong column count, a non-numeric float field.
    """
    path = os.fspath(path)
    lines = open_text(path)
    header = next(lines, None)
    if header is None or not header.strip():
        raise DataError(
            "empty file: expected a header like 'user_id:token\\titem_id:token'", path=path, line=1
        )
    names, types = [], []
    for spec in header.rstrip("\r\n").split("\t"):
        name, sep, ftype = spec.partition(":")
        if not sep or ftype not in FIELD_TYPES:
            raise DataError(
                f"header field {spec!r} is not name:type with type in {FIELD_TYPES}",
                path=path,
                line=1,
            )
        names.append(name)
        types.append(ftype)
    columns: dict[str, list[str]] = {n: [] for n in names}
    rows: list[int] = []
    float_fields = [
        (i, n) for i, (n, t) in enumerate(zip(names, types, strict=True)) if t == "float"
    ]
    for lineno, line in enumerate(lines, start=2):
        line = line.rstrip("\r\n")
        if not line:
            continue
        values = line.split("\t")
        if len(values) != len(names):
            raise DataError(
                f"expected {len(names)} tab-separated columns, found {len(values)}",
                path=path,
                line=lineno,
            )
        for i, name in float_fields:
            try:
                float(values[i])
            except ValueError:
                raise DataError(
                    f"{values[i]!r} is not a number", path=path, line=lineno, field=name
                ) from None
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
        rows.append(lineno)
    return AtomicTable(path, tuple(names), tuple(types), columns, tuple(rows))


def item_texts(table: AtomicTable, *, id_field: str = "item_id") -> dict[str, str]:
    """Item id -> text, joining the item's other fields with '. '."""
    ids = table.column(id_field)
    others = [n for n in table.names if n != id_field]
    cols = [table.columns[n] for n in others]
    return {
        item: ". ".join(v.strip() for v in values if v.strip())
        for item, *values in zip(ids, *cols, strict=True)
    }


def _atomic_path(data_dir: str, dataset: str, suffix: str) -> str:
    return os.path.join(data_dir, f"{dataset}.{suffix}")


def load_markets(
    data_dir: str | os.PathLike,
    dataset: str,
    *,
    market_of_user: Callable[[dict[str, str]], str] | None = None,
    markets: Sequence[str] | None = None,
    kcore: int = 0,
    with_text: bool = True,
    duplicates: str = "drop",
    published: bool = False,
) -> list[Market]:
    """Loads a RecBole dataset as one market, or as several markets split by user.

    Args:
      data_dir: folder holding `{dataset}.inter` (and `.item`, `.user` when used).
      dataset: the dataset name, e.g. "ml-100k".
      market_of_user: maps a .user row (field -> value) to a market name; None = one market
        named after the dataset.
      markets: keep only these markets (in this order); None = all, sorted by name.
      kcore: if > 1, k-core filter each market.
      with_text: read item text from `{dataset}.item` when it exists.
      duplicates: `.inter` rows equal in every field to an earlier row "drop" (counted in
        the log) or "keep" (market.DUPLICATES).
      published: every market's catalogue is the items of `{dataset}.item` (the published
        catalogue, config.data.catalogue "published"); False = the items of its rows.

    Returns:
      The markets.

    Raises:
      DataError: missing files or fields, an interaction whose user has no .user row, an
        unknown market name, bad file content.
    """
    data_dir = os.fspath(data_dir)
    inter = read_atomic(_atomic_path(data_dir, dataset, "inter"))
    users = np.asarray(inter.column("user_id"))
    items = np.asarray(inter.column("item_id"))
    if "timestamp" in inter.columns:
        times = inter.numbers("timestamp")
    else:
        times = np.zeros(len(users), dtype=np.float64)
    rows = list(zip(*(inter.columns[n] for n in inter.names), strict=True))
    kept = ~repeated_rows(rows, inter.path, duplicates)
    users, items, times = users[kept], items[kept], times[kept]
    item_path = _atomic_path(data_dir, dataset, "item")
    read_items = published or (with_text and os.path.isfile(item_path))
    item_table = read_atomic(item_path) if read_items else None  # a DataError when absent
    text = item_texts(item_table) if with_text and item_table is not None else None
    catalogue = item_table.column("item_id") if published else None
    if market_of_user is None:
        names = np.full(len(users), dataset)
    else:
        user_table = read_atomic(_atomic_path(data_dir, dataset, "user"))
        ids = user_table.column("user_id")
        for field in getattr(market_of_user, "fields", ()):
            user_table.column(field)  # a DataError naming the file and field if absent
        rows = [
            dict(zip(user_table.names, vals, strict=True))
            for vals in zip(*(user_table.columns[n] for n in user_table.names), strict=True)
        ]
        market_by_user = {u: market_of_user(r) for u, r in zip(ids, rows, strict=True)}
        unknown = sorted(set(users.tolist()) - market_by_user.keys())
        if unknown:
            raise DataError(
                f"{len(unknown)} users of the interactions have no row here (first: {unknown[:5]})",
                path=user_table.path,
                field="user_id",
            )
        names = np.asarray([market_by_user[u] for u in users.tolist()])
    found = sorted(set(names.tolist()))
    wanted = list(found) if markets is None else list(markets)
    unknown_markets = [m for m in wanted if m not in found]
    if unknown_markets:
        raise DataError(
            f"unknown markets {unknown_markets} (markets found: {', '.join(found)})",
            field="markets",
        )
    out = []
    for name in wanted:
        keep = names == name
        log = Interactions(users[keep], items[keep], times[keep], source=inter.path)
        log = kcore_filter(log, kcore)
        out.append(market_from_interactions(name, log, item_text=text, catalogue=catalogue))
    return out


def ml100k_region(user_row: dict[str, str]) -> str:
    """The ml-100k region market of a user: first zip_code character if a digit, else 'x'."""
    zip_code = user_row["zip_code"]
    return zip_code[0] if zip_code[:1].isdigit() else "x"


ml100k_region.fields = ("zip_code",)  # the .user fields it reads (load_markets checks them)


def load_ml100k_regions(
    data_dir: str | os.PathLike,
    markets: Sequence[str] | None = None,
    *,
    kcore: int = 0,
    with_text: bool = True,
    duplicates: str = "drop",
    published: bool = False,
) -> list[Market]:
    """The "ml-100k regions" markets (0-9 and x) from RecBole's ml-100k atomic files."""
    return load_markets(
        data_dir,
        "ml-100k",
        market_of_user=ml100k_region,
        markets=markets,
        kcore=kcore,
        with_text=with_text,
        duplicates=duplicates,
        published=published,
    )
