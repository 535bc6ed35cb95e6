"""Typed request/response objects of the core. Protobuf stops at ``server.api``."""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.items import Item, ScoredFrom  # noqa: F401  (the request types build on them)


# Not frozen (read-only by convention): frozen dataclasses cost 3x as much to build, and a
# request brings up to a thousand of these.
@dataclass(slots=True)
class Candidate:
    item_id: str
    retrieval_score: float | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class RequestContext:
    session_item_ids: tuple[str, ...] = ()
    text: str = ""


@dataclass(frozen=True, slots=True)
class RerankRequest:
    user_id: str
    candidates: tuple[Candidate, ...]
    top_n: int = 0
    context: RequestContext = field(default_factory=RequestContext)
    rule_set: str = ""
    rule_overrides: dict[str, str] = field(default_factory=dict)
    explain: bool = False
    request_id: str = ""
    # Seconds left before the caller's deadline; None when the caller set none.
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """``final_score == model_score + sum(delta for _, delta in adjustments)`` (float64)."""

    model_score: float
    retrieval_score: float | None
    adjustments: tuple[tuple[str, float], ...]
    final_score: float
    notes: tuple[tuple[str, str], ...] = ()
    scored_from: ScoredFrom = ScoredFrom.UNSPECIFIED


@dataclass(slots=True)
class ScoredItem:
    item_id: str
    score: float
    rank: int = 0
    model_score: float = 0.0
    unscored: bool = False
    scored_from: ScoredFrom = ScoredFrom.UNSPECIFIED
    explanation: Explanation | None = None


@dataclass(slots=True)
class RerankResponse:
    items: list[ScoredItem]
    model_name: str
    model_version: str
    timings_ms: dict[str, float]
    request_id: str = ""
    filtered: list[tuple[str, str]] = field(default_factory=list)
    # Why the model did not score this reply (``server.core.fallback.REASONS``); empty: it did.
    degraded_reason: str = ""

    @property
    def degraded(self) -> bool:
        """The order is the fallback (``degraded_reason`` says why), not the model's."""
        return bool(self.degraded_reason)


EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")


# Not frozen either (read-only by convention): a request reads up to history_len of these
# from the store, and frozen ones cost 5x as much to build.
@dataclass(slots=True)
class Event:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    value: float | None = None
    idempotency_key: str = ""
    # The reply (``RerankResponse.request_id``) whose ranking showed the item; "" if none.
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Impression:
    """What one Rerank reply showed (online evaluation): its first ``item_ids``, in order."""

    request_id: str
    user_id: str
    model_name: str
    model_version: str
    item_ids: tuple[str, ...]
    timestamp: float
    # The fallback's reason when the reply was degraded (not the model's order); "" otherwise.
    degraded_reason: str = ""


@dataclass(frozen=True, slots=True)
class RecordResult:
    accepted: int
    duplicates: int
