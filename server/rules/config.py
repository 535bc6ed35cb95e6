"""The rules file: parse and validate YAML into frozen, typed rule sets; per-request overrides.

Everything here is pure (text or plain data in, objects out). Every error is an
``InvalidArgument`` whose ``field`` is the dotted path of the offending option, so a bad
file or override names exactly what to fix. Unknown keys are errors: a typo must not
silently turn a rule off. See ``example_rules.yaml`` for the format.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from contract.blend import NORMALIZATIONS as NORMALIZERS
from contract.blend import Blend
from server.errors import InvalidArgument
from server.types import EVENT_TYPES

DEFAULT_RULE_SET = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# ----------------------------------------------------------------------------- typed rules


def split_values(raw: str) -> list[str]:
    """``"Action| Comedy|"`` -> ``["Action", "Comedy"]`` (multi-valued attributes are pipe-separated)."""
    if "|" not in raw:
        v = raw.strip()
        return [v] if v else []
    return [v for v in (p.strip() for p in raw.split("|")) if v]


@dataclass(frozen=True, slots=True)
class Predicate:
    """One attribute test. Multi-valued attributes match when any of their values does;
    ``range`` bounds are inclusive and only numeric values can match. A missing attribute
    never matches, so with ``negate`` it always does."""

    attribute: str
    kind: str  # "equals" | "in" | "range"
    values: frozenset[str] = frozenset()  # equals (one value) / in
    min: float | None = None
    max: float | None = None
    negate: bool = False
    _one: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "equals":
            object.__setattr__(self, "_one", next(iter(self.values)))

    def matches(self, attributes: Mapping[str, str]) -> bool:
        raw = attributes.get(self.attribute)
        if raw is None:
            return self.negate
        kind = self.kind
        if kind == "equals":
            one = self._one
            # Hot path: a substring test rejects most items without splitting anything.
            hit = raw == one or (one in raw and one in split_values(raw))
        elif kind == "in":
            hit = raw in self.values or any(v in self.values for v in split_values(raw))
        else:
            hit = False
            for v in split_values(raw):
                try:
                    x = float(v)
                except ValueError:
                    continue
                if (self.min is None or x >= self.min) and (self.max is None or x <= self.max):
                    hit = True
                    break
        return hit != self.negate


def matches_all(predicates: tuple[Predicate, ...], attributes: Mapping[str, str]) -> bool:
    for p in predicates:
        if not p.matches(attributes):
            return False
    return True


Matcher = Callable[[Mapping[str, str]], bool]


def _compile_one(p: Predicate) -> Matcher:
    """A closure equivalent to ``p.matches``, specialized for the common cases: the rules
    stage calls it once per candidate per rule, so it is the hot loop."""
    attr, neg = p.attribute, p.negate
    if p.kind == "equals":
        one = p._one

        def equals(attrs: Mapping[str, str]) -> bool:
            raw = attrs.get(attr)
            if raw is None:
                return neg
            return (raw == one or (one in raw and one in split_values(raw))) != neg

        return equals
    if p.kind == "in":
        values = p.values

        def is_in(attrs: Mapping[str, str]) -> bool:
            raw = attrs.get(attr)
            if raw is None:
                return neg
            if raw in values:
                return not neg
            if "|" in raw:
                return any(v in values for v in split_values(raw)) != neg
            return (raw.strip() in values) != neg

        return is_in
    lo, hi = p.min, p.max

    def in_range(attrs: Mapping[str, str]) -> bool:
        raw = attrs.get(attr)
        if raw is None:
            return neg
        if "|" in raw:
            return p.matches(attrs)
        try:
            x = float(raw)
        except ValueError:
            return neg
        return ((lo is None or x >= lo) and (hi is None or x <= hi)) != neg

    return in_range


def compile_when(predicates: tuple[Predicate, ...]) -> Matcher:
    """One callable testing that every predicate matches."""
    fns = [_compile_one(p) for p in predicates]
    if len(fns) == 1:
        return fns[0]
    return lambda attrs: all(f(attrs) for f in fns)


@dataclass(frozen=True, slots=True)
class ExcludeInteracted:
    """Drop items the user had an event of ``event_types`` with, within ``window_s`` (None: ever)."""

    name: str = "exclude_interacted"
    event_types: frozenset[str] = frozenset(EVENT_TYPES)
    window_s: float | None = None


@dataclass(frozen=True, slots=True)
class ExcludeUnavailable:
    """Drop items whose ``attribute`` (lower-cased) is one of ``values``."""

    name: str = "exclude_unavailable"
    attribute: str = "available"
    values: frozenset[str] = frozenset({"false", "0", "no"})
    missing_is_available: bool = True


@dataclass(frozen=True, slots=True)
class AttributeFilter:
    """Drop items matching every predicate of ``when``."""

    name: str
    when: tuple[Predicate, ...]
    match: Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "match", compile_when(self.when))


@dataclass(frozen=True, slots=True)
class Boost:
    """Raise or lower the score of items matching ``when``: exactly one of ``multiply`` / ``add``."""

    name: str
    when: tuple[Predicate, ...]
    multiply: float | None = None
    add: float | None = None
    match: Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "match", compile_when(self.when))


@dataclass(frozen=True, slots=True)
class DiversityCap:
    """At most ``max_per_value`` items per value of ``attribute`` in the top ``window``
    (None: the whole returned list). ``strict``: never exceed, even if fewer items come back."""

    name: str
    attribute: str
    max_per_value: int
    window: int | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Mmr:
    """Maximal marginal relevance over the top ``window``: pick, in turn, the item maximizing
    ``lambda * relevance - (1 - lambda) * max similarity to the items already picked``."""

    name: str = "mmr"
    lambda_: float = 0.7
    attributes: tuple[str, ...] = ()
    window: int | None = None


@dataclass(frozen=True, slots=True)
class Pin:
    """Put ``item_id`` at 1-based ``position``; a filtered item only if ``ignore_filters``."""

    item_id: str
    position: int
    ignore_filters: bool = False


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One named rule set. ``None`` / empty means the rule is off (every rule is off by default)."""

    name: str = DEFAULT_RULE_SET
    exclude_interacted: ExcludeInteracted | None = None
    exclude_unavailable: ExcludeUnavailable | None = None
    filters: tuple[AttributeFilter, ...] = ()
    blend: Blend | None = None
    boosts: tuple[Boost, ...] = ()
    diversity: tuple[DiversityCap, ...] = ()
    mmr: Mmr | None = None
    pins: tuple[Pin, ...] = ()
    overridable: frozenset[str] = frozenset()
    # The validated plain-data form, kept so overrides are re-validated by this same parser.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def is_empty(self) -> bool:
        return not (
            self.exclude_interacted or self.exclude_unavailable or self.filters or self.blend
            or self.boosts or self.diversity or self.mmr or self.pins
        )


