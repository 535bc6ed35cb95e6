"""Evaluation orders and the retrieval blend, on hand-computed cases."""

import numpy as np
import pytest

from contract.blend import Blend, model_order
from evaluation.evaluate import agreement, metrics_of, orders_from_scores
from evaluation.metrics import evaluate
from evaluation.protocol import EvalList, random_order


def test_random_order_is_a_seeded_permutation():
    c = [str(i) for i in range(50)]
    a, b = random_order("u1", c), random_order("u1", c)
    assert a == b and sorted(a, key=int) == c and a != c
    assert random_order("u2", c) != a and random_order("u1", c, seed=1) != a


def test_orders_and_metrics_by_hand():
    lists = [EvalList("u1", ["h"], ["a", "b", "c"], [3.0, 2.0, 1.0], target="c"),
             EvalList("u2", ["h"], ["d", "e", "f"], [3.0, 2.0, 1.0], target="zz")]  # target not retrieved
    scores = {"u1": np.array([0.0, 1.0, 2.0], np.float32)}
    orders = orders_from_scores(lists, scores, Blend(model_weight=1.0, retrieval_weight=0.0), {"u1": ["c"], "u2": ["d"]})
    assert orders["retriever"]["u1"] == ["a", "b", "c"] and orders["model"]["u1"] == ["c", "b", "a"]
    assert "u2" not in orders["model"]  # unscored user: a miss
    m = metrics_of(orders, {"u1": "c", "u2": "zz"})
    # retriever: rank 3 for u1, miss for u2 -> NDCG@5 = (1/log2(4)) / 2 = 0.25; MRR@5 = (1/3)/2
    assert m["retriever"]["ndcg@5"] == pytest.approx(0.25)
    assert m["retriever"]["mrr@5"] == pytest.approx(1 / 6)
    # model: rank 1 for u1 -> HR@5 .5, NDCG@5 .5; covered-only NDCG@10 = 1
    assert m["model"]["hr@5"] == pytest.approx(0.5) and m["model"]["ndcg@5"] == pytest.approx(0.5)
    assert m["model"]["ndcg@10_covered"] == pytest.approx(1.0)
    assert m["pop"]["hr@5"] == pytest.approx(0.5)
    assert m["final"] == m["model"]


def test_metrics_of_hand_case_matches_formula():
    ranks = {"u": ["x", "y", "t"]}
    m = evaluate(ranks, {"u": "t"}, (1, 3))
    assert m["hr@1"] == 0 and m["hr@3"] == 1 and m["ndcg@3"] == pytest.approx(0.5) and m["mrr@3"] == pytest.approx(1 / 3)


def test_agreement_reports_score_and_order_differences():
    a = {"u": np.array([1.0, 2.0], np.float32)}
    b = {"u": np.array([1.0, 2.0 + 1e-6], np.float32)}
    got = agreement(a, b, {"u": ["y", "x"]}, {"u": ["y", "x"]})
    assert got["users"] == 1 and got["identical_final_orders"] == 1 and got["max_abs_model_score_diff"] < 1e-5


def test_blend_grid_covers_minmax_weights_and_raw_logits():
    from evaluation.protocol import blend_grid

    grid = blend_grid((0.0, 0.5, 1.0))
    assert [(g.model_weight, g.retrieval_weight) for g in grid[:3]] == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    assert all(g.model_normalize == "none" and g.retrieval_normalize == "minmax" for g in grid[3:])


def test_final_order_takes_scores_as_float32_as_on_the_wire():
    from evaluation.protocol import blend_order

    # 1 + 1e-9 is 1.0 in float32: a tie, broken by item id as the gateway would see it.
    assert blend_order(["b", "a"], [1.0 + 1e-9, 1.0], [0.0, 0.0], None) == ["a", "b"]
    assert model_order(["b", "a"], [1.0 + 1e-9, 1.0]) == ["b", "a"]
