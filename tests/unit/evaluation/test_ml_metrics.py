import math

import pytest

from evaluation.metrics import evaluate, hit_rate, mrr, ndcg

RANKED = ["a", "b", "c", "d"]


def test_single_list_metrics_by_hand():
    assert hit_rate(RANKED, "c", 2) == 0.0
    assert hit_rate(RANKED, "c", 3) == 1.0
    assert ndcg(RANKED, "a", 1) == 1.0
    assert ndcg(RANKED, "c", 3) == pytest.approx(0.5)  # 1/log2(4)
    assert ndcg(RANKED, "b", 5) == pytest.approx(1 / math.log2(3))
    assert ndcg(RANKED, "c", 2) == 0.0
    assert mrr(RANKED, "c", 5) == pytest.approx(1 / 3)
    assert mrr(RANKED, "d", 3) == 0.0
    for fn in (hit_rate, ndcg, mrr):
        assert fn(RANKED, "z", 10) == 0.0
        assert fn([], "a", 10) == 0.0
        assert fn(RANKED, None, 10) == 0.0
        with pytest.raises(ValueError):
            fn(RANKED, "a", 0)


def test_evaluate_averages_over_all_target_users():
    rankings = {"u1": ["a", "b"], "u2": RANKED, "u3": RANKED, "extra": ["a"]}
    targets = {"u1": "a", "u2": "c", "u3": "x", "u4": "a"}  # u3 missed, u4 has no ranking
    m = evaluate(rankings, targets, ks=(1, 3))
    assert m["users"] == 4
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@3"] == pytest.approx(2 / 4)
    assert m["ndcg@3"] == pytest.approx((1 + 0.5) / 4)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["coverage"] == pytest.approx(2 / 4)
    assert m["ndcg@10_covered"] == pytest.approx((1 + 0.5) / 2)
    assert evaluate({}, {}) == {"users": 0.0}


def test_evaluate_default_ks():
    m = evaluate({"u": RANKED}, {"u": "d"})
    assert {"hr@5", "ndcg@10", "mrr@20"} <= set(m)
    assert m["mrr@5"] == pytest.approx(0.25)
