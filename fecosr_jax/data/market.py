"""The market data model (docs/design.md §3, §4): one market, before its split.

Three forms, each built from the previous one, all plain numpy:

* `Interactions`: one market's raw log (user id, item id, timestamp) in file order.
* `Market`: time-ordered sequences of local item indices 1..N (0 = padding) in CSR form, the
  catalogue's original ids (so catalogues can be matched across markets), optional item text
  and semantic vectors [N+1, d_s] (row 0 = padding item).
* `MarketSplit` / `StackedMarkets` (fecosr_jax/data/split.py): the leave-one-out split and
  the markets stacked on a leading axis.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from fecosr_jax.data.errors import DataError

PAD = 0  # item index 0 is padding in every market


@dataclasses.dataclass(frozen=True)
class Interactions:
    """One market's raw interaction log, in file order.

    Attributes:
      users: [R] str, user id of each row.
      items: [R] str, item id (e.g. ASIN) of each row.
      times: [R] float64, timestamp of each row (any monotone unit: days, seconds).
      source: where the rows came from (a file path), used in error messages.
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.users)

    def select(self, keep: np.ndarray) -> Interactions:
        """The rows where the boolean mask `keep` [R] is True, in file order."""
        return Interactions(self.users[keep], self.items[keep], self.times[keep], self.source)


# What a loader does with rows that repeat an earlier row exactly (every field the same):
# "drop" keeps the first and logs how many went; "keep" keeps them all (as runs made before
# 2026-11-29 did). XMRec's Electronics 5-core files hold hundreds (ca 518 of 55,045 rows);
# two equal last rows make a user's test item their validation item.
DUPLICATES = ("drop", "keep")


def repeated_rows(rows: Sequence[tuple], source: str, duplicates: str) -> np.ndarray:
    """[R] bool: True at each row equal in every field to an earlier one, when `duplicates`
    is "drop" (then a warning names `source` and the count); all False for "keep"."""
    repeated = np.zeros(len(rows), bool)
    if duplicates == "keep":
        return repeated
    seen = set()
    for r, row in enumerate(rows):
        repeated[r] = row in seen
        seen.add(row)
    if repeated.any():
        logging.warning(
            "%s: dropped %d exact duplicate rows of %d (the same user, item and every other "
            "field as an earlier row; config.data.duplicates=keep keeps them)",
            source,
            int(repeated.sum()),
            len(rows),
        )
    return repeated


@dataclasses.dataclass(frozen=True)
class Market:
    """One market: its users' time-ordered sequences over its own catalogue.

    Attributes:
      name: market name (e.g. "ca").
      item_ids: [N] str; local item index i (1..N) is `item_ids[i - 1]`.
      user_ids: [U] str.
      offsets: [U + 1] int64; user u's sequence is `items[offsets[u]:offsets[u + 1]]`.
      items: [R] int32 local item indices 1..N, time-ordered within each user (ties kept in
        file order).
      item_text: [N] str or None; text of each item ("" where none was found).
      semantics: [N + 1, d_s] float32 or None; row 0 (padding item) is all zeros.
    """

    name: str
    item_ids: np.ndarray
    user_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    item_text: tuple[str, ...] | None = None
    semantics: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """[U] int64 sequence length of each user."""
        return np.diff(self.offsets)

    def sequence(self, u: int) -> np.ndarray:
        """User u's time-ordered local item indices."""
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def replace(self, **changes) -> Market:
        return dataclasses.replace(self, **changes)


def market_from_interactions(
    name: str,
    interactions: Interactions,
    item_text: Mapping[str, str] | None = None,
    catalogue: Sequence[str] | np.ndarray | None = None,
) -> Market:
    """Builds a `Market` from a raw log.

    Users and items get local indices in sorted id order (deterministic, independent of file
    order). Each user's rows are sorted by time; rows with equal times keep file order.

    Args:
      name: market name.
      interactions: the market's rows.
      item_text: optional map item id -> text; items missing from it get "" (counted in a
        warning).
      catalogue: the market's published item ids (config.data.catalogue "published"): its
        items, whatever its users did. None = the items of its rows.

    Returns:
      The market.

    Raises:
      DataError: the log is empty, or has an item the published catalogue lacks.
    """
    if len(interactions) == 0:
        raise DataError(f"market '{name}' has no interactions", path=interactions.source)
    user_ids, user_index = np.unique(interactions.users, return_inverse=True)
    if catalogue is None:
        item_ids, item_index = np.unique(interactions.items, return_inverse=True)
    else:
        published, items = np.asarray(catalogue), np.asarray(interactions.items)
        dtype = np.result_type(published, items)  # strings: the longer of the two
        item_ids, items = np.unique(published.astype(dtype)), items.astype(dtype)
        item_index = np.searchsorted(item_ids, items)
        found = np.zeros(len(items), bool)
        if len(item_ids):
            found = item_ids[np.minimum(item_index, len(item_ids) - 1)] == items
        if not found.all():
            missing = np.unique(items[~found])
            raise DataError(
                f"market '{name}': {len(missing)} items of its rows are not in its published "
                f"catalogue (first: {missing[:3].tolist()}); publish them or use "
                "config.data.catalogue=interactions",
                path=interactions.source,
            )
    rows = np.arange(len(interactions))
    # np.lexsort sorts by the last key first: user, then time, then file order (stable ties).
    order = np.lexsort((rows, interactions.times, user_index))
    items = (item_index[order] + 1).astype(np.int32)
    counts = np.bincount(user_index, minlength=len(user_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    text = None
    if item_text is not None:
        text = tuple(item_text.get(i, "") for i in item_ids.tolist())
        missing = sum(1 for t in text if not t)
        if missing:
            logging.warning(
                "market '%s': %d of %d items have no text (from %s)",
                name,
                missing,
                len(item_ids),
                interactions.source,
            )
    return Market(
        name=name,
        item_ids=item_ids,
        user_ids=user_ids,
        offsets=offsets,
        items=items,
        item_text=text,
    )


def kcore_filter(interactions: Interactions, k: int) -> Interactions:
    """Keeps the largest sub-log in which every user and every item has >= k rows.

    Repeatedly drops users and items with fewer than k rows until none is left. k <= 1 is a
    no-op. Rows keep file order.
    """
    if k <= 1:
        return interactions
    keep = np.ones(len(interactions), dtype=bool)
    _, user_index = np.unique(interactions.users, return_inverse=True)
    _, item_index = np.unique(interactions.items, return_inverse=True)
    while True:
        user_counts = np.bincount(user_index[keep], minlength=user_index.max() + 1)
        item_counts = np.bincount(item_index[keep], minlength=item_index.max() + 1)
        new_keep = keep & (user_counts[user_index] >= k) & (item_counts[item_index] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    return interactions.select(keep)


def catalogue_overlap(markets: Sequence[Market]) -> np.ndarray:
    """[M, M] int64: number of item ids each pair of markets has in common (diagonal = N_m)."""
    m = len(markets)
    out = np.zeros((m, m), dtype=np.int64)
    for a in range(m):
        for b in range(a, m):
            n = len(np.intersect1d(markets[a].item_ids, markets[b].item_ids, assume_unique=True))
            out[a, b] = out[b, a] = n
    return out
