"""The market data model: leave-one-out split, truncation, ties, stacking, k-core."""

import numpy as np
import pytest

from fecosr_jax.data import (
    DataError,
    Interactions,
    catalogue_overlap,
    kcore_filter,
    leave_one_out,
    market_from_interactions,
    stack_markets,
    train_pairs,
)


def log(rows):
    users, items, times = zip(*rows, strict=True)
    return Interactions(np.asarray(users), np.asarray(items), np.asarray(times, float), "t")


def test_sequences_are_time_ordered_with_stable_ties():
    # u1's rows out of time order; b and c share time 2 and must keep file order (c then b).
    m = market_from_interactions(
        "x", log([("u1", "d", 5), ("u1", "c", 2), ("u2", "a", 1), ("u1", "b", 2), ("u1", "a", 1)])
    )
    assert m.item_ids.tolist() == ["a", "b", "c", "d"]  # local index = sorted id order + 1
    assert m.user_ids.tolist() == ["u1", "u2"]
    assert m.sequence(0).tolist() == [1, 3, 2, 4]  # a(1) c(2) b(2) d(5)
    assert m.sequence(1).tolist() == [1]


def test_leave_one_out_worked_by_hand():
    # u: items 1..6 in time order; max_len 3.
    rows = [("u", f"i{k}", k) for k in range(1, 7)] + [("v", "i1", 1), ("v", "i2", 2)]
    m = market_from_interactions("x", log(rows))
    s = leave_one_out(m, max_len=3)
    assert s.num_dropped_users == 1  # v has 2 < 3 interactions
    assert s.user_ids.tolist() == ["u"]
    # Train part = items 1..4; the last L+1 = 4 of them.
    np.testing.assert_array_equal(s.train, [[1, 2, 3, 4]])
    np.testing.assert_array_equal(s.valid_inputs, [[2, 3, 4]])
    np.testing.assert_array_equal(s.valid_targets, [5])
    np.testing.assert_array_equal(s.test_inputs, [[3, 4, 5]])
    np.testing.assert_array_equal(s.test_targets, [6])


def test_short_sequences_are_left_padded():
    m = market_from_interactions("x", log([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]))
    s = leave_one_out(m, max_len=4)
    np.testing.assert_array_equal(s.train, [[0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(s.valid_inputs, [[0, 0, 0, 1]])
    np.testing.assert_array_equal(s.test_inputs, [[0, 0, 1, 2]])
    assert s.valid_targets.tolist() == [2] and s.test_targets.tolist() == [3]


def test_market_with_only_short_users_is_an_error():
    m = market_from_interactions("tiny", log([("u", "a", 1), ("u", "b", 2)]))
    with pytest.raises(DataError, match="tiny.*no user has >= 3"):
        leave_one_out(m, 5)


def test_stack_pads_users_items_and_markets():
    a = market_from_interactions("a", log([("u", "x", 1), ("u", "y", 2), ("u", "z", 3)]))
    b = market_from_interactions(
        "b", log([(u, i, t) for u in ("p", "q") for t, i in enumerate(["k", "l", "m", "n"])])
    )
    st = stack_markets([leave_one_out(a, 3), leave_one_out(b, 3)], num_markets_multiple=4)
    assert st.names == ("a", "b", "", "")
    assert st.train.shape == (4, 2, 4) and st.item_mask.shape == (4, 5)
    np.testing.assert_array_equal(st.market_mask, [True, True, False, False])
    np.testing.assert_array_equal(st.user_mask[0], [True, False])
    np.testing.assert_array_equal(st.item_mask[0], [False, True, True, True, False])
    np.testing.assert_array_equal(st.item_mask[1], [False, True, True, True, True])
    np.testing.assert_array_equal(st.train[0, 1], 0)  # padding user
    np.testing.assert_array_equal(st.num_users, [1, 2, 1, 1])
    # a: train part [x] -> no target; b: train part [k, l] -> one target per user.
    np.testing.assert_array_equal(st.num_train_targets[:2], [0, 2])
    # Padding markets are copies of market 0 (finite everywhere), masked out.
    np.testing.assert_array_equal(st.train[2], st.train[0])


def test_kcore_by_hand():
    # Items: a x3, b x2, c x1. Users: u(a,b,c) v(a,b) w(a). 2-core: drop c, then w (1 row), then
    # a has 2, b has 2, u has 2, v has 2: stable.
    rows = [
        ("u", "a", 1),
        ("u", "b", 2),
        ("u", "c", 3),
        ("v", "a", 1),
        ("v", "b", 2),
        ("w", "a", 1),
    ]
    out = kcore_filter(log(rows), 2)
    assert sorted(zip(out.users.tolist(), out.items.tolist(), strict=False)) == [
        ("u", "a"),
        ("u", "b"),
        ("v", "a"),
        ("v", "b"),
    ]
    assert len(kcore_filter(log(rows), 1)) == 6


def test_catalogue_overlap():
    a = market_from_interactions("a", log([("u", "x", 1), ("u", "y", 2)]))
    b = market_from_interactions("b", log([("v", "y", 1), ("v", "z", 2), ("v", "w", 3)]))
    np.testing.assert_array_equal(catalogue_overlap([a, b]), [[2, 1], [1, 3]])


def test_training_windows_cover_every_target_once():
    # One user, items 1..12 in time order; training part = 1..10; L = 3.
    rows = [("u", f"i{k:02d}", k) for k in range(1, 13)]
    m = market_from_interactions("x", log(rows))
    one = leave_one_out(m, max_len=3)
    np.testing.assert_array_equal(one.train, [[7, 8, 9, 10]])
    every = leave_one_out(m, max_len=3, train_windows=0)
    # Windows end at 10, 7, 4 (then 1 would hold no target): targets 8-10, 5-7, 2-4.
    np.testing.assert_array_equal(every.train, [[7, 8, 9, 10], [4, 5, 6, 7], [1, 2, 3, 4]])
    _, targets = train_pairs(every.train)
    assert sorted(targets[targets > 0].tolist()) == list(range(2, 11))
    np.testing.assert_array_equal(leave_one_out(m, 3, train_windows=2).train, every.train[:2])
    st = stack_markets([every, one])
    np.testing.assert_array_equal(st.num_train_rows, [3, 1])
    np.testing.assert_array_equal(st.num_train_targets, [9, 3])


def test_union_vocabulary_matches_items_by_id():
    from fecosr_jax.data.split import to_union_vocabulary

    a = market_from_interactions("a", log([("u", "x", 1), ("u", "y", 2), ("u", "z", 3)]))
    b = market_from_interactions("b", log([("v", "z", 1), ("v", "w", 2), ("v", "x", 3)]))
    ua, ub = to_union_vocabulary([leave_one_out(a, 2), leave_one_out(b, 2)])
    assert ua.item_ids.tolist() == ["w", "x", "y", "z"]  # 1..4
    # a: x y z -> 2 3 4; b: z w x -> 4 1 2.
    np.testing.assert_array_equal(ua.test_inputs, [[2, 3]])
    assert ua.test_targets.tolist() == [4] and ub.test_targets.tolist() == [2]
    np.testing.assert_array_equal(ub.test_inputs, [[4, 1]])
    np.testing.assert_array_equal(ua.item_mask, [False, False, True, True, True])
    st = stack_markets([ua, ub])
    np.testing.assert_array_equal(st.item_mask[1], [False, True, True, False, True])
