"""Pins: items at fixed positions, applied after everything else."""

from server.rules.engine import apply_rules
from server.rules.model import RuleCandidate
from server.rules.parse import parse_rule_set

NOW = 1_700_000_000.0


def run(rules, cands, **kw):
    kw.setdefault("now", NOW)
    return apply_rules(parse_rule_set("t", rules), cands, **kw)


def ids(out):
    return [i.item_id for i in out.items]


CANDS = [RuleCandidate(x, s, None, {"g": g}) for x, s, g in
         [("a", 5.0, "A"), ("b", 4.0, "A"), ("c", 3.0, "B"), ("d", 2.0, "A"), ("e", 1.0, "C")]]


def test_pins_land_at_their_positions():
    out = run({"pins": [{"item_id": "e", "position": 1}, {"item_id": "a", "position": 3}]}, CANDS)
    assert ids(out) == ["e", "b", "a", "c", "d"]
    assert out.items[0].notes == [("pins", "pinned at position 1")]
    assert out.items[0].final_score == 1.0  # a pin moves, it does not rescore


def test_pin_past_the_end_goes_last_and_top_n_cuts_it():
    out = run({"pins": [{"item_id": "a", "position": 50}]}, CANDS)
    assert ids(out) == ["b", "c", "d", "e", "a"]
    assert ids(run({"pins": [{"item_id": "e", "position": 4}]}, CANDS, top_n=3)) == ["a", "b", "c"]
    assert ids(run({"pins": [{"item_id": "e", "position": 2}]}, CANDS, top_n=3)) == ["a", "e", "b"]


def test_pin_of_a_filtered_item_is_dropped_unless_it_ignores_filters():
    rules = {"filters": [{"name": "no_c", "when": {"attribute": "g", "equals": "C"}}],
             "pins": [{"item_id": "e", "position": 1}]}
    out = run(rules, CANDS)
    assert "e" not in ids(out) and out.filtered == [("e", "no_c")]
    rules["pins"][0]["ignore_filters"] = True
    out = run(rules, CANDS)
    assert ids(out)[0] == "e" and out.filtered == []
    assert any("no_c" in note for _, note in out.items[0].notes)


def test_pin_of_an_unknown_item_is_ignored():
    assert ids(run({"pins": [{"item_id": "zz", "position": 1}]}, CANDS)) == ["a", "b", "c", "d", "e"]


def test_pins_are_applied_after_diversity_and_exempt_from_it():
    rules = {"diversity": [{"attribute": "g", "max_per_value": 1, "window": 3}],
             "pins": [{"item_id": "b", "position": 2}]}
    out = run(rules, CANDS)
    # without b: a(A) c(B) e(C) | d(A); then b pinned at 2
    assert ids(out) == ["a", "b", "c", "e", "d"]


def test_unscored_item_can_be_pinned():
    cands = [*CANDS, RuleCandidate("u", 0.0, None, {}, scored=False)]
    assert ids(run({"pins": [{"item_id": "u", "position": 1}]}, cands, top_n=2)) == ["u", "a"]
