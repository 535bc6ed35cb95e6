"""Admission control: bound the gateway's own in-flight work, and refuse at once a request
whose deadline the current queue cannot meet (load shedding), instead of letting it wait."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from server.errors import DeadlineExceeded, LoadShed, Overloaded


class WaitEstimate:
    """Expected service time of a new request from the work ahead of it.

    Model: ``seconds = base + per_ahead * ahead``, where ``ahead`` is the work in flight when
    a request was admitted. Below saturation Triton's batcher merges callers and the slope is
    small; at saturation it is 1 / throughput. Fitted by least squares over recent samples,
    each weighted ``exp(-age / memory_s)``: the fit follows the load within about
    ``memory_s``. ``prior`` adds that much weight pulling the slope to 0, so with few samples,
    or ones all at one queue length, the estimate extrapolates optimistically: admitting too
    much yields samples at longer queues (the slope is then learned), refusing too much would
    yield none. With under ``min_weight`` of recent samples (none, or all older than a few
    ``memory_s``) it expects 0 s: an estimate from before a quiet spell is forgotten, not kept
    to refuse with. O(1) per sample and per estimate.
    """

    min_weight = 0.5
    __slots__ = ("memory_s", "prior", "_s0", "_s1", "_s2", "_sy", "_sxy", "_t", "samples")

    def __init__(self, memory_s: float = 2.0, prior: float = 1.0):
        self.memory_s = memory_s
        self.prior = prior
        self._s0 = self._s1 = self._s2 = self._sy = self._sxy = 0.0
        self._t: float | None = None
        self.samples = 0

    def _decay(self, now: float) -> None:
        if self._t is not None and now > self._t:
            k = math.exp(-(now - self._t) / self.memory_s)
            self._s0 *= k
            self._s1 *= k
            self._s2 *= k
            self._sy *= k
            self._sxy *= k
        if self._t is None or now > self._t:
            self._t = now

    def observe(self, ahead: float, seconds: float, now: float) -> None:
        """One request admitted with ``ahead`` in flight took ``seconds`` (finished at ``now``)."""
        self._decay(now)
        self._s0 += 1.0
        self._s1 += ahead
        self._s2 += ahead * ahead
        self._sy += seconds
        self._sxy += ahead * seconds
        self.samples += 1

    def params(self, now: float) -> tuple[float, float]:
        """(base seconds, seconds per request ahead) as fitted at ``now``. Reads only: the
        metrics endpoint calls it from its own thread."""
        s0, s1, s2, sy, sxy = self._s0, self._s1, self._s2, self._sy, self._sxy
        if self._t is not None and now > self._t:
            # One factor scales every sum, so it changes the fit only against the prior.
            k = math.exp(-(now - self._t) / self.memory_s)
            s0, s1, s2, sy, sxy = s0 * k, s1 * k, s2 * k, sy * k, sxy * k
        base = slope = 0.0
        if s0 >= self.min_weight:
            det = s0 * (s2 + self.prior) - s1 * s1  # > 0: s0 * s2 >= s1^2 and prior > 0
            slope = (s0 * sxy - s1 * sy) / det if det > 0 else 0.0
            if slope <= 0.0:  # longer queues never make a request faster: flat fit
                slope, base = 0.0, sy / s0
            else:
                base = (sy - slope * s1) / s0
                if base < 0.0:  # through the origin instead
                    base, slope = 0.0, sxy / (s2 + self.prior)
        return base, slope

    def expected_s(self, ahead: float, now: float) -> float:
        base, slope = self.params(now)
        return base + slope * ahead


class _Slot:
    """One admitted request; on exit it frees its slot and, when its time says something
    about the queue, feeds the estimate (see ``Admission.slot``)."""

    __slots__ = ("_adm", "ahead", "budget_s", "start", "scored", "late")

    def __init__(self, adm: Admission, ahead: int, budget_s: float | None, start: float):
        self._adm = adm
        self.ahead = ahead
        self.budget_s = budget_s
        self.start = start
        self.scored = False  # set by the caller: the model answered
        self.late = False  # set by the caller: answered without the model for want of time

    def __enter__(self) -> _Slot:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        adm = self._adm
        adm.in_flight -= 1
        if adm.estimate is None:
            return
        ran_out = self.late or (exc_type is not None and (
            issubclass(exc_type, DeadlineExceeded) or exc_type is asyncio.CancelledError))
        if not (self.scored or ran_out):  # a fast failure or fallback says nothing about the queue
            return
        now = adm.clock()
        took = now - self.start
        if self.scored:
            adm.estimate.observe(self.ahead, took, now)
        elif self.budget_s is not None and took >= 0.5 * self.budget_s:
            # Ran out of time: its service time is unknown, only longer than ``took``. Left
            # out, the estimate would see only the requests fast enough, exactly when the queue
            # is too long; taken as ``took``, it could never exceed the budget. Counted as twice
            # ``took``: running out of time lifts the estimate past the budget, so shedding
            # tightens until requests stop running out. (Not if it gave up early: a caller that
            # went away, a budget too small to try.)
            adm.estimate.observe(self.ahead, 2.0 * took, now)


class Admission:
    """A non-blocking counter with a limit, plus load shedding by deadline.

    Refusing at once (RESOURCE_EXHAUSTED) rather than queueing keeps latency bounded
    and lets callers retry elsewhere; Triton's queue is where batching happens.

    ``backlog`` counts downstream work that no request holds any more: inference calls that
    passed their caller's deadline but still run in Triton (they are never cancelled, see
    ``server.triton.client``). They take slots too, so that under overload with short
    deadlines Triton's queue stays bounded by ``limit`` rather than growing with every retry.

    Shedding (``shed``): a request whose expected service time (``WaitEstimate`` of the work
    ahead of it, abandoned calls included) exceeds ``headroom`` x its budget is refused at
    once, also RESOURCE_EXHAUSTED: it would most likely miss its deadline after taking a
    share of Triton from requests that can still make theirs, and the caller, with its time
    not spent, can still try another replica (a DEADLINE_EXCEEDED would say its time is gone,
    and retry policies do not retry it). A request with nothing ahead is always admitted: no
    queue to shed, and its sample refreshes the estimate, so a stale one (after a burst) heals.
    The estimate learns only from requests the pipeline marks ``scored`` (answered by the
    model, not a fast fallback) and from requests that ran out of time (``late``, or ended by
    ``DeadlineExceeded`` or cancellation, after at least half their budget).
    """

    def __init__(self, limit: int, backlog: Callable[[], int] | None = None, *, shed: bool = True,
                 headroom: float = 0.9, memory_s: float = 2.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.limit = limit
        self.in_flight = 0
        self.rejected = 0  # refused at the in-flight limit
        self.shed = 0  # refused because the deadline could not be met
        self._backlog = backlog
        self.headroom = headroom
        self.estimate = WaitEstimate(memory_s) if shed else None
        self.clock = clock

    def slot(self, budget_s: float | None = None) -> _Slot:
        """Admit one request with ``budget_s`` seconds left (None: no deadline) or raise
        ``Overloaded``; use as ``with admission.slot(budget) as s: ...; s.scored = True``."""
        behind = self._backlog() if self._backlog is not None else 0
        ahead = self.in_flight + behind
        if ahead >= self.limit:
            self.rejected += 1
            detail = f" ({behind} abandoned inference calls still running)" if behind else ""
            raise Overloaded(f"gateway is at its limit of {self.limit} requests in flight{detail}; retry later")
        now = self.clock()
        est = self.estimate
        # No time left for the model (budget <= 0): the pipeline fails or degrades at once
        # without calling Triton, so the request adds nothing to the queue: not shed.
        if est is not None and ahead and budget_s is not None and budget_s > 0:
            expected = est.expected_s(ahead, now)
            if expected > self.headroom * budget_s:
                self.shed += 1
                raise LoadShed(f"load shed: expected to take {expected * 1000:.0f} ms with {ahead} requests "
                                 f"ahead, more than the {budget_s * 1000:.0f} ms it has before its deadline; "
                                 f"retry another replica or later")
        self.in_flight += 1
        return _Slot(self, ahead, budget_s, now)

    def expected_ms(self) -> float:
        """What a request admitted now would be expected to take (ms); 0 with shedding off."""
        if self.estimate is None:
            return 0.0
        behind = self._backlog() if self._backlog is not None else 0
        return self.estimate.expected_s(self.in_flight + behind, self.clock()) * 1000.0
