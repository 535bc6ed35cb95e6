"""The typed rule set: frozen objects a parsed rules file becomes (see ``parse``).

``None`` or an empty tuple means a rule is off; every rule is off by default, so
``EMPTY_RULE_SET`` orders by model score alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.blend import Blend
from server.rules.predicates import Matcher, Predicate, compile_when
from server.types import EVENT_TYPES

DEFAULT_RULE_SET = "default"


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
