"""Score blending, boosts and demotions, explanations, ordering and tie-breaking."""

import math

import pytest

from server.rules.engine import apply_rules
from server.rules.model import RuleCandidate
from server.rules.parse import parse_rule_set
from server.rules.ruleset import EMPTY_RULE_SET

NOW = 1_700_000_000.0


def run(rules, cands, **kw):
    kw.setdefault("now", NOW)
    return apply_rules(parse_rule_set("t", rules), cands, **kw)


def adds_up(item):
    return item.final_score == item.model_score + sum(d for _, d in item.adjustments)


def test_empty_rule_set_orders_by_model_score_ties_by_id_unscored_last():
    cands = [
        RuleCandidate("u2", 0.0, None, {}, scored=False),
        RuleCandidate("b", 1.0), RuleCandidate("a", 1.0), RuleCandidate("c", 2.0), RuleCandidate("d", -3.0),
        RuleCandidate("u1", 0.0, None, {}, scored=False),
    ]
    for rs in (None, EMPTY_RULE_SET):
        out = apply_rules(rs, cands, now=NOW)
        assert [i.item_id for i in out.items] == ["c", "a", "b", "d", "u1", "u2"]
        assert [i.position for i in out.items] == [1, 2, 3, 4, 5, 6]
        assert all(i.adjustments == [] and i.final_score == i.model_score for i in out.items)
        assert out.filtered == []
    assert [i.item_id for i in apply_rules(None, cands, now=NOW, top_n=2).items] == ["c", "a"]


def test_unscored_items_stay_last_even_with_higher_scores():
    cands = [RuleCandidate("u", 100.0, 9.0, {"g": "x"}, scored=False), RuleCandidate("s", -5.0, 0.0, {})]
    out = run({"boosts": [{"when": {"attribute": "g", "equals": "x"}, "add": 1000}]}, cands)
    assert [i.item_id for i in out.items] == ["s", "u"]
    assert out.items[1].scored is False


def test_blend_minmax():
    cands = [RuleCandidate("a", 10.0, 0.0), RuleCandidate("b", 0.0, 1.0), RuleCandidate("c", 5.0, 0.5)]
    out = run({"blend": {"model_weight": 0.25, "retrieval_weight": 0.75}}, cands)
    got = {i.item_id: i for i in out.items}
    assert got["a"].final_score == pytest.approx(0.25)
    assert got["b"].final_score == pytest.approx(0.75)
    assert got["c"].final_score == pytest.approx(0.5)
    assert [i.item_id for i in out.items] == ["b", "c", "a"]
    for it in out.items:
        assert [r for r, _ in it.adjustments] == ["blend"] and adds_up(it)


def test_blend_sigmoid_none_and_missing_retrieval():
    cands = [RuleCandidate("a", 0.0, 2.0), RuleCandidate("b", 0.0, None)]
    out = run({"blend": {"model_weight": 1, "retrieval_weight": 1, "model_normalize": "sigmoid",
                         "retrieval_normalize": "none", "missing_retrieval": -1}}, cands)
    got = {i.item_id: i.final_score for i in out.items}
    assert got == {"a": pytest.approx(2.5), "b": pytest.approx(-0.5)}


def test_blend_constant_scores_are_neutral():
    out = run({"blend": {"retrieval_weight": 1}}, [RuleCandidate("a", 3.0, 1.0), RuleCandidate("b", 3.0, 1.0)])
    assert [i.final_score for i in out.items] == [pytest.approx(1.0)] * 2
    assert [i.item_id for i in out.items] == ["a", "b"]


def test_boosts_multiplicative_and_additive_in_order():
    rules = {"boosts": [
        {"name": "x2", "when": {"attribute": "g", "equals": "A"}, "multiply": 2},
        {"name": "plus", "when": {"attribute": "g", "in": ["A", "B"]}, "add": 0.5},
        {"name": "demote", "when": {"attribute": "g", "equals": "B"}, "multiply": 0.5},
    ]}
    cands = [RuleCandidate("a", 1.0, None, {"g": "A"}), RuleCandidate("b", 3.0, None, {"g": "B"}),
             RuleCandidate("c", 2.0, None, {"g": "C"})]
    out = run(rules, cands)
    got = {i.item_id: i for i in out.items}
    assert got["a"].adjustments == [("x2", 1.0), ("plus", 0.5)] and got["a"].final_score == 2.5
    assert got["b"].adjustments == [("plus", 0.5), ("demote", -1.75)] and got["b"].final_score == 1.75
    assert got["c"].adjustments == [] and got["c"].final_score == 2.0
    assert [i.item_id for i in out.items] == ["a", "c", "b"]


