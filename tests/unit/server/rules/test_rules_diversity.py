"""Diversity caps and MMR."""

from collections import Counter

from server.rules.engine import apply_rules
from server.rules.model import RuleCandidate
from server.rules.parse import parse_rule_set

NOW = 1_700_000_000.0


def run(rules, cands, **kw):
    kw.setdefault("now", NOW)
    return apply_rules(parse_rule_set("t", rules), cands, **kw)


def ids(out):
    return [i.item_id for i in out.items]


def cands_by_genre(genres, prefix="i"):
    # strictly decreasing scores, in the given order
    return [RuleCandidate(f"{prefix}{k:02d}", 100.0 - k, None, {"g": g}) for k, g in enumerate(genres)]


def test_cap_moves_extra_items_below_the_window_keeping_order():
    cands = cands_by_genre(["A", "A", "A", "B", "A", "C", "B"])
    out = run({"diversity": [{"name": "cap", "attribute": "g", "max_per_value": 2, "window": 4}]}, cands)
    assert ids(out) == ["i00", "i01", "i03", "i05", "i02", "i04", "i06"]
    moved = {i.item_id: i.notes for i in out.items}
    assert moved["i02"] and moved["i02"][0][0] == "cap" and "moved down" in moved["i02"][0][1]
    assert moved["i00"] == []
    assert all(i.adjustments == [] for i in out.items)  # diversity moves, never rescored


def test_cap_defaults_to_the_returned_list():
    cands = cands_by_genre(["A", "A", "A", "B", "B", "B", "C"])
    out = run({"diversity": [{"attribute": "g", "max_per_value": 1}]}, cands, top_n=3)
    assert ids(out) == ["i00", "i03", "i06"]


def test_non_strict_cap_fills_when_nothing_else_is_left():
    cands = cands_by_genre(["A", "A", "A", "B"])
    out = run({"diversity": [{"name": "cap", "attribute": "g", "max_per_value": 1, "window": 4}]}, cands)
    assert ids(out) == ["i00", "i03", "i01", "i02"]
    assert any("cap exceeded" in n for _, n in out.items[2].notes)
    assert out.filtered == []


def test_strict_cap_returns_fewer_items_and_reports_them():
    cands = cands_by_genre(["A", "A", "A", "B"])
    out = run({"diversity": [{"name": "cap", "attribute": "g", "max_per_value": 1, "window": 4, "strict": True}]},
              cands)
    assert ids(out) == ["i00", "i03"]
    assert out.filtered == [("i01", "cap"), ("i02", "cap")]


def test_strict_cap_keeps_items_after_a_full_window():
    cands = cands_by_genre(["A", "A", "B", "C", "A"])
    out = run({"diversity": [{"name": "cap", "attribute": "g", "max_per_value": 1, "window": 3, "strict": True}]},
              cands)
    assert ids(out) == ["i00", "i02", "i03", "i01", "i04"] and out.filtered == []


def test_multi_valued_attribute_counts_each_value():
    cands = [
        RuleCandidate("a", 5.0, None, {"g": "Action|Comedy"}),
        RuleCandidate("b", 4.0, None, {"g": "Comedy"}),
        RuleCandidate("c", 3.0, None, {"g": "Action|Drama"}),
        RuleCandidate("d", 2.0, None, {"g": "Drama"}),
        RuleCandidate("e", 1.0, None, {}),
    ]
    out = run({"diversity": [{"attribute": "g", "max_per_value": 1, "window": 3}]}, cands)
    assert ids(out) == ["a", "d", "e", "b", "c"]


def test_several_caps_with_their_own_windows():
    cands = [RuleCandidate(f"i{k}", 10.0 - k, None, {"g": g, "s": s})
             for k, (g, s) in enumerate([("A", "x"), ("A", "y"), ("B", "x"), ("C", "x"), ("D", "z")])]
    rules = {"diversity": [{"attribute": "g", "max_per_value": 1, "window": 2},
                           {"attribute": "s", "max_per_value": 1, "window": 4}]}
    out = run(rules, cands)
    # pos1 i0(A,x); pos2 needs g!=A and s!=x: i4; pos3..4 only the s cap: i1(y); then s-cap full for x,y,z
    assert ids(out) == ["i0", "i4", "i1", "i2", "i3"]


def test_caps_carry_over_into_the_unscored_tier():
    cands = [RuleCandidate("s1", 5.0, None, {"g": "A"}),
             RuleCandidate("u1", 0.0, None, {"g": "A"}, scored=False),
             RuleCandidate("u2", 0.0, None, {"g": "B"}, scored=False)]
    out = run({"diversity": [{"attribute": "g", "max_per_value": 1, "window": 2}]}, cands)
    assert ids(out) == ["s1", "u2", "u1"]


def test_mmr_trades_score_for_variety():
    cands = [
        RuleCandidate("a1", 1.00, None, {"g": "A"}),
        RuleCandidate("a2", 0.99, None, {"g": "A"}),
        RuleCandidate("a3", 0.98, None, {"g": "A"}),
        RuleCandidate("b1", 0.90, None, {"g": "B"}),
        RuleCandidate("c1", 0.50, None, {"g": "C"}),
    ]
    div = run({"mmr": {"lambda": 0.5, "attributes": ["g"]}}, cands, top_n=3)
    assert ids(div) == ["a1", "b1", "c1"]
    assert any(r == "mmr" for r, _ in div.items[1].notes)
    pure = run({"mmr": {"lambda": 1.0, "attributes": ["g"]}}, cands)
    assert ids(pure) == ["a1", "a2", "a3", "b1", "c1"]
    # window: only the first picks are diversified; the rest keep score order
    part = run({"mmr": {"lambda": 0.5, "attributes": ["g"], "window": 2}}, cands)
    assert ids(part) == ["a1", "b1", "a2", "a3", "c1"]


def test_mmr_partial_overlap_uses_jaccard():
    cands = [
        RuleCandidate("x", 1.0, None, {"g": "A|B"}),
        RuleCandidate("z", 0.9, None, {"g": "A|B|D"}),  # Jaccard with x: 2/3, relevance 0.5
        RuleCandidate("y", 0.8, None, {"g": "A|C"}),    # Jaccard with x: 1/3, relevance 0
    ]
    # lambda 0.5: z = 0.25 - 0.5*2/3 = -0.083 beats y = -0.5/3 = -0.167
    assert ids(run({"mmr": {"lambda": 0.5, "attributes": ["g"]}}, cands)) == ["x", "z", "y"]
    # lambda 0.3: z = 0.15 - 0.7*2/3 = -0.317 loses to y = -0.7/3 = -0.233
    assert ids(run({"mmr": {"lambda": 0.3, "attributes": ["g"]}}, cands)) == ["x", "y", "z"]


def test_mmr_then_caps_hold():
    cands = cands_by_genre(["A"] * 6 + ["B"] * 3)
    genre = {c.item_id: c.attributes["g"] for c in cands}
    out = run({"mmr": {"lambda": 0.9, "attributes": ["g"]},
               "diversity": [{"attribute": "g", "max_per_value": 2, "window": 4}]}, cands)
    assert Counter(genre[i.item_id] for i in out.items[:4]) == {"A": 2, "B": 2}
    assert len(out.items) == 9
