"""Admission control: bound the gateway's own in-flight work and fail fast when full."""

from __future__ import annotations

from contextlib import contextmanager

from server.errors import Overloaded


class Admission:
    """A non-blocking counter: over ``limit`` requests in flight, new ones are refused.

    Refusing at once (RESOURCE_EXHAUSTED) rather than queueing keeps latency bounded
    and lets callers retry elsewhere; Triton's queue is where batching happens.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self.rejected = 0

    @contextmanager
    def slot(self):
        if self.in_flight >= self.limit:
            self.rejected += 1
            raise Overloaded(f"gateway is at its limit of {self.limit} requests in flight; retry later")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