def test_multiplicative_boost_promotes_negative_logits():
    cands = [RuleCandidate("a", -2.0, None, {"g": "A"}), RuleCandidate("b", -2.5)]
    out = run({"boosts": [{"name": "up", "when": {"attribute": "g", "equals": "A"}, "multiply": 1.5}]}, cands)
    assert out.items[0].adjustments == [("up", 1.0)] and out.items[0].final_score == -1.0
    out = run({"boosts": [{"name": "down", "when": {"attribute": "g", "equals": "A"}, "multiply": 0.5}]}, cands)
    assert out.items[0].item_id == "b" and out.items[1].final_score == -3.0


def test_explanation_adds_up_and_serializes():
    rules = {"blend": {"model_weight": 0.7, "retrieval_weight": 0.3},
             "boosts": [{"name": "b1", "when": {"attribute": "g", "equals": "A"}, "multiply": 1.1},
                        {"name": "b2", "when": {"attribute": "g", "equals": "A"}, "add": 0.1}]}
    cands = [RuleCandidate(f"i{k}", k * 0.37 - 3, (k * 0.11) % 1, {"g": "A" if k % 2 else "B"}) for k in range(20)]
    out = run(rules, cands)
    for it in out.items:
        assert adds_up(it)
        data = it.explanation()
        assert data["final_score"] == it.final_score
        assert math.isclose(data["model_score"] + math.fsum(a["delta"] for a in data["adjustments"]),
                            data["final_score"], rel_tol=1e-12, abs_tol=1e-12)
        assert [a["rule"] for a in data["adjustments"]][:1] == ["blend"]
    finals = [it.final_score for it in out.items]
    assert finals == sorted(finals, reverse=True)


def test_ties_are_broken_by_item_id_whatever_the_input_order():
    cands = [RuleCandidate(x, 1.0) for x in ("m", "b", "z", "a")]
    a = run({"blend": {"retrieval_weight": 1}}, cands)
    b = run({"blend": {"retrieval_weight": 1}}, list(reversed(cands)))
    assert [i.item_id for i in a.items] == [i.item_id for i in b.items] == ["a", "b", "m", "z"]


def test_nan_scores_sort_last_deterministically():
    cands = [RuleCandidate("n", float("nan")), RuleCandidate("a", 0.0), RuleCandidate("b", -1.0)]
    assert [i.item_id for i in apply_rules(None, cands, now=NOW).items] == ["a", "b", "n"]


def test_outcome_to_response_items_and_candidate_helper():
    from server.types import Candidate, Item, ScoredFrom

    cands = [
        RuleCandidate.of(Candidate("a", 0.5), Item("a", attributes={"g": "A"}), 2.0, ScoredFrom.ID_TOKEN),
        RuleCandidate.of(Candidate("cold"), None, None, ScoredFrom.TEXT),  # not scored: unspecified
    ]
    assert cands[1].scored is False and cands[1].attributes == {} and cands[0].retrieval_score == 0.5
    out = run({"boosts": [{"name": "b", "when": {"attribute": "g", "equals": "A"}, "add": 1}]}, cands)
    items = out.to_scored_items(explain=True)
    assert [(i.item_id, i.rank, i.score, i.unscored) for i in items] == [("a", 1, 3.0, False), ("cold", 2, 0.0, True)]
    assert items[0].explanation.adjustments == (("b", 1.0),)
    assert items[0].explanation.final_score == 3.0 and items[0].explanation.retrieval_score == 0.5
    assert out.to_scored_items()[0].explanation is None
    sources = [ScoredFrom.ID_TOKEN, ScoredFrom.UNSPECIFIED]
    assert [i.scored_from for i in items] == [i.explanation.scored_from for i in items] == sources
    assert [i.scored_from for i in out.to_scored_items()] == sources
    assert [it.explanation()["scored_from"] for it in out.items] == ["id_token", ""]
