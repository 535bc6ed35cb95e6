"""The one blend formula and final order (contract.blend), by hand and against the rules engine."""

import numpy as np
import pytest

from contract.blend import Blend, blend_order, final_scores, model_order, order


def test_model_order_is_score_desc_then_item_id():
    assert model_order(["b", "a", "c"], [1.0, 1.0, 2.0]) == ["c", "a", "b"]


def test_blend_is_minmax_weighted_sum_by_hand():
    # model  [0, 5, 10] -> minmax [0, .5, 1]; retrieval [3, 2, 1] -> [1, .5, 0]
    cands, model, retr = ["x", "y", "z"], [0.0, 5.0, 10.0], [3.0, 2.0, 1.0]
    # w_model .8: x .2, y .5, z .8
    assert blend_order(cands, model, retr, Blend(model_weight=0.8, retrieval_weight=0.2)) == ["z", "y", "x"]
    # w_model .2: x .8, y .5, z .2
    assert blend_order(cands, model, retr, Blend(model_weight=0.2, retrieval_weight=0.8)) == ["x", "y", "z"]
    # equal weights: all .5 -> ties by item id
    assert blend_order(["z", "y", "x"], [10.0, 5.0, 0.0], [1.0, 2.0, 3.0],
                       Blend(model_weight=0.5, retrieval_weight=0.5)) == ["x", "y", "z"]
    # model only: the model's order
    assert blend_order(cands, model, retr, Blend(model_weight=1.0, retrieval_weight=0.0)) == model_order(cands, model)


def test_raw_logit_blend_by_hand():
    spec = Blend(model_weight=0.1, retrieval_weight=1.0, model_normalize="none")
    # x: 0.1*20 + 0 = 2.0; y: 0.1*0 + 1 = 1.0; z: 0.1*5 + .5 = 1.0 -> y/z tie by id
    assert blend_order(["x", "y", "z"], [20.0, 0.0, 5.0], [0.0, 2.0, 1.0], spec) == ["x", "y", "z"]


def test_missing_retrieval_and_unscored_items():
    b = Blend(model_weight=0.0, retrieval_weight=1.0, missing_retrieval=0.25)
    model = np.array([1.0, 2.0, 3.0])
    scored = np.array([True, True, False])
    retr = np.array([0.0, np.nan, 1.0])
    final = final_scores(b, model, scored, retr)
    # retrieval minmax over the two present: 0 -> 0, 1 -> 1; the absent one gets 0.25
    assert final.tolist() == pytest.approx([0.0, 0.25, 1.0])
    # unscored candidates come after every scored one, whatever their score
    assert order(["a", "b", "c"], final, scored) == [1, 0, 2]
    # NaN after every number
    assert order(["a", "b"], np.array([np.nan, -1e9])) == [1, 0]


def test_constant_scores_normalize_to_the_neutral_half():
    b = Blend(model_weight=1.0, retrieval_weight=1.0)
    final = final_scores(b, np.array([2.0, 2.0]), np.array([True, True]), np.array([5.0, 5.0]))
    assert final.tolist() == [1.0, 1.0]


def test_blend_rejects_unknown_normalizations_and_reads_back_its_dict():
    with pytest.raises(ValueError, match="model_normalize"):
        Blend(model_normalize="zscore")
    with pytest.raises(ValueError, match="finite"):
        Blend(model_weight=float("nan"))
    with pytest.raises(ValueError, match="model_weight"):
        Blend.from_dict({"retrieval_weight": 1.0})
    b = Blend(model_weight=0.05, retrieval_weight=1.0, model_normalize="none")
    assert Blend.from_dict({**b.to_dict(), "metrics": {"ndcg@10": 0.1}}) == b


def test_the_rules_engine_orders_exactly_as_the_formula():
    """The engine books the blend as an adjustment per item; evaluation and training call the
    formula directly: both must give the same order on random inputs, ties included."""
    from server.rules import RuleCandidate, apply_rules
    from server.rules.parse import parse_rule_set

    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 40))
        cands = [str(i) for i in rng.permutation(200)[:n]]
        model = rng.normal(size=n)
        retr = np.round(rng.random(n), 2 if trial % 2 else 6)  # ties on half the trials
        for wm, wr, mn, rn in ((1.0, 0.0, "minmax", "minmax"), (0.7, 0.3, "minmax", "minmax"),
                               (0.5, 0.5, "minmax", "minmax"), (0.0, 1.0, "minmax", "minmax"),
                               (0.1, 1.0, "none", "minmax"), (0.4, 0.6, "sigmoid", "none")):
            blend = Blend(model_weight=wm, retrieval_weight=wr, model_normalize=mn, retrieval_normalize=rn)
            rs = parse_rule_set("t", {"blend": blend.to_dict()})
            engine = [it.item_id for it in apply_rules(
                rs, [RuleCandidate(c, float(m), float(r)) for c, m, r in zip(cands, model, retr)], now=0.0).items]
            assert engine == blend_order(cands, model, retr, blend)
