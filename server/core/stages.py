"""The values a Rerank hands from stage to stage: resolve -> gather -> score -> rank.

Each stage of ``Pipeline`` returns one of these. Per-candidate data is columnar (lists by
position, up to a thousand entries): no object per candidate where the stages build none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.render import Renderer
from server.rules import RuleSet
from server.types import Event, Item, ScoredFrom, ScoredItem


@dataclass(frozen=True, slots=True)
class Plan:
    """What the request runs against, fixed before any I/O (``Pipeline._resolve``)."""

    model: object | None  # the served version (``server.triton.models.ServedModel``); None: none ready
    ruleset: RuleSet  # the named set, with the caller's overrides, with the version's blend
    renderer: Renderer | None  # the version's renderer (None with the model)
    budget_s: float  # seconds from the request's start to its deadline
    # Why the model cannot score this request, known before any I/O (no ready version: see
    # ``server.core.fallback``); empty: try the model.
    degraded: str = ""


@dataclass(frozen=True, slots=True)
class Features:
    """What the store knows for the request (``Pipeline._gather``)."""

    events: Sequence[Event]  # the user's recent events (the rules' interaction history)
    history: list[Item]  # the items the user side shows, most recent first
    # The item each scoreable candidate is read from: a catalog item, or one made of the
    # candidate's inline text. Candidates with neither are not scored.
    items: list[Item]
    # Candidate index of each entry of ``items``; None when every candidate is scoreable
    # (the usual case: ``items`` is then in candidate order).
    positions: list[int] | None


@dataclass(frozen=True, slots=True)
class Scores:
    """What the model says (``Pipeline._score``)."""

    # Per entry of ``Features.items``: raw score, plus the text offset; when degraded, the
    # fallback score (``server.core.fallback``).
    model: list[float]
    scored_from: list[ScoredFrom]  # per candidate: how the model read it (unscored: unspecified)
    degraded: str = ""  # why the model did not score: the fallback reason; empty: it did


@dataclass(frozen=True, slots=True)
class Ranking:
    """The reply's order (``Pipeline._rank``)."""

    items: list[ScoredItem]
    filtered: list[tuple[str, str]]  # (item id, rule) removed by a rule; empty on the fast path
