"""The time-ordered leave-one-out split and the stacked market axis (docs/design.md §3).

* `MarketSplit`: one market's split (last item = test, second last = validation, the rest =
  training), truncated to the last L items and left-padded.
* `StackedMarkets`: every market on a leading axis M, padded to common sizes with masks. Built
  once on the host; the compiled round moves it to the device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import PAD, Market


@dataclasses.dataclass(frozen=True)
class MarketSplit:
    """One market after the time-ordered leave-one-out split, truncated and left-padded.

    For a user with sequence s_1..s_n (n >= 3): training items are s_1..s_{n-2}, validation
    predicts s_{n-1} from s_1..s_{n-2}, test predicts s_n from s_1..s_{n-1}. Every row keeps
    its last items (the window ends at the newest item) and is left-padded with 0.

    Attributes:
      name: market name.
      item_ids: [N] str, the catalogue.
      user_ids: [U] str, the users kept (n >= min_interactions).
      train: [R, L + 1] int32 training rows (R = U with one window per user); inputs are
        `train[:, :-1]`, targets `train[:, 1:]`.
      valid_inputs: [U, L] int32.
      valid_targets: [U] int32.
      test_inputs: [U, L] int32.
      test_targets: [U] int32.
      semantics: [N + 1, d_s] float32 or None.
      num_dropped_users: users dropped for having fewer than min_interactions items.
      item_mask: [N + 1] bool or None; the market's catalogue when its indices are not 1..N
        (a shared vocabulary, see `to_union_vocabulary`); None = items 1..N.
      train_user: [R] int32 or None, the user (index into user_ids) of each training row, a
        user's rows consecutive; None = one row per user. Derived from the rows' making, so
        not part of the data's fingerprint (resume.data_fingerprints).
    """

    name: str
    item_ids: np.ndarray
    user_ids: np.ndarray
    train: np.ndarray
    valid_inputs: np.ndarray
    valid_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets: np.ndarray
    semantics: np.ndarray | None
    num_dropped_users: int
    item_mask: np.ndarray | None = None
    train_user: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def max_len(self) -> int:
        return self.valid_inputs.shape[1]

    def catalogue_mask(self) -> np.ndarray:
        """[N + 1] bool: the market's items (index 0 = padding is never one)."""
        if self.item_mask is not None:
            return self.item_mask
        return np.arange(self.num_items + 1) > 0


