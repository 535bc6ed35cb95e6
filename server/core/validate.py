"""Request validation. Every error names the offending field (with its index).

Messages never echo a user id: they name the field, not the person (item ids, event types
and such are echoed where that helps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from server.errors import InvalidArgument
from server.types import EVENT_TYPES, Event, Item, RerankRequest

# Event times further ahead than this are clock bugs, not events.
MAX_CLOCK_SKEW_S = 300.0
MAX_ID_LEN = 256
# Override values are parsed as YAML in pure Python on the event loop: bound the work.
MAX_OVERRIDES = 32
MAX_OVERRIDE_LEN = 4096
# An event's request_id: what ``server.api.errors.request_id_of`` hands out (a caller's
# x-request-id, cut to 128 characters, or a uuid), as printable ASCII.
MAX_REQUEST_ID_LEN = 128


def _id_error(value: str) -> str | None:
    if not value or value.isspace():
        return "must not be empty"
    if len(value) > MAX_ID_LEN:
        return f"longer than {MAX_ID_LEN} characters"
    return None


def _check_id(value: str, field: str) -> None:
    error = _id_error(value)
    if error is not None:
        raise InvalidArgument(error, field=field)


def validate_rerank(req: RerankRequest, *, max_candidates: int) -> None:
    _check_id(req.user_id, "user_id")
    if not req.candidates:
        raise InvalidArgument("at least one candidate is required", field="candidates")
    if len(req.candidates) > max_candidates:
        raise InvalidArgument(
            f"{len(req.candidates)} candidates exceed the maximum of {max_candidates}", field="candidates")
    if req.top_n < 0:
        raise InvalidArgument("must be >= 0 (0 returns all candidates)", field="top_n")
    if req.rule_overrides:
        _check_overrides(req.rule_overrides)
    seen: dict[str, int] = {}
    for i, c in enumerate(req.candidates):
        # The field name is formatted only on error: this loop runs for every candidate.
        error = _id_error(c.item_id)
        if error is not None:
            raise InvalidArgument(error, field=f"candidates[{i}].item_id")
        if c.item_id in seen:
            raise InvalidArgument(
                f"duplicate item id {c.item_id!r} (also candidates[{seen[c.item_id]}])",
                field=f"candidates[{i}].item_id")
        seen[c.item_id] = i
        if c.retrieval_score is not None and not math.isfinite(c.retrieval_score):
            raise InvalidArgument("must be a finite number", field=f"candidates[{i}].retrieval_score")


def _check_overrides(overrides: dict[str, str]) -> None:
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidArgument(f"{len(overrides)} overrides exceed the maximum of {MAX_OVERRIDES}",
                              field="rule_overrides")
    for key, value in overrides.items():
        if len(key) > MAX_ID_LEN:
            raise InvalidArgument(f"key longer than {MAX_ID_LEN} characters", field="rule_overrides")
        if len(value) > MAX_OVERRIDE_LEN:
            raise InvalidArgument(f"value longer than {MAX_OVERRIDE_LEN} characters", field=f"rule_overrides[{key!r}]")


def validate_events(events: Sequence[Event], *, now: float, max_events: int) -> None:
    """All or nothing: one invalid event rejects the whole batch before anything is written."""
    if not events:
        raise InvalidArgument("at least one event is required", field="events")
    if len(events) > max_events:
        raise InvalidArgument(f"{len(events)} events exceed the maximum of {max_events} per call",
                              field="events")
    for i, e in enumerate(events):
        _check_id(e.user_id, f"events[{i}].user_id")
        _check_id(e.item_id, f"events[{i}].item_id")
        if e.event_type not in EVENT_TYPES:
            raise InvalidArgument(f"unknown event type {e.event_type!r} (expected one of {', '.join(EVENT_TYPES)})",
                                  field=f"events[{i}].event_type")
        if not math.isfinite(e.timestamp) or e.timestamp < 0:
            raise InvalidArgument("must be a finite, non-negative Unix time", field=f"events[{i}].timestamp")
        if e.timestamp > now + MAX_CLOCK_SKEW_S:
            raise InvalidArgument(f"is {e.timestamp - now:.0f}s in the future", field=f"events[{i}].timestamp")
        if e.value is not None and not math.isfinite(e.value):
            raise InvalidArgument("must be a finite number", field=f"events[{i}].value")
        if e.request_id:
            _check_request_id(e.request_id, f"events[{i}].request_id")


def _check_request_id(value: str, field: str) -> None:
    if len(value) > MAX_REQUEST_ID_LEN:
        raise InvalidArgument(f"longer than {MAX_REQUEST_ID_LEN} characters", field=field)
    if not (value.isascii() and value.isprintable()) or value.isspace():
        raise InvalidArgument("must be printable ASCII (a RerankResponse.request_id)", field=field)


def validate_items(items: Sequence[Item], deletes: Sequence[str], *, max_items: int) -> None:
    if not items and not deletes:
        raise InvalidArgument("nothing to upsert or delete", field="items")
    if len(items) + len(deletes) > max_items:
        raise InvalidArgument(f"more than {max_items} items per call", field="items")
    seen: set[str] = set()
    for i, it in enumerate(items):
        _check_id(it.item_id, f"items[{i}].item_id")
        if it.item_id in seen:
            raise InvalidArgument(f"duplicate item id {it.item_id!r}", field=f"items[{i}].item_id")
        seen.add(it.item_id)
    for i, item_id in enumerate(deletes):
        _check_id(item_id, f"delete_item_ids[{i}]")


def validate_forget(user_id: str) -> None:
    _check_id(user_id, "user_id")
