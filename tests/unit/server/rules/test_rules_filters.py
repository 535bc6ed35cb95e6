"""Filters: already interacted, unavailable, attribute predicates."""

import pytest

from server.rules.engine import apply_rules
from server.rules.model import RuleCandidate
from server.rules.parse import parse_rule_set
from server.types import Event

NOW = 1_700_000_000.0
DAY = 86400.0


def C(item_id, score=1.0, **attrs):
    return RuleCandidate(item_id, score, None, attrs)


def ids(outcome):
    return [it.item_id for it in outcome.items]


def run(rules, cands, **kw):
    kw.setdefault("now", NOW)
    return apply_rules(parse_rule_set("t", rules), cands, **kw)


def test_exclude_interacted_by_event_type_and_window():
    history = [
        Event("u", "bought_recently", "purchase", NOW - 2 * DAY),
        Event("u", "bought_long_ago", "purchase", NOW - 40 * DAY),
        Event("u", "only_viewed", "view", NOW - 1),
    ]
    cands = [C("bought_recently", 3), C("bought_long_ago", 2), C("only_viewed", 1), C("fresh", 0)]
    out = run({"exclude_interacted": {"event_types": ["purchase"], "window_s": "30d"}}, cands, history=history)
    assert ids(out) == ["bought_long_ago", "only_viewed", "fresh"]
    assert out.filtered == [("bought_recently", "exclude_interacted")]
    # no window: ever; default event types: all of them
    out = run({"exclude_interacted": True}, cands, history=history)
    assert ids(out) == ["fresh"]


def test_exclude_interacted_window_edge_is_inclusive():
    history = [Event("u", "a", "click", NOW - 60)]
    assert ids(run({"exclude_interacted": {"window_s": 60}}, [C("a")], history=history)) == []
    assert ids(run({"exclude_interacted": {"window_s": 59}}, [C("a")], history=history)) == ["a"]


def test_exclude_unavailable():
    cands = [C("a", available="false"), C("b", available=" No "), C("c", available="true"), C("d")]
    out = run({"exclude_unavailable": True}, cands)
    assert ids(out) == ["c", "d"]
    assert out.filtered == [("a", "exclude_unavailable"), ("b", "exclude_unavailable")]
    out = run({"exclude_unavailable": {"attribute": "stock", "values": ["0"], "missing_is_available": False}},
              [C("a", stock="0"), C("b", stock="4"), C("c")])
    assert ids(out) == ["b"]


@pytest.mark.parametrize("when, dropped", [
    ({"attribute": "genres", "equals": "Horror"}, {"h", "hc"}),
    ({"attribute": "genres", "in": ["Comedy", "Drama"]}, {"hc", "d"}),
    ({"attribute": "year", "range": {"min": 1990, "max": 2000}}, {"h", "d"}),
    ({"attribute": "year", "range": {"min": 2001}}, {"hc"}),
    ({"attribute": "genres", "equals": "Horror", "negate": True}, {"d", "none"}),
    ([{"attribute": "genres", "equals": "Horror"}, {"attribute": "year", "range": {"max": 1999}}], {"h"}),
    ({"attribute": "genres", "equals": "horror"}, set()),  # exact, case-sensitive
])
def test_attribute_predicates(when, dropped):
    cands = [
        C("h", genres="Horror", year="1995"),
        C("hc", genres="Horror|Comedy", year="2010"),
        C("d", genres=" Drama ", year="2000"),
        C("none", year="n/a"),
    ]
    out = run({"filters": [{"name": "f", "when": when}]}, cands)
    assert {i for i, _ in out.filtered} == dropped
    assert set(ids(out)) == {"h", "hc", "d", "none"} - dropped


def test_first_matching_filter_names_the_rule():
    rules = {
        "exclude_unavailable": True,
        "filters": [{"name": "no_horror", "when": {"attribute": "g", "equals": "Horror"}},
                    {"name": "no_old", "when": {"attribute": "year", "range": {"max": 1980}}}],
    }
    cands = [C("a", g="Horror", year="1970"), C("b", year="1970"), C("c", g="Horror", available="no"), C("d")]
    out = run(rules, cands)
    assert out.filtered == [("a", "no_horror"), ("b", "no_old"), ("c", "exclude_unavailable")]
    assert ids(out) == ["d"]


def test_filters_apply_to_unscored_items_too():
    out = run({"filters": [{"name": "f", "when": {"attribute": "g", "equals": "x"}}]},
              [RuleCandidate("a", 0.0, None, {"g": "x"}, scored=False), C("b")])
    assert ids(out) == ["b"] and out.filtered == [("a", "f")]


def test_duplicate_candidates_keep_the_first():
    out = run({}, [C("a", 1.0), C("a", 5.0), C("b", 2.0)])
    assert [(i.item_id, i.model_score) for i in out.items] == [("b", 2.0), ("a", 1.0)]
