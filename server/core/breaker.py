"""A circuit breaker in front of the inference call.

closed (calls go through) -> open after ``failure_threshold`` consecutive failures or timeouts
(calls are refused: the pipeline answers with its fallback at once instead of waiting on a
failing Triton) -> half-open after ``open_s`` (one request goes through as a probe: success
closes the circuit, failure opens it for another ``open_s``).

Single event loop: no locks. Transitions are counted for metrics.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, open_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if open_s < 0:
            raise ValueError("open_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probing = False  # half-open: the one probe is in flight
        self.transitions: Counter[str] = Counter()  # state entered -> times

    @property
    def state(self) -> str:
        """The state as a caller would find it now (open turns half-open once ``open_s`` passed)."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.open_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to the model now? In half-open, True for exactly one caller (the
        probe), which must then report ``success``, ``failure`` or ``release``."""
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            if self._clock() - self._opened_at < self.open_s:
                return False
            self._enter(HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state != CLOSED:
            self._enter(CLOSED)

    def failure(self) -> None:
        if self._state == CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()
        elif self._state == HALF_OPEN:
            self._open()
        # Open: a call let through before the circuit opened failed too; the cool-down stands.

    def release(self) -> None:
        """The call ended without a verdict (its caller went away): a half-open circuit lets
        the next request probe instead of waiting for an answer that will not be reported."""
        self._probing = False

    def _open(self) -> None:
        self._failures = 0
        self._probing = False
        self._opened_at = self._clock()
        self._enter(OPEN)

    def _enter(self, state: str) -> None:
        # Logged when service changes (not each failed probe of a long outage).
        if state == OPEN and self._state == CLOSED:
            log.warning("circuit breaker open after %d consecutive inference failures: degraded replies "
                        "for at least %.1f s", self.failure_threshold, self.open_s)
        elif state == CLOSED:
            log.info("circuit breaker closed: the model scores again")
        self._state = state
        self.transitions[state] += 1
