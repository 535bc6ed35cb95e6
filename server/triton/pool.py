"""Several Triton endpoints behind one gateway: least outstanding calls, health-aware.

``triton.url`` is a comma-separated list (``a:8001,b:8001``); one URL is a plain ``TritonScorer``
(today's behaviour, no pool). A ``TritonPool`` has the scorer's interface (``score``,
``ready_versions``, ``reachable``, ``open_calls``, ``abandoned_calls``, ``close``) over one
``TritonScorer`` (one channel) per endpoint:

* **Balancing**: each call goes to the eligible endpoint with the fewest open inference calls
  (ties taken in turn). Eligible: up, and the call's model version READY there.
* **Health**: an endpoint is marked down when a call to it fails as unreachable (UNAVAILABLE,
  connection refused or lost) or when a check finds it unreachable or without a READY version of
  the model. A background task probes the down endpoints every ``probe_interval_s`` (each probe
  bounded by ``probe_timeout_s``) and brings each back as soon as it reports a READY version.
  The watcher's ``ready_versions`` polls check every endpoint as well.
* **Retry**: a call that failed because its endpoint could not be reached is sent once more to
  another eligible endpoint while the caller's budget lasts (inference is idempotent; calls are
  never cancelled, see ``server.triton.client``). Only when no endpoint can answer does the
  error reach the pipeline, whose degraded mode then answers.
* **Versions**: ``ready_versions`` is the union of the versions READY on the endpoints that are
  up, so the watcher may choose a version READY on only some of them; calls for a version go
  only to the endpoints where it is READY. During a rolling upgrade that puts all the newest
  version's traffic on the endpoints that have it: pin ``triton.model_version`` to roll
  endpoints one by one with the load spread evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from server.errors import DeadlineExceeded, InferenceFailed, InvalidArgument
from server.triton.client import TritonScorer

log = logging.getLogger(__name__)


def parse_urls(url: str) -> list[str]:
    """The endpoints of ``triton.url`` (comma-separated ``host:port``), in order."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise InvalidArgument("no Triton endpoint given", field="triton.url")
    dupes = sorted({u for u in urls if urls.count(u) > 1})
    if dupes:
        raise InvalidArgument(f"endpoint listed twice: {', '.join(dupes)}", field="triton.url")
    return urls


def open_scorer(url: str, credentials: grpc.ChannelCredentials | None, model_name: str,
                **pool_options) -> TritonScorer | TritonPool:
    """A ``TritonScorer`` for one URL, a ``TritonPool`` over a comma-separated list."""
    urls = parse_urls(url)
    if len(urls) == 1:
        return TritonScorer(urls[0], credentials)
    return TritonPool([TritonScorer(u, credentials) for u in urls], model_name=model_name, **pool_options)


@dataclass
class Endpoint:
    """One Triton and the pool's view of it."""

    scorer: TritonScorer
    up: bool = True
    # Versions READY there at the last check; None before the first (any version accepted).
    ready: frozenset[str] | None = None
    marked_down: int = 0  # times it went down

    @property
    def url(self) -> str:
        return self.scorer.url

    def serves(self, version: str) -> bool:
        return self.up and (self.ready is None or version in self.ready)


@dataclass(frozen=True)
class EndpointStats:
    url: str
    up: bool
    open_calls: int
    answered_calls: int


def endpoint_stats(scorer: TritonScorer | TritonPool) -> list[EndpointStats]:
    """Per-endpoint state for the metrics, from a pool or a single scorer (up: last reachable)."""
    if isinstance(scorer, TritonPool):
        return scorer.stats()
    return [EndpointStats(scorer.url, scorer.reachable, scorer.open_calls, scorer.answered_calls)]


