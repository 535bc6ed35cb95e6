"""Evaluation orders and the retrieval blend, on hand-computed cases."""

import numpy as np
import pytest

from export.evaluate import (
    EvalList,
    agreement,
    blend_order,
    blend_rule_set,
    metrics_of,
    model_order,
    orders_from_scores,
    random_order,
)
from export.metrics import evaluate


def test_model_order_is_score_desc_then_item_id():
    assert model_order(["b", "a", "c"], [1.0, 1.0, 2.0]) == ["c", "a", "b"]


def test_random_order_is_a_seeded_permutation():
    c = [str(i) for i in range(50)]
    a, b = random_order("u1", c), random_order("u1", c)
    assert a == b and sorted(a, key=int) == c and a != c
    assert random_order("u2", c) != a and random_order("u1", c, seed=1) != a


def test_blend_is_minmax_weighted_sum_by_hand():
    # model  [0, 5, 10] -> minmax [0, .5, 1]; retrieval [3, 2, 1] -> [1, .5, 0]
    cands, model, retr = ["x", "y", "z"], [0.0, 5.0, 10.0], [3.0, 2.0, 1.0]
    # w_model .8: x .2, y .5, z .8
    assert blend_order(cands, model, retr, blend_rule_set(0.8, 0.2)) == ["z", "y", "x"]
    # w_model .2: x .8, y .5, z .2
    assert blend_order(cands, model, retr, blend_rule_set(0.2, 0.8)) == ["x", "y", "z"]
    # equal weights: all .5 -> ties by item id
    assert blend_order(["z", "y", "x"], [10.0, 5.0, 0.0], [1.0, 2.0, 3.0], blend_rule_set(0.5, 0.5)) == ["x", "y", "z"]
    # model only: the model's order
    assert blend_order(cands, model, retr, blend_rule_set(1.0, 0.0)) == model_order(cands, model)


def test_orders_and_metrics_by_hand():
    lists = [EvalList("u1", ["h"], ["a", "b", "c"], [3.0, 2.0, 1.0], target="c"),
             EvalList("u2", ["h"], ["d", "e", "f"], [3.0, 2.0, 1.0], target="zz")]  # target not retrieved
    scores = {"u1": np.array([0.0, 1.0, 2.0], np.float32)}
    orders = orders_from_scores(lists, scores, blend_rule_set(1.0, 0.0), {"u1": ["c"], "u2": ["d"]})
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


def test_local_blend_equals_the_rules_engine():
    rules = pytest.importorskip("server.rules")
    assert rules.apply_rules  # the engine the gateway runs
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 40))
        cands = [str(i) for i in rng.permutation(200)[:n]]
        model = rng.normal(size=n).astype(np.float32)
        retr = np.round(rng.random(n), 2 if trial % 2 else 6)  # ties on half the trials
        for wm, wr, mn, rn in ((1.0, 0.0, "minmax", "minmax"), (0.7, 0.3, "minmax", "minmax"),
                               (0.5, 0.5, "minmax", "minmax"), (0.0, 1.0, "minmax", "minmax"),
                               (0.1, 1.0, "none", "minmax"), (0.4, 0.6, "sigmoid", "none")):
            engine = blend_rule_set(wm, wr, mn, rn)
            assert engine.engine is not None
            local = blend_rule_set(wm, wr, mn, rn, use_engine=False)
            assert blend_order(cands, model, retr, engine) == blend_order(cands, model, retr, local)


def test_blend_grid_covers_minmax_weights_and_raw_logits():
    from export.evaluate import blend_grid

    grid = blend_grid((0.0, 0.5, 1.0))
    assert [(g.model_weight, g.retrieval_weight) for g in grid[:3]] == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    assert all(g.model_normalize == "none" and g.retrieval_normalize == "minmax" for g in grid[3:])
    # raw logit blend by hand: 0.1 * m + minmax(r)
    spec = blend_rule_set(0.1, 1.0, "none", "minmax", use_engine=False)
    # x: 0.1*20 + 0 = 2.0; y: 0.1*0 + 1 = 1.0; z: 0.1*5 + .5 = 1.0 -> y/z tie by id
    assert blend_order(["x", "y", "z"], [20.0, 0.0, 5.0], [0.0, 2.0, 1.0], spec) == ["x", "y", "z"]
