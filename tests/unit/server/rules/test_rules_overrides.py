"""Per-request overrides (``server.rules.overrides``)."""

import pytest

from server.errors import InvalidArgument
from server.rules.overrides import apply_overrides
from server.rules.parse import parse_rules


def _set(body: str, name: str = "default"):
    text = "rule_sets:\n  " + name + ":\n" + "\n".join("    " + line for line in body.strip().splitlines())
    return parse_rules(text)[name]


BASE = """
blend: {model_weight: 0.8, retrieval_weight: 0.2}
exclude_interacted: {event_types: [purchase]}
boosts:
  - {name: fresh, when: {attribute: year, range: {min: 2020}}, multiply: 1.2}
diversity:
  - {name: genre_cap, attribute: genres, max_per_value: 2, window: 10}
overridable: [blend.retrieval_weight, pins, boosts.fresh.multiply, diversity.genre_cap, exclude_interacted]
"""


def test_overrides_apply_and_leave_the_original_untouched():
    rs = _set(BASE)
    out = apply_overrides(rs, {
        "blend.retrieval_weight": 0.5,
        "pins": [{"item_id": "x", "position": 3}],
        "boosts": {"fresh": {"multiply": 2}},  # nested form of boosts.fresh.multiply
        "diversity.genre_cap": {"attribute": "genres", "max_per_value": 1},
        "exclude_interacted": {"window_s": "1d"},
    })
    assert out.blend.retrieval_weight == 0.5 and out.blend.model_weight == 0.8
    assert out.pins[0].position == 3
    assert out.boosts[0].multiply == 2.0
    assert out.diversity[0].max_per_value == 1 and out.diversity[0].window == 10  # merged
    assert out.exclude_interacted.window_s == 86400 and out.exclude_interacted.event_types == {"purchase"}
    assert rs == _set(BASE)
    assert apply_overrides(rs, {}) is rs and apply_overrides(rs, None) is rs


def test_string_overrides_from_a_proto_map():
    rs = _set(BASE)
    out = apply_overrides(rs, {
        "blend.retrieval_weight": "0.7",
        "pins": "[{item_id: '007', position: 1}]",
        "exclude_interacted": "false",
    })
    assert out.blend.retrieval_weight == 0.7
    assert out.pins[0].item_id == "007"
    assert out.exclude_interacted is None


@pytest.mark.parametrize("overrides, field", [
    ({"blend.model_weight": 1.0}, "blend.model_weight"),
    ({"blend": {"model_weight": 1.0}}, "blend.model_weight"),
    ({"filters": []}, "filters"),
    ({"overridable": ["blend"]}, "overridable"),
    ({"boosts.other.multiply": 2}, "boosts.other.multiply"),
    ({"blend.retrieval_weight": -1}, "blend.retrieval_weight"),
    ({"blend.retrieval_weight": "lots"}, "blend.retrieval_weight"),
    ({"pins": [{"item_id": "x", "position": -1}]}, "pins[0].position"),
    ({"pins": "[{item_id: x"}, "pins"),
    ({"boosts.fresh.multiply": 0}, "boosts[0].multiply"),
    ({"exclude_interacted": {"event_types": ["like"]}}, "exclude_interacted.event_types[0]"),
])
def test_bad_overrides_are_invalid_argument(overrides, field):
    with pytest.raises(InvalidArgument) as err:
        apply_overrides(_set(BASE), overrides)
    assert err.value.field == field, str(err.value)


def test_nothing_is_overridable_unless_listed():
    with pytest.raises(InvalidArgument, match="overridable: none"):
        apply_overrides(_set("blend: {model_weight: 1}"), {"blend.model_weight": 2})


def test_overriding_a_field_of_an_absent_section_enables_it():
    rs = _set("overridable: [blend.retrieval_weight]")
    assert apply_overrides(rs, {"blend.retrieval_weight": 1}).blend.retrieval_weight == 1.0


def test_repeated_overrides_are_cached_and_any_mapping_works():
    from collections.abc import Mapping

    class ProtoLikeMap(Mapping):  # what a protobuf map<string, string> looks like
        def __init__(self, d):
            self._d = d

        def __getitem__(self, k):
            return self._d[k]

        def __iter__(self):
            return iter(self._d)

        def __len__(self):
            return len(self._d)

    rs = _set(BASE)
    a = apply_overrides(rs, ProtoLikeMap({"blend.retrieval_weight": "0.3"}))
    b = apply_overrides(rs, {"blend.retrieval_weight": "0.3"})
    assert a is b and a.blend.retrieval_weight == 0.3
    with pytest.raises(InvalidArgument):  # errors are raised every time, never cached
        apply_overrides(rs, {"blend.retrieval_weight": "x"})
    with pytest.raises(InvalidArgument):
        apply_overrides(rs, {"blend.retrieval_weight": "x"})