class TritonPool:
    """Least-outstanding-calls balancing over several Tritons, skipping down ones (module doc)."""

    def __init__(self, scorers: Sequence[TritonScorer], *, model_name: str, probe_interval_s: float = 0.25,
                 probe_timeout_s: float = 1.0):
        if not scorers:
            raise ValueError("a pool needs at least one endpoint")
        self.endpoints = [Endpoint(s) for s in scorers]
        self.model_name = model_name
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.retries = 0  # calls sent again to another endpoint after theirs was unreachable
        self._turn = itertools.count()
        self._prober: asyncio.Task | None = None
        self._closed = False

    # -- the scorer's interface ------------------------------------------------------------
    @property
    def reachable(self) -> bool:
        """Whether any endpoint answered its last check (a degraded reply's reason)."""
        return any(ep.scorer.reachable for ep in self.endpoints)

    @property
    def open_calls(self) -> int:
        return sum(ep.scorer.open_calls for ep in self.endpoints)

    @property
    def abandoned_calls(self) -> int:
        return sum(ep.scorer.abandoned_calls for ep in self.endpoints)

    async def ready_versions(self, model_name: str) -> list[str]:
        """Versions READY on at least one endpoint that is up (checks every endpoint)."""
        await asyncio.gather(*(self._check(ep, model_name, 2.0) for ep in self.endpoints))
        versions = set().union(*(ep.ready or () for ep in self.endpoints if ep.up))
        return sorted(versions)

    async def score(self, batch, spec, version: str, timeout_s: float | None = None,
                    headers: dict[str, str] | None = None):
        """``TritonScorer.score`` on the least busy endpoint serving ``version``; once more on
        another one if that endpoint could not be reached and time is left."""
        start = time.monotonic()
        tried: list[Endpoint] = []
        failure: InferenceFailed | None = None
        while len(tried) < 2:
            ep = self._pick(version, tried)
            if ep is None:
                break
            budget = None if timeout_s is None else timeout_s - (time.monotonic() - start)
            if budget is not None and budget <= 0:
                if failure is not None:
                    raise failure
                raise DeadlineExceeded("Triton did not answer before the deadline")
            if tried:
                self.retries += 1
            try:
                return await ep.scorer.score(batch, spec, version, timeout_s=budget, headers=headers)
            except InferenceFailed as exc:
                if not exc.unreachable:  # Triton answered with an error: another would too
                    raise
                self._mark_down(ep, str(exc))
                failure = exc
                tried.append(ep)
        if failure is not None:
            raise failure
        reachable = any(ep.up for ep in self.endpoints)
        raise InferenceFailed(f"no Triton endpoint serves {self.model_name} version {version} "
                              f"({'none reachable' if not reachable else 'not READY on those up'})",
                              unreachable=not reachable)

    async def close(self, drain_s: float = 10.0) -> None:
        """Stop probing; close every endpoint's channel once its open calls end."""
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await asyncio.gather(*(ep.scorer.close(drain_s) for ep in self.endpoints))

    # -- balancing and health ----------------------------------------------------------------
    def stats(self) -> list[EndpointStats]:
        return [EndpointStats(ep.url, ep.up, ep.scorer.open_calls, ep.scorer.answered_calls)
                for ep in self.endpoints]

    def _pick(self, version: str, exclude: list[Endpoint]) -> Endpoint | None:
        n = len(self.endpoints)
        first = next(self._turn) % n  # ties in turn: idle endpoints share sequential calls
        best = None
        for k in range(n):
            ep = self.endpoints[(first + k) % n]
            if ep in exclude or not ep.serves(version):
                continue
            if best is None or ep.scorer.open_calls < best.scorer.open_calls:
                best = ep
        return best

    def _mark_down(self, ep: Endpoint, why: str) -> None:
        if ep.up:
            ep.up = False
            ep.marked_down += 1
            log.warning("Triton endpoint %s down (%s): skipped until a probe finds it ready", ep.url, why)
        self._ensure_prober()

    async def _check(self, ep: Endpoint, model_name: str, timeout_s: float) -> None:
        versions = await ep.scorer.ready_versions(model_name, timeout_s=timeout_s)
        ep.ready = frozenset(versions)
        if versions and not ep.up:
            ep.up = True
            log.info("Triton endpoint %s back (READY: %s)", ep.url, ", ".join(sorted(versions)))
        elif not versions:
            self._mark_down(ep, "unreachable" if not ep.scorer.reachable else f"no READY version of {model_name}")

    def _ensure_prober(self) -> None:
        if self._closed or (self._prober is not None and not self._prober.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop (a synchronous caller): the watcher probes
            self._prober = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """Probe the down endpoints until all are up again."""
        while any(not ep.up for ep in self.endpoints):
            await asyncio.sleep(self.probe_interval_s)
            down = [ep for ep in self.endpoints if not ep.up]
            await asyncio.gather(*(self._check(ep, self.model_name, self.probe_timeout_s) for ep in down),
                                 return_exceptions=True)
