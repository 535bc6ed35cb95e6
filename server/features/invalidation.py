"""Cross-gateway invalidation: follow the Redis store's change channel.

Several gateways share one Redis store, and each keeps its own caches in front of it: the
item cache (``server.features.cache``) and the score cache (``server.core.score_cache``).
``RedisStore`` announces every item write (upsert, delete) and every erased user
(``forget_user``) on ``<key_prefix>invalidate``; each gateway runs ``Invalidation.run`` as a
background task, subscribed to that channel, and applies what other gateways announce:

* ``items``: the ids leave the item cache (``on_items``), so the next Rerank reads them from
  Redis. Staleness bound: one pub/sub hop after the write is acknowledged, typically; at
  most ``item_cache_ttl_s`` when a message is lost (pub/sub delivers at most once).
* ``forget``: the user's cached scores go (``on_forget``). The store part of ForgetUser
  already reaches every gateway; this erases the copies other gateways keep in memory.
* Events need nothing: ``recent_events`` reads Redis on every Rerank (no history cache), so
  an acknowledged event shapes the very next Rerank on any gateway.

A message is lost only while the subscription is down (Redis restarted, connection cut,
the subscriber's output buffer overflowed). The task reconnects with capped backoff, and
once subscribed again calls ``on_resync`` (the item cache is cleared: anything may have
changed meanwhile). Scores cached for a user forgotten during an outage stay until the LRU
evicts them; they are never served (no request renders the erased history again), and
ForgetUser called again (it is idempotent) drops them.

Transport-free towards the gateway: it takes callbacks, not caches.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

# Pub/sub connections carry no requests: ping now and then so a dead one is noticed.
HEALTH_CHECK_S = 5.0


class Invalidation:
    """Subscriber to ``store.changes_channel`` (a ``RedisStore``); see the module docstring."""

    def __init__(
        self,
        store,
        *,
        on_items: Callable[[Iterable[str]], object],
        on_forget: Callable[[str], object],
        on_resync: Callable[[], object],
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ):
        self.store = store
        self.channel: str = store.changes_channel
        self._on_items, self._on_forget, self._on_resync = on_items, on_forget, on_resync
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.subscribed = asyncio.Event()  # set while the subscription is up
        self.received = 0  # messages from other gateways applied
        self.reconnects = 0  # subscriptions after the first

    def handle(self, data: str) -> None:
        """Apply one message (ignores this gateway's own and malformed ones)."""
        try:
            change = json.loads(data)
        except ValueError:
            log.warning("ignoring a malformed message on %s", self.channel)
            return
        if not isinstance(change, dict) or change.get("origin") == self.store.instance_id:
            return
        items, user = change.get("items"), change.get("forget")
        if isinstance(items, list):
            self._on_items([str(i) for i in items])
        if isinstance(user, str):
            self._on_forget(user)
        self.received += 1

    async def run(self) -> None:
        """Follow the channel until cancelled, reconnecting after any failure."""
        delay, first = self.backoff_s, True
        while True:
            pubsub = None
            try:
                pubsub = await self.store.pubsub()
                await pubsub.subscribe(self.channel)
                while True:
                    msg = await pubsub.get_message(timeout=HEALTH_CHECK_S)
                    if msg is None:
                        await pubsub.ping()  # a dead connection raises here instead of hanging
                        continue
                    if msg["type"] == "subscribe":
                        # From here on no message is missed: drop what may have gone stale
                        # before (at start too: requests may have been served meanwhile).
                        self._on_resync()
                        if not first:
                            self.reconnects += 1
                            log.info("resubscribed to %s; item cache cleared", self.channel)
                        first, delay = False, self.backoff_s
                        self.subscribed.set()
                    elif msg["type"] == "message":
                        self.handle(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down, connection lost: retry, never die
                if self.subscribed.is_set() or delay == self.backoff_s:
                    log.warning("invalidation channel %s lost (%s: %s); reconnecting", self.channel,
                                type(exc).__name__, exc)
                self.subscribed.clear()
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:  # the connection is already gone
                        pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)
