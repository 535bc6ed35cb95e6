"""Impression log for online evaluation: what each OK Rerank reply showed, written to the
feature store off the request path.

``offer`` runs on the request path: it copies the reply's first ``top_k`` item ids into a
bounded in-memory queue and returns; it never waits, never raises and, when the queue is
full, drops the impression and counts it (``dropped``). A background task (``run``) writes
queued impressions in batches through ``store.record_impressions``; a failed write is
logged (at most once per ``_LOG_EVERY_S``) and its batch counted in ``failed``, never
retried (the report then sees those requests as unlogged, not as unclicked). ``close``
writes what is still queued and stops the task (the gateway calls it after draining its
requests, before closing the store); a write in progress is never cancelled halfway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from server.types import Impression, RerankRequest, RerankResponse

log = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0


class ImpressionLog:
    def __init__(self, store, *, top_k: int = 20, queue_size: int = 10_000, batch_size: int = 500,
                 flush_interval_s: float = 0.25):
        if top_k < 1 or queue_size < 1 or batch_size < 1:
            raise ValueError("top_k, queue_size and batch_size must be at least 1")
        self.store = store
        self.top_k = top_k
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: deque[Impression] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None
        self._writing = asyncio.Lock()  # held while a batch is being written
        # Counters read by the metrics endpoint (numbers only).
        self.offered = self.dropped = self.written = self.failed = 0
        self._last_log = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, req: RerankRequest, resp: RerankResponse) -> None:
        """Queue what ``resp`` showed (request path: O(top_k), no I/O). Replies without a
        request id cannot be attributed and are skipped."""
        if not resp.request_id or self._closed:
            return
        self.offered += 1
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        items = resp.items
        top = items if len(items) <= self.top_k else items[:self.top_k]
        self._queue.append(Impression(resp.request_id, req.user_id, resp.model_name, resp.model_version,
                                      tuple(i.item_id for i in top), time.time(), resp.degraded_reason))
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        """Start the background writer (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="impression-log")

    async def _run(self) -> None:
        """Write batches when one fills, else every ``flush_interval_s``, until ``close``."""
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> int:
        """Write everything queued now; returns how many impressions were written."""
        done = 0
        while self._queue:
            async with self._writing:
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                if not batch:  # emptied by ``forget`` while this waited
                    break
                try:
                    await self.store.record_impressions(batch)
                except Exception as exc:  # the store down: lose this batch, keep serving
                    self._lost(batch, exc)
                    continue
            self.written += len(batch)
            done += len(batch)
        return done

    def _lost(self, batch: list[Impression], exc: Exception) -> None:
        self.failed += len(batch)
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("impression log: %d impressions not written (%s: %s); %d lost so far",
                        len(batch), type(exc).__name__, exc, self.failed)

    def drop_queued(self, user_id: str) -> int:
        """Drop the user's queued impressions (another gateway erased the user); returns how many."""
        kept = [i for i in self._queue if i.user_id != user_id]
        dropped = len(self._queue) - len(kept)
        if dropped:
            self._queue = deque(kept)
        return dropped

    async def forget(self, user_id: str) -> int:
        """Drop the user's queued impressions and wait for a write in progress, so that the
        store's erasure that follows is not undone by a later write. Returns how many were
        dropped. (A Rerank of the user still in flight may queue one afterwards, as it may
        cache scores again: a repeated ForgetUser erases it.)"""
        dropped = self.drop_queued(user_id)
        async with self._writing:
            pass
        return dropped

    async def close(self) -> None:
        """Stop taking impressions, write those still queued, stop the writer."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        else:
            await self.flush()
