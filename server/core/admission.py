"""Admission control: bound the gateway's own in-flight work and fail fast when full."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from server.errors import Overloaded


class Admission:
    """A non-blocking counter: over ``limit`` requests in flight, new ones are refused.

    Refusing at once (RESOURCE_EXHAUSTED) rather than queueing keeps latency bounded
    and lets callers retry elsewhere; Triton's queue is where batching happens.

    ``backlog`` counts downstream work that no request holds any more: inference calls that
    passed their caller's deadline but still run in Triton (they are never cancelled, see
    ``server.triton.client``). They take slots too, so that under overload with short
    deadlines Triton's queue stays bounded by ``limit`` rather than growing with every retry.
    """

    def __init__(self, limit: int, backlog: Callable[[], int] | None = None):
        self.limit = limit
        self.in_flight = 0
        self.rejected = 0
        self._backlog = backlog

    @contextmanager
    def slot(self):
        behind = self._backlog() if self._backlog is not None else 0
        if self.in_flight + behind >= self.limit:
            self.rejected += 1
            detail = f" ({behind} abandoned inference calls still running)" if behind else ""
            raise Overloaded(f"gateway is at its limit of {self.limit} requests in flight{detail}; retry later")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
