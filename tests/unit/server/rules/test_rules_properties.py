"""Property-based tests: random candidate sets x random rule combinations.

Invariants: no filtered item is returned, pins sit at their positions, diversity caps hold
(strict caps always; non-strict ones unless no other candidate was left), top_n is respected,
the order is deterministic (and independent of the input order), unscored items come last,
and every explanation adds up exactly to the final score.
"""

import dataclasses
import math
import os
import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.rules.engine import apply_rules
from server.rules.model import RuleCandidate
from server.rules.parse import parse_rule_set
from server.rules.predicates import split_values
from server.types import EVENT_TYPES, Event

NOW = 1_700_000_000.0
IDS = [f"i{k:02d}" for k in range(30)]
GENRES = ["A", "B", "C", "D"]
SELLERS = ["s1", "s2", "s3"]
# Modest by default (the folder runs in seconds); RULES_PROPERTY_EXAMPLES=5000 for a deep run.
PROFILE = settings(max_examples=int(os.environ.get("RULES_PROPERTY_EXAMPLES", "150")), deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- strategies

scores = st.floats(min_value=-10, max_value=10, allow_nan=False).map(lambda x: round(x, 2))


@st.composite
def attributes(draw):
    attrs = {}
    genres = draw(st.lists(st.sampled_from(GENRES), max_size=2, unique=True))
    if genres:
        attrs["genres"] = "|".join(genres)
    if draw(st.booleans()):
        attrs["seller"] = draw(st.sampled_from(SELLERS))
    if draw(st.booleans()):
        attrs["year"] = str(draw(st.integers(1990, 2025)))
    if draw(st.integers(0, 3)) == 0:
        attrs["available"] = draw(st.sampled_from(["true", "false", "no"]))
    return attrs


@st.composite
def candidates(draw):
    ids = draw(st.lists(st.sampled_from(IDS), min_size=0, max_size=25, unique=True))
    return [
        RuleCandidate(
            item_id=i,
            model_score=draw(scores),
            retrieval_score=draw(st.none() | st.floats(0, 1).map(lambda x: round(x, 2))),
            attributes=draw(attributes()),
            scored=draw(st.integers(0, 5)) > 0,
        )
        for i in ids
    ]


predicates = st.one_of(
    st.builds(lambda g, n: {"attribute": "genres", "equals": g, "negate": n}, st.sampled_from(GENRES), st.booleans()),
    st.builds(lambda s: {"attribute": "seller", "in": s},
              st.lists(st.sampled_from(SELLERS), min_size=1, max_size=2, unique=True)),
    st.builds(lambda lo, w: {"attribute": "year", "range": {"min": lo, "max": lo + w}},
              st.integers(1990, 2025), st.integers(0, 15)),
)


@st.composite
def rule_sets(draw):
    rules: dict = {}
    if draw(st.booleans()):
        rules["exclude_interacted"] = {
            "event_types": draw(st.lists(st.sampled_from(EVENT_TYPES), min_size=1, unique=True)),
            "window_s": draw(st.none() | st.integers(1, 1000)),
        }
    if draw(st.booleans()):
        rules["exclude_unavailable"] = True
    rules["filters"] = [{"when": draw(st.lists(predicates, min_size=1, max_size=2))}
                        for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        rules["blend"] = {
            "model_weight": draw(st.sampled_from([0.0, 0.3, 1.0])),
            "retrieval_weight": draw(st.sampled_from([0.2, 0.7, 1.0])),
            "model_normalize": draw(st.sampled_from(["minmax", "sigmoid", "none"])),
            "missing_retrieval": draw(st.sampled_from([0.0, 0.5])),
        }
    boosts = []
    for _ in range(draw(st.integers(0, 3))):
        b = {"when": draw(predicates)}
        if draw(st.booleans()):
            b["multiply"] = draw(st.sampled_from([0.5, 0.9, 1.1, 2.0]))
        else:
            b["add"] = draw(st.sampled_from([-1.0, -0.1, 0.25, 3.0]))
        boosts.append(b)
    rules["boosts"] = boosts
    rules["diversity"] = [
        {"attribute": draw(st.sampled_from(["genres", "seller"])),
         "max_per_value": draw(st.integers(1, 3)),
         "window": draw(st.none() | st.integers(1, 10)),
         "strict": draw(st.booleans())}
        for _ in range(draw(st.integers(0, 2)))
    ]
    if draw(st.integers(0, 3)) == 0:
        rules["mmr"] = {"lambda": draw(st.sampled_from([0.0, 0.5, 0.8, 1.0])),
                        "attributes": draw(st.lists(st.sampled_from(["genres", "seller"]), min_size=1, unique=True)),
                        "window": draw(st.none() | st.integers(1, 10))}
    pin_ids = draw(st.lists(st.sampled_from(IDS), max_size=3, unique=True))
    positions = draw(st.lists(st.integers(1, 12), min_size=len(pin_ids), max_size=len(pin_ids), unique=True))
    rules["pins"] = [{"item_id": i, "position": p, "ignore_filters": draw(st.booleans())}
                     for i, p in zip(pin_ids, positions)]
    return rules


@st.composite
def histories(draw):
    return [Event("u", draw(st.sampled_from(IDS)), draw(st.sampled_from(EVENT_TYPES)),
                  NOW - draw(st.integers(0, 2000))) for _ in range(draw(st.integers(0, 10)))]


# ----------------------------------------------------------------------------- oracles


def _pred(p: dict, attrs: dict) -> bool:
    """A deliberately naive reimplementation of predicate matching."""
    raw = attrs.get(p["attribute"])
    values = split_values(raw) if raw is not None else []
    if "equals" in p:
        hit = p["equals"] in values
    elif "in" in p:
        hit = any(v in p["in"] for v in values)
    else:
        lo, hi = p["range"].get("min", -math.inf), p["range"].get("max", math.inf)
        hit = False
        for v in values:
            try:
                hit = hit or lo <= float(v) <= hi
            except ValueError:
                pass
    return hit != p.get("negate", False)


def should_filter(rules: dict, c: RuleCandidate, history) -> bool:
    ei = rules.get("exclude_interacted")
    if ei and any(e.item_id == c.item_id and e.event_type in ei["event_types"]
                  and (ei["window_s"] is None or NOW - e.timestamp <= ei["window_s"]) for e in history):
        return True
    if rules.get("exclude_unavailable") and c.attributes.get("available", "").lower() in ("false", "0", "no"):
        return True
    return any(all(_pred(p, c.attributes) for p in f["when"]) for f in rules["filters"])


def _values(attrs, attribute):
    return set(split_values(attrs.get(attribute, "")))


# ----------------------------------------------------------------------------- properties


@PROFILE
@given(cands=candidates(), rules=rule_sets(), history=histories(), top_n=st.integers(0, 15))
def test_invariants(cands, rules, history, top_n):
    rs = parse_rule_set("p", rules)
    out = apply_rules(rs, cands, history=history, now=NOW, top_n=top_n)
    by_id = {c.item_id: c for c in cands}
    returned = [i.item_id for i in out.items]
    filtered = dict(out.filtered)
    pins = {p["item_id"]: p for p in rules["pins"]}

    # positions, uniqueness, top_n
    assert [i.position for i in out.items] == list(range(1, len(out.items) + 1))
    assert len(set(returned)) == len(returned) and set(returned) <= set(by_id)
    if top_n:
        assert len(returned) <= top_n
    assert len(filtered) == len(out.filtered)

    # no filtered item returned; filters match the naive oracle (pins may ignore filters)
    assert not set(returned) & set(filtered)
    for c in cands:
        pinned_through = c.item_id in pins and pins[c.item_id]["ignore_filters"]
        if should_filter(rules, c, history) and not pinned_through:
            assert c.item_id not in returned
            assert c.item_id in filtered
        elif c.item_id in filtered:  # only a strict diversity cap removes anything else
            assert filtered[c.item_id].startswith("diversity[")
            assert any(cap["strict"] for cap in rules["diversity"])

    # without strict caps, exactly the survivors come back, up to top_n
    survivors = [c for c in cands if c.item_id not in filtered]
    if not any(cap["strict"] for cap in rules["diversity"]):
        assert len(returned) == (min(top_n, len(survivors)) if top_n else len(survivors))

    # explanations add up exactly; scores unchanged by moves
    for it in out.items:
        c = by_id[it.item_id]
        assert it.model_score == c.model_score and it.retrieval_score == c.retrieval_score
        assert it.final_score == it.model_score + sum(d for _, d in it.adjustments)
        assert all(isinstance(r, str) and r for r, _ in it.adjustments)

    # pins: in ascending position order, each at min(position, what exists before it)
    present = [p for p in sorted(rules["pins"], key=lambda p: p["position"])
               if p["item_id"] in by_id and p["item_id"] not in filtered]
    non_pinned = [i for i in out.items if i.item_id not in pins]
    n_free = len(non_pinned) if not top_n else None
    for k, p in enumerate(present):
        if p["item_id"] in returned:
            pos = returned.index(p["item_id"]) + 1
            if n_free is not None:
                assert pos == min(p["position"], n_free + k + 1)
            else:  # the cut hides how many items there were: a pin lands early only at the end
                assert pos <= p["position"]
                if pos < p["position"]:
                    assert all(x in pins for x in returned[pos:])
        else:  # only the cut to top_n can drop a pinned survivor
            assert top_n and len(returned) == top_n

    # unscored after scored (pins excepted)
    tiers = [by_id[i.item_id].scored for i in non_pinned]
    assert tiers == sorted(tiers, reverse=True)

    # diversity caps over the non-pinned list
    order = [by_id[i.item_id] for i in non_pinned]
    for cap in rules["diversity"]:
        window = cap["window"] or top_n or len(order)
        counts = Counter(v for c in order[:window] for v in _values(c.attributes, cap["attribute"]))
        if cap["strict"]:
            assert all(n <= cap["max_per_value"] for n in counts.values()), (cap, counts)
    if not top_n:
        _check_caps_exceeded_only_when_unavoidable(order, rules["diversity"])

    # with no reordering rules, non-pinned items of a tier are sorted by (-final, item_id)
    if not rules["diversity"] and "mmr" not in rules:
        for tier in (True, False):
            seq = [(-i.final_score, i.item_id) for i in non_pinned if i.scored is tier]
            assert seq == sorted(seq)


def _check_caps_exceeded_only_when_unavoidable(order, caps):
    """When an item breaks a cap at position p, every later item of its tier broke one too."""
    counts = [Counter() for _ in caps]

    def breaks(c, p):
        return any(
            (cap["window"] or len(order)) > p
            and any(counts[k][v] >= cap["max_per_value"] for v in _values(c.attributes, cap["attribute"]))
            for k, cap in enumerate(caps)
        )

    for p, c in enumerate(order):
        if breaks(c, p):
            later = [d for d in order[p + 1:] if d.scored == c.scored]
            assert all(breaks(d, p) for d in later), (p, c.item_id)
        for k, cap in enumerate(caps):
            if (cap["window"] or len(order)) > p:
                for v in _values(c.attributes, cap["attribute"]):
                    counts[k][v] += 1


@PROFILE
@given(cands=candidates(), rules=rule_sets(), history=histories(), top_n=st.integers(0, 15),
       seed=st.integers(0, 2**32 - 1))
def test_order_is_deterministic_and_independent_of_input_order(cands, rules, history, top_n, seed):
    rs = parse_rule_set("p", rules)
    a = apply_rules(rs, cands, history=history, now=NOW, top_n=top_n)
    b = apply_rules(rs, cands, history=history, now=NOW, top_n=top_n)
    shuffled = list(cands)
    random.Random(seed).shuffle(shuffled)
    c = apply_rules(rs, shuffled, history=list(reversed(history)), now=NOW, top_n=top_n)
    assert a == b
    assert [(i.item_id, i.final_score) for i in a.items] == [(i.item_id, i.final_score) for i in c.items]
    assert sorted(a.filtered) == sorted(c.filtered)


@PROFILE
@given(cands=candidates(), rules=rule_sets(), history=histories(), top_n=st.integers(0, 15))
def test_response_items_with_and_without_explanations_agree(cands, rules, history, top_n):
    """The plain response items (built straight from the engine's entries) are the explained
    ones minus the explanation, which itself matches the RankedItem."""
    out = apply_rules(parse_rule_set("p", rules), cands, history=history, now=NOW, top_n=top_n)
    plain, explained = out.to_scored_items(), out.to_scored_items(explain=True)
    assert [dataclasses.replace(i, explanation=None) for i in explained] == plain
    for item, ranked in zip(explained, out.items):
        assert (item.item_id, item.score, item.rank, item.unscored) == (
            ranked.item_id, ranked.final_score, ranked.position, not ranked.scored)
        assert item.explanation.adjustments == tuple(ranked.adjustments)


raw_values = st.lists(st.sampled_from(["A", " A", "B ", "", "1990", " 2001", "x|y", "nan", "inf", "1e3"]),
                      min_size=1, max_size=3).map("|".join)
any_predicate = st.one_of(
    predicates,
    st.builds(lambda v, n: {"attribute": "a", "equals": v, "negate": n}, st.sampled_from(["A", "B", "x"]), st.booleans()),
    st.builds(lambda v, n: {"attribute": "a", "in": v, "negate": n},
              st.lists(st.sampled_from(["A", "B", "y", "1990"]), min_size=1), st.booleans()),
    st.builds(lambda lo, hi, n: {"attribute": "a", "range": {k: v for k, v in (("min", lo), ("max", hi)) if v is not None},
                                 "negate": n},
              st.none() | st.integers(1000, 2000), st.none() | st.integers(2000, 3000), st.booleans())
    .filter(lambda p: p["range"]),
)


@settings(max_examples=int(os.environ.get("RULES_PROPERTY_EXAMPLES", "150")) * 2, deadline=None)
@given(pred=any_predicate, raw=st.none() | raw_values)
def test_compiled_matchers_agree_with_the_reference(pred, raw):
    from server.rules.parse import _predicate
    from server.rules.predicates import compile_when

    p = _predicate(pred, "p")
    attrs = {} if raw is None else {p.attribute: raw}
    assert compile_when((p,))(attrs) == p.matches(attrs) == _pred(pred, attrs)


def _reference_mmr(items, lam, attributes, window):
    """Textbook MMR in plain Python: items are (item_id, final, attrs) in score order."""
    finals = [f for _, f, _ in items]
    lo, hi = min(finals, default=0.0), max(finals, default=0.0)
    rel = [(f - lo) / (hi - lo) if hi > lo else 1.0 for f in finals]
    values = [[set(split_values(a.get(attr, ""))) for attr in attributes] for _, _, a in items]

    def sim(i, j):
        total = 0.0
        for a, b in zip(values[i], values[j]):
            if b:
                total += len(a & b) / len(a | b)
        return total / len(attributes)

    picked, left = [], list(range(len(items)))
    while left and len(picked) < window:
        best = max(left, key=lambda i: (lam * rel[i] - (1 - lam) * max((sim(i, j) for j in picked), default=0.0), -i))
        picked.append(best)
        left.remove(best)
    return [items[i][0] for i in picked + left]


@PROFILE
@given(cands=candidates(), lam=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
       attributes=st.lists(st.sampled_from(["genres", "seller"]), min_size=1, unique=True),
       window=st.integers(1, 12))
def test_mmr_matches_a_reference_implementation(cands, lam, attributes, window):
    scored = [c for c in cands if c.scored]
    rs = parse_rule_set("p", {"mmr": {"lambda": lam, "attributes": attributes, "window": window}})
    out = apply_rules(rs, scored, now=NOW)
    by_score = sorted(scored, key=lambda c: (-c.model_score, c.item_id))
    expected = _reference_mmr([(c.item_id, c.model_score, c.attributes) for c in by_score], lam, attributes, window)
    assert [i.item_id for i in out.items] == expected