EMPTY_RULE_SET = RuleSet()

# ----------------------------------------------------------------------------- schema

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


# ----------------------------------------------------------------------------- helpers


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _maybe_yaml(value: object, path: str) -> object:
    """Overrides may arrive as strings (a proto ``map<string,string>``): containers are
    then read as YAML flow text, e.g. ``"[{item_id: a1, position: 1}]"``."""
    # Only flow collections: a plain string stays a string ("no" must not become False).
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"not valid YAML: {exc}".replace("\n", " "), field=path) from None
    return value


def _mapping(value: object, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = _maybe_yaml(value, path)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"expected a mapping, got {_type(value)}", field=path)
    for k in value:
        if k not in allowed:
            raise InvalidArgument(
                f"unknown option {k!r} (expected one of: {', '.join(allowed)})", field=path
            )
    return dict(value)


def _list(value: object, path: str) -> list:
    value = _maybe_yaml(value, path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"expected a list, got {_type(value)}", field=path)
    return value


def _float(
    value: object, path: str, *, lo: float | None = None, hi: float | None = None,
    lo_open: bool = False,
) -> float:
    if isinstance(value, bool) or value is None:
        raise InvalidArgument(f"expected a number, got {_type(value)}", field=path)
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected a number, got {value!r}", field=path) from None
    if not math.isfinite(x):
        raise InvalidArgument(f"expected a finite number, got {value!r}", field=path)
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise InvalidArgument(f"must be {'>' if lo_open else '>='} {lo:g}, got {x:g}", field=path)
    if hi is not None and x > hi:
        raise InvalidArgument(f"must be <= {hi:g}, got {x:g}", field=path)
    return x


