"""Rules file parsing and validation (``server.rules.parse``)."""

from pathlib import Path

import pytest

from server.errors import InvalidArgument
from server.rules.parse import parse_rule_set, parse_rules
from server.rules.ruleset import EMPTY_RULE_SET

EXAMPLE = Path(__file__).resolve().parents[4] / "server" / "rules" / "example_rules.yaml"


def _set(body: str, name: str = "default"):
    text = "rule_sets:\n  " + name + ":\n" + "\n".join("    " + line for line in body.strip().splitlines())
    return parse_rules(text)[name]


def test_example_file_is_valid_and_documents_every_rule():
    sets = parse_rules(EXAMPLE.read_text())
    assert {"default", "homepage", "model_only"} <= set(sets)
    d = sets["default"]
    assert d.exclude_interacted and d.exclude_interacted.window_s == 30 * 86400
    assert d.exclude_unavailable and d.filters and d.blend and d.boosts and d.diversity
    assert sets["homepage"].pins[0].item_id == "sku-123"
    assert sets["homepage"].blend == d.blend  # shared through a YAML anchor
    assert sets["model_only"].is_empty
    text = EXAMPLE.read_text()
    for option in ("event_types", "window_s", "missing_is_available", "model_normalize",
                   "retrieval_normalize", "missing_retrieval", "multiply", "add:", "max_per_value",
                   "strict", "lambda", "ignore_filters", "overridable", "negate", "range"):
        assert option in text


def test_every_rule_is_off_by_default():
    rs = parse_rule_set("x", {})
    assert rs.is_empty and rs == parse_rule_set("x", None)
    assert EMPTY_RULE_SET.is_empty


def test_shorthands_and_defaults():
    rs = _set("exclude_interacted: true\nexclude_unavailable: true\nblend: {retrieval_weight: 0.5}")
    assert rs.exclude_interacted.window_s is None
    assert "purchase" in rs.exclude_interacted.event_types
    assert rs.exclude_unavailable.values == {"false", "0", "no"}
    assert (rs.blend.model_weight, rs.blend.retrieval_weight) == (1.0, 0.5)
    assert _set("blend: {enabled: false}").blend is None
    assert _set("exclude_interacted: false").exclude_interacted is None


@pytest.mark.parametrize("window, seconds", [(90, 90.0), ("45s", 45.0), ("90m", 5400.0), ("12h", 43200.0),
                                             ("30d", 2592000.0), ("2w", 1209600.0), ("1.5h", 5400.0)])
def test_durations(window, seconds):
    rs = _set(f"exclude_interacted: {{window_s: {window}}}")
    assert rs.exclude_interacted.window_s == seconds


def test_predicates_parse():
    rs = _set("""
filters:
  - name: f1
    when: {attribute: year, equals: 2001}
  - when:
      - {attribute: genres, in: [A, B]}
      - {attribute: price, range: {max: 10}, negate: true}
""")
    f1, f2 = rs.filters
    assert f1.name == "f1" and f1.when[0].values == {"2001"}  # numbers read as strings
    assert f2.name == "filters[1]" and len(f2.when) == 2 and f2.when[1].negate


@pytest.mark.parametrize("body, field", [
    ("blend: {model_weight: 0, retrieval_weight: 0}", "rule_sets.default.blend"),
    ("blend: {model_weight: -1}", "rule_sets.default.blend.model_weight"),
    ("blend: {model_normalize: zscore}", "rule_sets.default.blend.model_normalize"),
    ("blend: {modelweight: 1}", "rule_sets.default.blend"),
    ("exclude_interacted: {event_types: [purchase, like]}", "rule_sets.default.exclude_interacted.event_types[1]"),
    ("exclude_interacted: {window_s: soon}", "rule_sets.default.exclude_interacted.window_s"),
    ("exclude_interacted: {window_s: -5}", "rule_sets.default.exclude_interacted.window_s"),
    ("filters: [{when: {attribute: a}}]", "rule_sets.default.filters[0].when"),
    ("filters: [{when: {attribute: a, equals: x, in: [y]}}]", "rule_sets.default.filters[0].when"),
    ("filters: [{name: x}]", "rule_sets.default.filters[0]"),
    ("filters: [{when: {attribute: a, range: {min: 5, max: 1}}}]", "rule_sets.default.filters[0].when.range"),
    ("filters: [{when: {attribute: a, range: {}}}]", "rule_sets.default.filters[0].when.range"),
    ("filters: {when: {attribute: a, equals: x}}", "rule_sets.default.filters"),
    ("boosts: [{when: {attribute: a, equals: x}}]", "rule_sets.default.boosts[0]"),
    ("boosts: [{when: {attribute: a, equals: x}, multiply: 2, add: 1}]", "rule_sets.default.boosts[0]"),
    ("boosts: [{when: {attribute: a, equals: x}, multiply: 0}]", "rule_sets.default.boosts[0].multiply"),
    ("boosts: [{when: {attribute: a, equals: x}, add: .nan}]", "rule_sets.default.boosts[0].add"),
    ("diversity: [{attribute: g, max_per_value: 0}]", "rule_sets.default.diversity[0].max_per_value"),
    ("diversity: [{attribute: g}]", "rule_sets.default.diversity[0]"),
    ("diversity: [{attribute: g, max_per_value: 1, window: 2.5}]", "rule_sets.default.diversity[0].window"),
    ("mmr: {lambda: 0.5}", "rule_sets.default.mmr"),
    ("mmr: {lambda: 1.5, attributes: [g]}", "rule_sets.default.mmr.lambda"),
    ("pins: [{item_id: a, position: 0}]", "rule_sets.default.pins[0].position"),
    ("pins: [{item_id: a, position: 1}, {item_id: a, position: 2}]", "rule_sets.default.pins[1]"),
    ("pins: [{item_id: a, position: 1}, {item_id: b, position: 1}]", "rule_sets.default.pins[1]"),
    ("overridable: [blend.model_wait]", "rule_sets.default.overridable[0]"),
    ("overridable: [overridable]", "rule_sets.default.overridable[0]"),
    ("overridable: [boosts.nope.add]", "rule_sets.default.overridable[0]"),
    ("overridable: [pins.x]", "rule_sets.default.overridable[0]"),
    ("boosts: [{name: x, when: {attribute: a, equals: 1}, add: 1}, {name: x, when: {attribute: a, equals: 1}, add: 1}]",
     "rule_sets.default"),
    ("filters: [{name: 'has space', when: {attribute: a, equals: 1}}]", "rule_sets.default.filters[0].name"),
    ("colour: red", "rule_sets.default"),
])
def test_invalid_rules_name_the_field(body, field):
    with pytest.raises(InvalidArgument) as err:
        _set(body)
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize("text", [
    "", "rule_sets: [a]", "rules: {}", "version: 2\nrule_sets: {}", "rule_sets: {default: {blend: {",
    "rule_sets:\n  default: {}\n  default: {}\n",  # duplicate keys are an error, not "last wins"
    "rule_sets:\n  d:\n    blend: {model_weight: 1, model_weight: 2}\n",
    "rule_sets: {'bad name': {}}",
])
def test_malformed_documents_are_rejected(text):
    with pytest.raises(InvalidArgument):
        parse_rules(text)


def test_anchor_merge_may_override_a_merged_key():
    sets = parse_rules("""
rule_sets:
  default: &d
    blend: {model_weight: 1}
    pins: [{item_id: a, position: 1}]
  other:
    <<: *d
    pins: []
""")
    assert sets["other"].pins == () and sets["other"].blend == sets["default"].blend