def train_pairs(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each [..., L], from training rows [..., L + 1].

    A position is a training example when both its input and its target are items: the first
    item of a sequence is never a target (it has no history), so its target is set to 0.
    Works on numpy and jax arrays alike.
    """
    inputs, targets = train[..., :-1], train[..., 1:]
    return inputs, targets * (inputs > 0)


def _windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """[U, width] int32: the last `width` items of items[starts[u]:ends[u]], left-padded with 0."""
    idx = ends[:, None] - width + np.arange(width)[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, items[np.clip(idx, 0, None)], PAD).astype(np.int32)


def leave_one_out(
    market: Market, max_len: int, *, min_interactions: int = 3, train_windows: int = 1
) -> MarketSplit:
    """Time-ordered leave-one-out split of one market, truncated to the last `max_len` items.

    Users with fewer than `min_interactions` (>= 3) items cannot be split: they are dropped and
    counted (`num_dropped_users`, and a warning names the market and the count).

    Training rows: window k of a user ends k * L items before the end of its training part and
    holds L + 1 items, so consecutive windows share one item and every training target lies in
    exactly one window. `train_windows` = 1 keeps the newest window only (SASRec); W > 1 keeps
    up to W windows per user; 0 keeps all of them (every training interaction is a target).

    Args:
      market: the market.
      max_len: L, the longest input sequence kept.
      min_interactions: users with fewer items are dropped; at least 3.
      train_windows: training windows per user (0 = all).

    Returns:
      The split.

    Raises:
      DataError: no user of the market has enough interactions.
    """
    if max_len < 1:
        raise DataError(f"max_len must be >= 1, got {max_len}", field="max_len")
    if min_interactions < 3:
        raise DataError(
            f"min_interactions must be >= 3 for a train/valid/test split, got {min_interactions}",
            field="min_interactions",
        )
    lengths = market.lengths
    kept = lengths >= min_interactions
    num_dropped = int((~kept).sum())
    if not kept.any():
        raise DataError(
            f"market '{market.name}': no user has >= {min_interactions} interactions "
            f"({market.num_users} users); nothing to split"
        )
    if num_dropped:
        logging.warning(
            "market '%s': dropped %d of %d users with fewer than %d interactions",
            market.name,
            num_dropped,
            market.num_users,
            min_interactions,
        )
    starts = market.offsets[:-1][kept]
    ends = market.offsets[1:][kept]
    items = market.items
    # Windows per user: enough to cover the T - 1 targets of a training part of length T.
    needed = np.maximum(1, -(-(ends - 2 - starts - 1) // max_len))
    windows = needed if train_windows == 0 else np.minimum(needed, train_windows)
    row_user = np.repeat(np.arange(len(starts)), windows)
    row_k = np.arange(len(row_user)) - np.repeat(np.cumsum(windows) - windows, windows)
    return MarketSplit(
        name=market.name,
        item_ids=market.item_ids,
        user_ids=market.user_ids[kept],
        train=_windows(items, starts[row_user], ends[row_user] - 2 - row_k * max_len, max_len + 1),
        valid_inputs=_windows(items, starts, ends - 2, max_len),
        valid_targets=items[ends - 2].astype(np.int32),
        test_inputs=_windows(items, starts, ends - 1, max_len),
        test_targets=items[ends - 1].astype(np.int32),
        semantics=market.semantics,
        num_dropped_users=num_dropped,
        train_user=row_user.astype(np.int32),
    )


@dataclasses.dataclass(frozen=True)
class StackedMarkets:
    """All markets on one leading axis M, padded to common sizes (docs/design.md §3).

    Padding markets (added to reach a multiple of the device count) are copies of market 0's
    arrays with `market_mask` False: every array stays finite and every market costs the same,
    and the round gives them weight 0. Padding users have all-zero rows and `user_mask` False;
    padding items have `item_mask` False (index 0 is always padding).

    Attributes:
      names: [M] market names ("" for padding markets).
      train: [M, R, L + 1] int32 training rows, 0 = padding.
      valid_inputs: [M, U, L] int32.   valid_targets: [M, U] int32 (0 for padding users).
      test_inputs: [M, U, L] int32.    test_targets: [M, U] int32.
      user_mask: [M, U] bool.
      num_train_rows: [M] int32, training rows of each market (rows beyond are padding).
      item_mask: [M, N + 1] bool; False at index 0 and beyond each market's catalogue.
      semantics: [M, N + 1, d_s] float32 or None; zero rows for padding items.
      num_users: [M] int32.   num_items: [M] int32.
      num_train_targets: [M] int32, non-padding training targets (the default FedAvg weight).
      market_mask: [M] bool, False for padding markets.
      user_rows: [M, U, W] int32, the training rows of each user (W the most any user has),
        -1 beyond a user's own and for padding users: user-level DP samples users and takes
        all their rows (MarketSplit.train_user).
      market_index: [M] int32, each market's position in the stack it was built as: it seeds
        the market's random streams, so a selection (`select_markets`) draws what the whole
        stack draws.
    """

    names: tuple[str, ...]
    train: np.ndarray
    valid_inputs: np.ndarray
    valid_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets: np.ndarray
    user_mask: np.ndarray
    num_train_rows: np.ndarray
    item_mask: np.ndarray
    semantics: np.ndarray | None
    num_users: np.ndarray
    num_items: np.ndarray
    num_train_targets: np.ndarray
    market_mask: np.ndarray
    user_rows: np.ndarray
    market_index: np.ndarray

    @property
    def num_markets(self) -> int:
        return len(self.names)

    @property
    def max_len(self) -> int:
        return self.valid_inputs.shape[-1]

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields as a dict (a pytree for jax.device_put); None fields left out."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                out[f.name] = value
        return out


def stack_markets(
    splits: Sequence[MarketSplit], *, num_markets_multiple: int = 1
) -> StackedMarkets:
    """Stacks split markets on a leading axis, padding users, items and markets.

    Args:
      splits: the markets, all with the same max_len and (if any has semantics) all with
        semantic vectors of the same dimension.
      num_markets_multiple: pad M up to a multiple of this (e.g. the device count) with
        zero-weight copies of market 0.

    Returns:
      The stacked markets.
    """
    if not splits:
        raise DataError("no markets to stack")
    max_len = splits[0].max_len
    for s in splits:
        if s.max_len != max_len:
            raise DataError(f"market '{s.name}' has max_len {s.max_len}, expected {max_len}")
    has_sem = [s.semantics is not None for s in splits]
    if any(has_sem) and not all(has_sem):
        missing = [s.name for s, h in zip(splits, has_sem, strict=True) if not h]
        raise DataError(f"markets {missing} have no semantic vectors while others do")
    real = len(splits)
    total = -(-real // num_markets_multiple) * num_markets_multiple
    u_max = max(s.num_users for s in splits)
    r_max = max(len(s.train) for s in splits)
    n_max = max(s.num_items for s in splits)

    def stack(get, shape, dtype):
        out = np.zeros((total, *shape), dtype=dtype)
        for m, s in enumerate(splits):
            a = get(s)
            out[(m, *tuple(slice(0, d) for d in a.shape))] = a
        out[real:] = out[0]
        return out

    semantics = None
    if all(has_sem):
        dims = {s.semantics.shape[1] for s in splits}
        if len(dims) != 1:
            raise DataError(f"markets have semantic vectors of different dimensions {sorted(dims)}")
        semantics = stack(lambda s: s.semantics, (n_max + 1, dims.pop()), np.float32)
    item_mask = stack(lambda s: s.catalogue_mask(), (n_max + 1,), bool)
    user_mask = stack(lambda s: np.ones(s.num_users, bool), (u_max,), bool)
    train = stack(lambda s: s.train, (r_max, max_len + 1), np.int32)
    num_train_rows = np.asarray([len(s.train) for s in splits], np.int32)
    num_train_rows = np.concatenate([num_train_rows, np.repeat(num_train_rows[:1], total - real)])
    pad_names = ("",) * (total - real)
    market_mask = np.arange(total) < real
    return StackedMarkets(
        names=tuple(s.name for s in splits) + pad_names,
        train=train,
        valid_inputs=stack(lambda s: s.valid_inputs, (u_max, max_len), np.int32),
        valid_targets=stack(lambda s: s.valid_targets, (u_max,), np.int32),
        test_inputs=stack(lambda s: s.test_inputs, (u_max, max_len), np.int32),
        test_targets=stack(lambda s: s.test_targets, (u_max,), np.int32),
        user_mask=user_mask,
        num_train_rows=num_train_rows,
        item_mask=item_mask,
        semantics=semantics,
        num_users=user_mask.sum(axis=1).astype(np.int32),
        num_items=(item_mask.sum(axis=1)).astype(np.int32),
        num_train_targets=(train_pairs(train)[1] > 0).sum(axis=(1, 2)).astype(np.int32),
        market_mask=market_mask,
        user_rows=_user_rows(splits, total, u_max),
        market_index=np.arange(total, dtype=np.int32),
    )


def _user_rows(splits: Sequence[MarketSplit], total: int, u_max: int) -> np.ndarray:
    """StackedMarkets.user_rows: [M, U, W] each user's training rows, -1 padded (padding
    markets: copies of market 0's)."""
    owners = [
        np.arange(s.num_users, dtype=np.int32) if s.train_user is None else s.train_user
        for s in splits
    ]
    width = max(int(np.bincount(o).max()) for o in owners)
    out = np.full((total, u_max, width), -1, np.int32)
    for m, owner in enumerate(owners):
        first = np.searchsorted(owner, np.arange(u_max))  # a user's rows are consecutive
        counts = np.bincount(owner, minlength=u_max)
        for k in range(width):
            has = counts > k
            out[m, has, k] = first[has] + k
    out[len(splits) :] = out[0]
    return out


def select_markets(
    stacked: StackedMarkets, keep: Sequence[int], *, num_markets_multiple: int = 1
) -> StackedMarkets:
    """The markets at positions `keep` of `stacked`, in order, padded to a multiple of
    `num_markets_multiple` with zero-weight copies of the first. Sizes (users, rows, items)
    stay those of `stacked`, and each market keeps its `market_index`, so a market trains and
    is evaluated in the selection as in the whole stack: the same computation, which XLA
    compiles into another program (bit for bit on the test config; docs/design.md §2)."""
    real = len(keep)
    total = -(-real // num_markets_multiple) * num_markets_multiple
    rows = np.asarray([*keep, *[keep[0]] * (total - real)], np.int64)
    arrays = {k: v[rows] for k, v in stacked.arrays().items()}
    arrays["market_mask"] = np.arange(total) < real
    names = tuple(stacked.names[i] for i in keep) + ("",) * (total - real)
    return dataclasses.replace(stacked, names=names, **arrays)


def union_vocabulary(splits: Sequence[MarketSplit]) -> np.ndarray:
    """[V] the distinct item ids of the markets' catalogues, sorted: item index i + 1 of an
    item-ID model over them is vocabulary[i]."""
    return np.unique(np.concatenate([s.item_ids for s in splits]))


def to_union_vocabulary(
    splits: Sequence[MarketSplit], vocabulary: np.ndarray | None = None
) -> list[MarketSplit]:
    """The splits re-indexed over one vocabulary (items matched by id).

    Every market then shares one index space 1..V, as an ID-based model over a shared
    vocabulary needs; each keeps its own catalogue as `item_mask` [V + 1]. Semantic vectors
    are dropped (ID-only use). `vocabulary`: [V] item ids in index order (default
    union_vocabulary(splits)); it must hold every item of the splits.
    """
    vocab = union_vocabulary(splits) if vocabulary is None else np.asarray(vocabulary)
    index = {item: i for i, item in enumerate(vocab.tolist(), start=1)}
    out = []
    for s in splits:
        lookup = np.zeros(s.num_items + 1, np.int32)
        lookup[1:] = [index[item] for item in s.item_ids.tolist()]
        mask = np.zeros(len(vocab) + 1, bool)
        mask[lookup[1:]] = True
        out.append(
            dataclasses.replace(
                s,
                item_ids=vocab,
                train=lookup[s.train],
                valid_inputs=lookup[s.valid_inputs],
                valid_targets=lookup[s.valid_targets],
                test_inputs=lookup[s.test_inputs],
                test_targets=lookup[s.test_targets],
                semantics=None,
                item_mask=mask,
            )
        )
    return out