def _int(value: object, path: str, *, lo: int = 1, hi: int = 1_000_000) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"expected an integer, got {value!r}", field=path)
    if not lo <= value <= hi:
        raise InvalidArgument(f"must be between {lo} and {hi}, got {value}", field=path)
    return value


def _bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidArgument(f"expected true or false, got {value!r}", field=path)


def _str(value: object, path: str) -> str:
    # Numbers are accepted as strings (item ids and years are often written unquoted).
    if isinstance(value, bool):
        raise InvalidArgument(
            f"expected a string, got the boolean {value} (quote it: YAML reads unquoted "
            "yes/no/on/off/true/false as booleans)", field=path,
        )
    if not isinstance(value, (str, int, float)):
        raise InvalidArgument(f"expected a string, got {_type(value)}", field=path)
    text = str(value).strip()
    if not text:
        raise InvalidArgument("must not be empty", field=path)
    return text


def _str_list(value: object, path: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    value = _maybe_yaml(value, path)
    items = value if isinstance(value, list) else [value]
    out = tuple(_str(v, _at(path, i)) for i, v in enumerate(items)) if value is not None else ()
    if not out and not allow_empty:
        raise InvalidArgument("must list at least one value", field=path)
    return out


def _name(value: object, path: str) -> str:
    text = _str(value, path)
    if not _NAME_RE.match(text):
        raise InvalidArgument(
            f"invalid name {text!r} (letters, digits, '_' and '-' only)", field=path
        )
    return text


def _duration(value: object, path: str) -> float | None:
    """Seconds, or a string like ``"30d"``, ``"12h"``, ``"90m"``; null means no limit."""
    if value is None:
        return None
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise InvalidArgument(
                f"expected seconds or a duration like '30d', '12h', '90m', got {value!r}", field=path
            )
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return _float(value, path, lo=0.0, lo_open=True)


def _get(data: dict, key: str, path: str, conv: Callable[..., Any], default: Any, **kw: Any) -> Any:
    value = data.get(key)
    return default if value is None else conv(value, _at(path, key), **kw)


def _enabled(value: object, path: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """A mapping section; ``true`` is shorthand for all defaults, ``false`` / ``enabled: false`` for off."""
    value = _maybe_yaml(value, path)
    if value is None:  # absent: off
        return None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if isinstance(value, bool):
        return {} if value else None
    data = _mapping(value, path, fields)
    if "enabled" in data and data["enabled"] is not None and not _bool(data["enabled"], _at(path, "enabled")):
        return None
    return data


# ----------------------------------------------------------------------------- sections


def _predicate(value: object, path: str) -> Predicate:
    data = _mapping(value, path, _PREDICATE_KEYS)
    if "attribute" not in data:
        raise InvalidArgument("missing 'attribute'", field=path)
    attribute = _str(data["attribute"], _at(path, "attribute"))
    tests = [k for k in ("equals", "in", "range") if data.get(k) is not None]
    if len(tests) != 1:
        raise InvalidArgument("needs exactly one of 'equals', 'in', 'range'", field=path)
    negate = _get(data, "negate", path, _bool, False)
    kind = tests[0]
    if kind == "equals":
        value = _str(data["equals"], _at(path, "equals"))
        return Predicate(attribute, "equals", frozenset([value]), negate=negate)
    if kind == "in":
        return Predicate(attribute, "in", frozenset(_str_list(data["in"], _at(path, "in"))), negate=negate)
    rpath = _at(path, "range")
    rng = _mapping(data["range"], rpath, ("min", "max"))
    lo = _get(rng, "min", rpath, _float, None)
    hi = _get(rng, "max", rpath, _float, None)
    if lo is None and hi is None:
        raise InvalidArgument("needs 'min', 'max' or both", field=rpath)
    if lo is not None and hi is not None and lo > hi:
        raise InvalidArgument(f"min ({lo:g}) is above max ({hi:g})", field=rpath)
    return Predicate(attribute, "range", min=lo, max=hi, negate=negate)


def _when(value: object, path: str) -> tuple[Predicate, ...]:
    """One predicate, or a list of predicates that must all match."""
    value = _maybe_yaml(value, path)
    if isinstance(value, list):
        if not value:
            raise InvalidArgument("must list at least one predicate", field=path)
        return tuple(_predicate(v, _at(path, i)) for i, v in enumerate(value))
    return (_predicate(value, path),)


def _exclude_interacted(value: object, path: str) -> ExcludeInteracted | None:
    data = _enabled(value, path, _MAP_SECTIONS["exclude_interacted"])
    if data is None:
        return None
    types = _get(data, "event_types", path, _str_list, tuple(EVENT_TYPES))
    for i, t in enumerate(types):
        if t not in EVENT_TYPES:
            raise InvalidArgument(
                f"unknown event type {t!r} (expected one of: {', '.join(EVENT_TYPES)})",
                field=_at(_at(path, "event_types"), i),
            )
    return ExcludeInteracted(
        name=_get(data, "name", path, _name, "exclude_interacted"),
        event_types=frozenset(types),
        window_s=_duration(data.get("window_s"), _at(path, "window_s")),
    )


def _exclude_unavailable(value: object, path: str) -> ExcludeUnavailable | None:
    data = _enabled(value, path, _MAP_SECTIONS["exclude_unavailable"])
    if data is None:
        return None
    d = ExcludeUnavailable()
    values = _get(data, "values", path, _str_list, None)
    return ExcludeUnavailable(
        name=_get(data, "name", path, _name, d.name),
        attribute=_get(data, "attribute", path, _str, d.attribute),
        values=frozenset(v.lower() for v in values) if values is not None else d.values,
        missing_is_available=_get(data, "missing_is_available", path, _bool, d.missing_is_available),
    )


def _normalizer(value: object, path: str) -> str:
    text = _str(value, path).lower()
    if text not in NORMALIZERS:
        raise InvalidArgument(f"expected one of: {', '.join(NORMALIZERS)}, got {text!r}", field=path)
    return text


def _blend(value: object, path: str) -> Blend | None:
    data = _enabled(value, path, _MAP_SECTIONS["blend"])
    if data is None:
        return None
    d = Blend()
    b = Blend(
        name=_get(data, "name", path, _name, d.name),
        model_weight=_get(data, "model_weight", path, _float, d.model_weight, lo=0.0),
        retrieval_weight=_get(data, "retrieval_weight", path, _float, d.retrieval_weight, lo=0.0),
        model_normalize=_get(data, "model_normalize", path, _normalizer, d.model_normalize),
        retrieval_normalize=_get(data, "retrieval_normalize", path, _normalizer, d.retrieval_normalize),
        missing_retrieval=_get(data, "missing_retrieval", path, _float, d.missing_retrieval),
    )
    if b.model_weight == 0 and b.retrieval_weight == 0:
        raise InvalidArgument("model_weight and retrieval_weight cannot both be 0", field=path)
    return b


def _mmr(value: object, path: str) -> Mmr | None:
    data = _enabled(value, path, _MAP_SECTIONS["mmr"])
    if data is None:
        return None
    if data.get("attributes") is None:
        raise InvalidArgument("missing 'attributes' (the attributes that make two items similar)", field=path)
    return Mmr(
        name=_get(data, "name", path, _name, "mmr"),
        lambda_=_get(data, "lambda", path, _float, 0.7, lo=0.0, hi=1.0),
        attributes=_str_list(data["attributes"], _at(path, "attributes")),
        window=_get(data, "window", path, _int, None),
    )


def _filters(value: object, path: str) -> tuple[AttributeFilter, ...]:
    out = []
    for i, raw in enumerate(_list(value, path)):
        p = _at(path, i)
        data = _mapping(raw, p, _LIST_SECTIONS["filters"])
        if data.get("when") is None:
            raise InvalidArgument("missing 'when'", field=p)
        out.append(AttributeFilter(
            name=_get(data, "name", p, _name, f"filters[{i}]"), when=_when(data["when"], _at(p, "when"))
        ))
    return tuple(out)


def _boosts(value: object, path: str) -> tuple[Boost, ...]:
    out = []
    for i, raw in enumerate(_list(value, path)):
        p = _at(path, i)
        data = _mapping(raw, p, _LIST_SECTIONS["boosts"])
        if data.get("when") is None:
            raise InvalidArgument("missing 'when'", field=p)
        if (data.get("multiply") is None) == (data.get("add") is None):
            raise InvalidArgument("needs exactly one of 'multiply', 'add'", field=p)
        out.append(Boost(
            name=_get(data, "name", p, _name, f"boosts[{i}]"),
            when=_when(data["when"], _at(p, "when")),
            multiply=_get(data, "multiply", p, _float, None, lo=0.0, lo_open=True),
            add=_get(data, "add", p, _float, None),
        ))
    return tuple(out)


def _diversity(value: object, path: str) -> tuple[DiversityCap, ...]:
    out = []
    for i, raw in enumerate(_list(value, path)):
        p = _at(path, i)
        data = _mapping(raw, p, _LIST_SECTIONS["diversity"])
        for key in ("attribute", "max_per_value"):
            if data.get(key) is None:
                raise InvalidArgument(f"missing {key!r}", field=p)
        out.append(DiversityCap(
            name=_get(data, "name", p, _name, f"diversity[{i}]"),
            attribute=_str(data["attribute"], _at(p, "attribute")),
            max_per_value=_int(data["max_per_value"], _at(p, "max_per_value")),
            window=_get(data, "window", p, _int, None),
            strict=_get(data, "strict", p, _bool, False),
        ))
    return tuple(out)


def _pins(value: object, path: str) -> tuple[Pin, ...]:
    out: list[Pin] = []
    seen_items: set[str] = set()
    seen_positions: set[int] = set()
    for i, raw in enumerate(_list(value, path)):
        p = _at(path, i)
        data = _mapping(raw, p, _LIST_SECTIONS["pins"])
        for key in ("item_id", "position"):
            if data.get(key) is None:
                raise InvalidArgument(f"missing {key!r}", field=p)
        pin = Pin(
            item_id=_str(data["item_id"], _at(p, "item_id")),
            position=_int(data["position"], _at(p, "position"), hi=10_000),
            ignore_filters=_get(data, "ignore_filters", p, _bool, False),
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
    for i, entry in enumerate(_str_list(value, path, allow_empty=True)):
        p = _at(path, i)
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


def _plain(value: object) -> Any:
    """A deep copy as plain dicts/lists (the ``raw`` form overrides are applied to)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_rule_set(name: str, value: object, path: str = "", *, check_names: bool = True) -> RuleSet:
    """Validate one rule set (plain data) into a :class:`RuleSet`."""
    data = _mapping(value, path, _RULE_SET_KEYS)
    ei, eu = "exclude_interacted", "exclude_unavailable"
    rs = RuleSet(
        name=name,
        exclude_interacted=_exclude_interacted(data.get(ei), _at(path, ei)),
        exclude_unavailable=_exclude_unavailable(data.get(eu), _at(path, eu)),
        filters=_filters(data.get("filters"), _at(path, "filters")),
        blend=_blend(data.get("blend"), _at(path, "blend")),
        boosts=_boosts(data.get("boosts"), _at(path, "boosts")),
        diversity=_diversity(data.get("diversity"), _at(path, "diversity")),
        mmr=_mmr(data.get("mmr"), _at(path, "mmr")),
        pins=_pins(data.get("pins"), _at(path, "pins")),
        overridable=_overridable(data.get("overridable"), _at(path, "overridable"), data, check_names),
        raw=_plain(data),
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
    top = _mapping(data, "", ("version", "rule_sets"))
    if top.get("version", 1) != 1:
        raise InvalidArgument(f"unsupported version {top['version']!r} (expected 1)", field="version")
    if "rule_sets" not in top:
        raise InvalidArgument("missing 'rule_sets'", field="rule_sets")
    sets = top["rule_sets"] or {}
    if not isinstance(sets, Mapping):
        raise InvalidArgument(f"expected a mapping of rule set names, got {_type(sets)}", field="rule_sets")
    out: dict[str, RuleSet] = {}
    for name, body in sets.items():
        path = f"rule_sets.{name}"
        out[_name(name, path)] = parse_rule_set(str(name), body, path)
    return out


def parse_rules(text: str, *, source: str = "rules file") -> dict[str, RuleSet]:
    """Parse and validate the YAML text of a rules file; raises ``InvalidArgument``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split())
        raise InvalidArgument(f"not valid YAML: {msg}", field=source) from None
    return parse_rules_data(data)


# ----------------------------------------------------------------------------- overrides


def _is_allowed(path: str, overridable: frozenset[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in overridable for i in range(1, len(parts) + 1))


def _flatten(
    overrides: Mapping[str, Any], allowed: frozenset[str], prefix: str = ""
) -> list[tuple[str, Any]]:
    """``{"blend": {"model_weight": 1}}`` and ``{"blend.model_weight": 1}`` are the same
    override; a mapping is descended into only where its own path is not overridable."""
    out: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if _is_allowed(path, allowed):
            out.append((path, value))
        elif isinstance(value, Mapping) and value:
            out.extend(_flatten(value, allowed, path))
        else:
            listed = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(f"not overridable in this rule set (overridable: {listed})", field=path)
    return out


def _set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):  # a list section: address its element by name
            match = [e for e in node if isinstance(e, dict) and str(e.get("name")) == part]
            if not match:
                raise InvalidArgument(f"no entry named {part!r}", field=where)
            node = match[0]
            continue
        child = _maybe_yaml(node.get(part), where)
        if child is None or child is True:
            child = {}
        elif child is False:
            child = {"enabled": False}
        if not isinstance(child, (dict, list)):
            raise InvalidArgument(f"cannot override inside a {_type(child)}", field=where)
        node[part] = child
        node = child
    if isinstance(node, list):
        match = [i for i, e in enumerate(node) if isinstance(e, dict) and str(e.get("name")) == parts[-1]]
        if not match:
            raise InvalidArgument(f"no entry named {parts[-1]!r}", field=path)
        node[match[0]] = _merge(node[match[0]], value, path)
    else:
        node[parts[-1]] = _merge(node.get(parts[-1]), value, path)


def _merge(old: Any, new: Any, path: str) -> Any:
    """Mappings merge key by key into the file's values; anything else replaces."""
    new = _maybe_yaml(new, path)
    old = _maybe_yaml(old, path)
    if isinstance(new, dict) and isinstance(old, dict):
        merged = dict(old)
        for k, v in new.items():
            merged[k] = _merge(old.get(k), v, f"{path}.{k}")
        return merged
    return new


def apply_overrides(ruleset: RuleSet, overrides: Mapping[str, Any] | None) -> RuleSet:
    """A copy of ``ruleset`` with the caller's overrides, re-validated as a whole.

    Keys are dotted paths (``"blend.model_weight"``) or nested mappings; a path is accepted
    when it or one of its parents is listed in the rule set's ``overridable``. A mapping value
    merges into the file's mapping (``{"blend": {"model_weight": 1}}`` keeps the other blend
    fields); lists and scalars replace. String values that look like YAML flow collections
    (``"[...]"``, ``"{...}"``) are parsed, numbers and booleans are read from strings, so a
    proto ``map<string, string>`` can be passed as is. Raises
    ``InvalidArgument`` (``field`` = the path) for a path that is not overridable or a bad value.
    """
    if not overrides:
        return ruleset
    if not isinstance(overrides, Mapping):
        raise InvalidArgument("overrides must be a mapping of option paths to values", field="overrides")
    overrides = dict(overrides)  # e.g. a protobuf map
    try:
        key = json.dumps(overrides, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return _apply_overrides(ruleset, overrides)
    # Callers tend to repeat the same few overrides (a campaign's pins): re-validating is
    # ~100x the cost of a cache hit. RuleSets are immutable, so sharing the result is safe.
    return _apply_overrides_cached(ruleset, key)


@functools.lru_cache(maxsize=256)
def _apply_overrides_cached(ruleset: RuleSet, overrides_json: str) -> RuleSet:
    return _apply_overrides(ruleset, json.loads(overrides_json))


def _apply_overrides(ruleset: RuleSet, overrides: Mapping[str, Any]) -> RuleSet:
    raw = _plain(ruleset.raw)
    flat = _flatten(overrides, ruleset.overridable)
    for path, value in flat:
        _set_path(raw, path, _plain(value))
    try:
        # Element names may legitimately change when a whole list is overridden.
        return parse_rule_set(ruleset.name, raw, check_names=False)
    except InvalidArgument as exc:
        paths = ", ".join(p for p, _ in flat)
        raise InvalidArgument(f"invalid override ({paths}): {exc.message}", field=exc.field) from None
