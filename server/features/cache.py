"""Bounded LRU cache of items in front of ``FeatureStore.get_items``.

Only items found are cached. Missing ids are not (no negative caching): an item absent
now may be created a moment later by ``UpsertItems``, and must then be seen at once.
The price is that candidates with unknown ids go to the store on every request.

Each gateway has its own cache, and ``invalidate`` only reaches the cache it is called
on. With a Redis store, the other gateways hear of each upsert or delete over pub/sub
(``server.features.invalidation``) and invalidate within a hop; ``ttl_s`` bounds how long
an item can stay stale when that message is lost (never expiring when ``ttl_s`` is None),
and it is the only bound for gateways sharing any other store. Set ``ttl_s`` when several
gateways share a store.

Async-safe within one event loop (the gateway's): the bookkeeping never awaits, and an
item invalidated while a store read for it is in flight is not cached from that read.
Not thread-safe. Cached ``Item`` objects are shared: callers must not mutate them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from server.types import Item


class _Pending:
    """A store read in flight (compared by identity)."""

    __slots__ = ("ids", "all")

    def __init__(self):
        self.ids: set[str] = set()
        self.all = False


class ItemCache:
    """LRU of at most ``max_items`` items; ``max_items=0`` disables caching."""

    def __init__(
        self,
        store,
        max_items: int,
        *,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        self.store = store
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Item, float]] = OrderedDict()  # id -> (item, stored at)
        # One entry per store read in flight: the ids invalidated since it started, which it
        # must not cache (its result may predate the write that caused the invalidation).
        self._inflight: list[_Pending] = []
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """Like ``store.get_items``; the misses of one call go to the store in one call."""
        found: dict[str, Item] = {}
        missing: list[str] = []
        now, ttl = self._clock(), self.ttl_s
        entries = self._entries
        get, touch = entries.get, entries.move_to_end  # bound once: this loop runs per candidate
        for item_id in dict.fromkeys(item_ids):
            entry = get(item_id)
            if entry is not None and (ttl is None or now - entry[1] < ttl):
                touch(item_id)
                found[item_id] = entry[0]
            else:
                if entry is not None:
                    del entries[item_id]  # expired
                missing.append(item_id)
        self.hits += len(found)
        self.misses += len(missing)
        if not missing:
            return found
        pending = _Pending()
        self._inflight.append(pending)
        try:
            fetched = await self.store.get_items(missing)
        finally:
            self._inflight.remove(pending)
        for item_id, item in fetched.items():
            found[item_id] = item
            if not pending.all and item_id not in pending.ids:
                self._put(item_id, item, now)  # age counted from before the read: conservative
        return found

    def _put(self, item_id: str, item: Item, stored_at: float) -> None:
        if self.max_items == 0:
            return
        self._entries[item_id] = (item, stored_at)
        self._entries.move_to_end(item_id)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)
            self.evictions += 1

    def invalidate(self, item_ids: Iterable[str]) -> None:
        """Forget these items (call after upserting or deleting them)."""
        ids = set(item_ids)
        for item_id in ids:
            self._entries.pop(item_id, None)
        for pending in self._inflight:
            pending.ids.update(ids)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        for pending in self._inflight:
            pending.all = True

    def stats(self) -> dict[str, float]:
        """Counters since creation: hits, misses, hit_rate, evictions, size, max_items."""
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "evictions": self.evictions,
            "size": len(self._entries),
            "max_items": self.max_items,
        }

    def __len__(self) -> int:
        return len(self._entries)
