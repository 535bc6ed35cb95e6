import pytest

from interactions.movielens import Interaction, Split, leave_one_out


def ix(user, item, ts, row, rating=4.0):
    return Interaction(user, item, rating, ts, row)


def test_leave_one_out_orders_by_timestamp_then_row():
    xs = [
        ix("a", "1", 10, 0), ix("a", "2", 30, 1), ix("a", "3", 20, 2), ix("a", "4", 30, 3),
        ix("b", "1", 5, 4),
        ix("c", "5", 7, 5), ix("c", "6", 7, 6),
    ]
    s = leave_one_out(xs)
    assert isinstance(s, Split)
    # a: 1(10) 3(20) 2(30,row1) 4(30,row3): the tie at 30 goes to the later row.
    assert s.test["a"] == "4" and s.valid["a"] == "2"
    assert [x.item_id for x in s.train if x.user_id == "a"] == ["1", "3"]
    assert s.history("a", "valid") == ["3", "1"]
    assert s.history("a", "test") == ["2", "3", "1"]
    # short histories: one interaction -> test only; two -> valid + test
    assert s.test["b"] == "1" and "b" not in s.valid and s.history("b", "test") == []
    assert s.valid["c"] == "5" and s.test["c"] == "6"
    assert s.history("nobody") == []
    assert s.users == ["a", "b", "c"]
    assert s.test_interactions["a"].row == 3


def test_tie_follows_row_order_not_item_id():
    s = leave_one_out([ix("u", "9", 1, 0), ix("u", "4", 30, 1), ix("u", "2", 30, 2)])
    assert (s.valid["u"], s.test["u"]) == ("4", "2")
    s = leave_one_out([ix("u", "9", 1, 0), ix("u", "2", 30, 1), ix("u", "4", 30, 2)])
    assert (s.valid["u"], s.test["u"]) == ("2", "4")


def test_interactions_upto():
    xs = [ix("a", str(i), 100 - i, i) for i in range(5)] + [ix("b", "x", 1, 5), ix("b", "y", 2, 6), ix("b", "z", 3, 7)]
    s = leave_one_out(xs)
    assert len(s.interactions("valid")) == len(s.train) == 4
    assert len(s.interactions("test")) == 6
    full = s.interactions("all")
    assert sorted(full, key=lambda x: x.row) == sorted(xs, key=lambda x: x.row)
    assert [(x.timestamp, x.row) for x in full] == sorted((x.timestamp, x.row) for x in xs)
    with pytest.raises(ValueError):
        s.interactions("train")
    with pytest.raises(ValueError):
        s.history("a", "all")
