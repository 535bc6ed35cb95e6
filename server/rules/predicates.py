"""Attribute predicates: the typed test (``Predicate``) and its compiled, hot-loop form.

A predicate tests one catalog attribute of a candidate. Multi-valued attributes are
pipe-separated (``"Action|Comedy"``) and match when any of their values does. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


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
