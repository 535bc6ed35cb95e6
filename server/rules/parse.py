"""The rules file: parse and validate YAML (or plain data) into frozen, typed rule sets.

Everything here is pure (text or plain data in, objects out). Every error is an
``InvalidArgument`` whose ``field`` is the dotted path of the offending option, so a bad
file names exactly what to fix. Unknown keys are errors: a typo must not silently turn a
rule off. See ``example_rules.yaml`` for the format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from contract.blend import NORMALIZATIONS as NORMALIZERS
from contract.blend import Blend
from server.errors import InvalidArgument
from server.rules.fields import (
    as_bool,
    as_duration,
    as_float,
    as_int,
    as_list,
    as_mapping,
    as_name,
    as_str,
    as_str_list,
    at,
    enabled_section,
    maybe_yaml,
    optional,
    plain,
    type_name,
)
from server.rules.predicates import Predicate
from server.rules.ruleset import (
    AttributeFilter,
    Boost,
    DiversityCap,
    ExcludeInteracted,
    ExcludeUnavailable,
    Mmr,
    Pin,
    RuleSet,
)
from server.types import EVENT_TYPES

# Fields of the mapping sections and of the elements of the list sections. Also the
# source of truth for which ``overridable`` paths exist.
_MAP_SECTIONS: dict[str, tuple[str, ...]] = {
    "exclude_interacted": ("enabled", "name", "event_types", "window_s"),
    "exclude_unavailable": ("enabled", "name", "attribute", "values", "missing_is_available"),
    "blend": (
        "enabled", "name", "model_weight", "retrieval_weight",
        "model_normalize", "retrieval_normalize", "missing_retrieval",
    ),
    "mmr": ("enabled", "name", "lambda", "attributes", "window"),
}
_LIST_SECTIONS: dict[str, tuple[str, ...]] = {
    "filters": ("name", "when"),
    "boosts": ("name", "when", "multiply", "add"),
    "diversity": ("name", "attribute", "max_per_value", "window", "strict"),
    "pins": ("item_id", "position", "ignore_filters"),
}
_RULE_SET_KEYS = (*_MAP_SECTIONS, *_LIST_SECTIONS, "overridable")
_PREDICATE_KEYS = ("attribute", "equals", "in", "range", "negate")


# ----------------------------------------------------------------------------- sections


def _predicate(value: object, path: str) -> Predicate:
    data = as_mapping(value, path, _PREDICATE_KEYS)
    if "attribute" not in data:
        raise InvalidArgument("missing 'attribute'", field=path)
    attribute = as_str(data["attribute"], at(path, "attribute"))
    tests = [k for k in ("equals", "in", "range") if data.get(k) is not None]
    if len(tests) != 1:
        raise InvalidArgument("needs exactly one of 'equals', 'in', 'range'", field=path)
    negate = optional(data, "negate", path, as_bool, False)
    kind = tests[0]
    if kind == "equals":
        value = as_str(data["equals"], at(path, "equals"))
        return Predicate(attribute, "equals", frozenset([value]), negate=negate)
    if kind == "in":
        return Predicate(attribute, "in", frozenset(as_str_list(data["in"], at(path, "in"))), negate=negate)
    rpath = at(path, "range")
    rng = as_mapping(data["range"], rpath, ("min", "max"))
    lo = optional(rng, "min", rpath, as_float, None)
    hi = optional(rng, "max", rpath, as_float, None)
    if lo is None and hi is None:
        raise InvalidArgument("needs 'min', 'max' or both", field=rpath)
    if lo is not None and hi is not None and lo > hi:
        raise InvalidArgument(f"min ({lo:g}) is above max ({hi:g})", field=rpath)
    return Predicate(attribute, "range", min=lo, max=hi, negate=negate)


def _when(value: object, path: str) -> tuple[Predicate, ...]:
    """One predicate, or a list of predicates that must all match."""
    value = maybe_yaml(value, path)
    if isinstance(value, list):
        if not value:
            raise InvalidArgument("must list at least one predicate", field=path)
        return tuple(_predicate(v, at(path, i)) for i, v in enumerate(value))
    return (_predicate(value, path),)


def _exclude_interacted(value: object, path: str) -> ExcludeInteracted | None:
    data = enabled_section(value, path, _MAP_SECTIONS["exclude_interacted"])
    if data is None:
        return None
    types = optional(data, "event_types", path, as_str_list, tuple(EVENT_TYPES))
    for i, t in enumerate(types):
        if t not in EVENT_TYPES:
            raise InvalidArgument(
                f"unknown event type {t!r} (expected one of: {', '.join(EVENT_TYPES)})",
                field=at(at(path, "event_types"), i),
            )
    return ExcludeInteracted(
        name=optional(data, "name", path, as_name, "exclude_interacted"),
        event_types=frozenset(types),
        window_s=as_duration(data.get("window_s"), at(path, "window_s")),
    )


def _exclude_unavailable(value: object, path: str) -> ExcludeUnavailable | None:
    data = enabled_section(value, path, _MAP_SECTIONS["exclude_unavailable"])
    if data is None:
        return None
    d = ExcludeUnavailable()
    values = optional(data, "values", path, as_str_list, None)
    return ExcludeUnavailable(
        name=optional(data, "name", path, as_name, d.name),
        attribute=optional(data, "attribute", path, as_str, d.attribute),
        values=frozenset(v.lower() for v in values) if values is not None else d.values,
        missing_is_available=optional(data, "missing_is_available", path, as_bool, d.missing_is_available),
    )


def _normalizer(value: object, path: str) -> str:
    text = as_str(value, path).lower()
    if text not in NORMALIZERS:
        raise InvalidArgument(f"expected one of: {', '.join(NORMALIZERS)}, got {text!r}", field=path)
    return text


def _blend(value: object, path: str) -> Blend | None:
    data = enabled_section(value, path, _MAP_SECTIONS["blend"])
    if data is None:
        return None
    d = Blend()
    b = Blend(
        name=optional(data, "name", path, as_name, d.name),
        model_weight=optional(data, "model_weight", path, as_float, d.model_weight, lo=0.0),
        retrieval_weight=optional(data, "retrieval_weight", path, as_float, d.retrieval_weight, lo=0.0),
        model_normalize=optional(data, "model_normalize", path, _normalizer, d.model_normalize),
        retrieval_normalize=optional(data, "retrieval_normalize", path, _normalizer, d.retrieval_normalize),
        missing_retrieval=optional(data, "missing_retrieval", path, as_float, d.missing_retrieval),
    )
    if b.model_weight == 0 and b.retrieval_weight == 0:
        raise InvalidArgument("model_weight and retrieval_weight cannot both be 0", field=path)
    return b


def _mmr(value: object, path: str) -> Mmr | None:
    data = enabled_section(value, path, _MAP_SECTIONS["mmr"])
    if data is None:
        return None
    if data.get("attributes") is None:
        raise InvalidArgument("missing 'attributes' (the attributes that make two items similar)", field=path)
    return Mmr(
        name=optional(data, "name", path, as_name, "mmr"),
        lambda_=optional(data, "lambda", path, as_float, 0.7, lo=0.0, hi=1.0),
        attributes=as_str_list(data["attributes"], at(path, "attributes")),
        window=optional(data, "window", path, as_int, None),
    )


def _filters(value: object, path: str) -> tuple[AttributeFilter, ...]:
    out = []
    for i, raw in enumerate(as_list(value, path)):
        p = at(path, i)
        data = as_mapping(raw, p, _LIST_SECTIONS["filters"])
        if data.get("when") is None:
            raise InvalidArgument("missing 'when'", field=p)
        out.append(AttributeFilter(
            name=optional(data, "name", p, as_name, f"filters[{i}]"), when=_when(data["when"], at(p, "when"))
        ))
    return tuple(out)


def _boosts(value: object, path: str) -> tuple[Boost, ...]:
    out = []
    for i, raw in enumerate(as_list(value, path)):
        p = at(path, i)
        data = as_mapping(raw, p, _LIST_SECTIONS["boosts"])
        if data.get("when") is None:
            raise InvalidArgument("missing 'when'", field=p)
        if (data.get("multiply") is None) == (data.get("add") is None):
            raise InvalidArgument("needs exactly one of 'multiply', 'add'", field=p)
        out.append(Boost(
            name=optional(data, "name", p, as_name, f"boosts[{i}]"),
            when=_when(data["when"], at(p, "when")),
            multiply=optional(data, "multiply", p, as_float, None, lo=0.0, lo_open=True),
            add=optional(data, "add", p, as_float, None),
        ))
    return tuple(out)


def _diversity(value: object, path: str) -> tuple[DiversityCap, ...]:
    out = []
    for i, raw in enumerate(as_list(value, path)):
        p = at(path, i)
        data = as_mapping(raw, p, _LIST_SECTIONS["diversity"])
        for key in ("attribute", "max_per_value"):
            if data.get(key) is None:
                raise InvalidArgument(f"missing {key!r}", field=p)
        out.append(DiversityCap(
            name=optional(data, "name", p, as_name, f"diversity[{i}]"),
            attribute=as_str(data["attribute"], at(p, "attribute")),
            max_per_value=as_int(data["max_per_value"], at(p, "max_per_value")),
            window=optional(data, "window", p, as_int, None),
            strict=optional(data, "strict", p, as_bool, False),
        ))
    return tuple(out)


def _pins(value: object, path: str) -> tuple[Pin, ...]:
    out: list[Pin] = []
    seen_items: set[str] = set()
    seen_positions: set[int] = set()
    for i, raw in enumerate(as_list(value, path)):
        p = at(path, i)
        data = as_mapping(raw, p, _LIST_SECTIONS["pins"])
        for key in ("item_id", "position"):
            if data.get(key) is None:
                raise InvalidArgument(f"missing {key!r}", field=p)
        pin = Pin(
            item_id=as_str(data["item_id"], at(p, "item_id")),
            position=as_int(data["position"], at(p, "position"), hi=10_000),
            ignore_filters=optional(data, "ignore_filters", p, as_bool, False),
        )
        if pin.item_id in seen_items:
            raise InvalidArgument(f"item {pin.item_id!r} is pinned twice", field=p)
        if pin.position in seen_positions:
            raise InvalidArgument(f"position {pin.position} is pinned twice", field=p)
        seen_items.add(pin.item_id)
        seen_positions.add(pin.position)
        out.append(pin)
    return tuple(sorted(out, key=lambda x: x.position))


def _element_names(raw: Mapping[str, Any], section: str) -> set[str]:
    value = raw.get(section)
    if not isinstance(value, list):
        return set()
    return {str(e["name"]) for e in value if isinstance(e, Mapping) and e.get("name") is not None}


def _overridable(value: object, path: str, raw: Mapping[str, Any], check_names: bool) -> frozenset[str]:
    """Validate the dotted paths a caller may override.

    ``section``, ``section.field`` for mapping sections; ``section`` or
    ``section.<element name>[.field]`` for the named elements of list sections
    (``pins`` only as a whole).
    """
    out = set()
    for i, entry in enumerate(as_str_list(value, path, allow_empty=True)):
        p = at(path, i)
        parts = entry.split(".")
        head = parts[0]
        ok = False
        if head in _MAP_SECTIONS:
            fields = _MAP_SECTIONS[head]
            ok = len(parts) == 1 or (len(parts) == 2 and parts[1] in fields and parts[1] != "name")
        elif head in _LIST_SECTIONS:
            if len(parts) == 1:
                ok = True
            elif head != "pins" and len(parts) <= 3:
                if check_names and parts[1] not in _element_names(raw, head):
                    raise InvalidArgument(
                        f"{entry!r}: no {head} entry named {parts[1]!r} in this rule set", field=p
                    )
                ok = len(parts) == 2 or (parts[2] in _LIST_SECTIONS[head] and parts[2] != "name")
        if not ok:
            raise InvalidArgument(
                f"{entry!r} is not an overridable path (use a section such as 'blend', "
                "'blend.model_weight', 'pins', or 'boosts.<name>.multiply')",
                field=p,
            )
        out.add(entry)
    return frozenset(out)



def parse_rule_set(name: str, value: object, path: str = "", *, check_names: bool = True) -> RuleSet:
    """Validate one rule set (plain data) into a :class:`RuleSet`."""
    data = as_mapping(value, path, _RULE_SET_KEYS)
    ei, eu = "exclude_interacted", "exclude_unavailable"
    rs = RuleSet(
        name=name,
        exclude_interacted=_exclude_interacted(data.get(ei), at(path, ei)),
        exclude_unavailable=_exclude_unavailable(data.get(eu), at(path, eu)),
        filters=_filters(data.get("filters"), at(path, "filters")),
        blend=_blend(data.get("blend"), at(path, "blend")),
        boosts=_boosts(data.get("boosts"), at(path, "boosts")),
        diversity=_diversity(data.get("diversity"), at(path, "diversity")),
        mmr=_mmr(data.get("mmr"), at(path, "mmr")),
        pins=_pins(data.get("pins"), at(path, "pins")),
        overridable=_overridable(data.get("overridable"), at(path, "overridable"), data, check_names),
        raw=plain(data),
    )
    # Rule names label explanations and filtered items: they must be unambiguous.
    seen: set[str] = set()
    named = [r for r in (rs.exclude_interacted, rs.exclude_unavailable, rs.blend, rs.mmr) if r]
    for rule in (*named, *rs.filters, *rs.boosts, *rs.diversity):
        if rule.name in seen:
            raise InvalidArgument(f"rule name {rule.name!r} is used twice", field=path or name)
        seen.add(rule.name)
    return rs


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *anchor' then overriding a merged key is the point of anchors
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_rules_data(data: object) -> dict[str, RuleSet]:
    """Validate a whole rules document (plain data): ``{version: 1, rule_sets: {name: {...}}}``."""
    if data is None:
        raise InvalidArgument("the rules file is empty (expected a 'rule_sets' mapping)", field="rule_sets")
    top = as_mapping(data, "", ("version", "rule_sets"))
    if top.get("version", 1) != 1:
        raise InvalidArgument(f"unsupported version {top['version']!r} (expected 1)", field="version")
    if "rule_sets" not in top:
        raise InvalidArgument("missing 'rule_sets'", field="rule_sets")
    sets = top["rule_sets"] or {}
    if not isinstance(sets, Mapping):
        raise InvalidArgument(f"expected a mapping of rule set names, got {type_name(sets)}", field="rule_sets")
    out: dict[str, RuleSet] = {}
    for name, body in sets.items():
        path = f"rule_sets.{name}"
        out[as_name(name, path)] = parse_rule_set(str(name), body, path)
    return out


def parse_rules(text: str, *, source: str = "rules file") -> dict[str, RuleSet]:
    """Parse and validate the YAML text of a rules file; raises ``InvalidArgument``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split())
        raise InvalidArgument(f"not valid YAML: {msg}", field=source) from None
    return parse_rules_data(data)
