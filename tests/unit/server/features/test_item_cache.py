"""ItemCache: one store call per batch of misses, invalidation, LRU bound, no negative caching."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(ROOT))

from server.features.cache import ItemCache  # noqa: E402
from server.features.sqlite import SqliteStore  # noqa: E402
from server.types import Item  # noqa: E402


class CountingStore:
    """In-memory ``get_items`` that records each call; ``gate`` holds calls until set."""

    def __init__(self, items=()):
        self.items = {i.item_id: i for i in items}
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None

    async def get_items(self, item_ids):
        self.calls.append(list(item_ids))
        snapshot = {i: self.items[i] for i in item_ids if i in self.items}
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(0)
        return snapshot


def items(n: int, version: str = "v1") -> list[Item]:
    return [Item(f"i{k}", f"{version}-{k}") for k in range(n)]


def test_one_store_call_per_batch_of_misses():
    async def body():
        store = CountingStore(items(200))
        cache = ItemCache(store, 1000)
        first = await cache.get_items([f"i{k}" for k in range(60)])
        assert len(first) == 60 and store.calls == [[f"i{k}" for k in range(60)]]
        # 100 candidates, 60 cached, 40 new, plus duplicates: one call for the 40.
        ids = [f"i{k}" for k in range(100)] + ["i5", "i70"]
        got = await cache.get_items(ids)
        assert got == {i.item_id: i for i in items(100)}
        assert store.calls[1] == [f"i{k}" for k in range(60, 100)]
        # Everything cached: no store call at all.
        await cache.get_items(ids)
        assert len(store.calls) == 2
        assert await cache.get_items([]) == {}
        s = cache.stats()
        assert (s["hits"], s["misses"], s["size"]) == (160, 100, 100)
        assert s["hit_rate"] == pytest.approx(160 / 260)

    asyncio.run(body())


def test_missing_items_are_not_cached():
    async def body():
        store = CountingStore(items(2))
        cache = ItemCache(store, 10)
        assert set(await cache.get_items(["i0", "ghost"])) == {"i0"}
        store.items["ghost"] = Item("ghost", "created later")  # no invalidate needed
        assert (await cache.get_items(["i0", "ghost"]))["ghost"].title == "created later"
        assert store.calls == [["i0", "ghost"], ["ghost"]]

    asyncio.run(body())


def test_invalidate_after_upsert_and_delete():
    async def body():
        store = CountingStore(items(3))
        cache = ItemCache(store, 10)
        await cache.get_items(["i0", "i1", "i2"])
        store.items["i0"] = Item("i0", "v2")
        del store.items["i1"]
        assert (await cache.get_items(["i0"]))["i0"].title == "v1-0"  # stale until invalidated
        cache.invalidate(["i0", "i1", "never-cached"])
        got = await cache.get_items(["i0", "i1", "i2"])
        assert got["i0"].title == "v2" and "i1" not in got and got["i2"].title == "v1-2"
        assert store.calls[-1] == ["i0", "i1"]
        cache.clear()
        assert len(cache) == 0

    asyncio.run(body())


def test_invalidation_during_inflight_read_is_not_lost():
    async def body():
        store = CountingStore(items(2))
        cache = ItemCache(store, 10)
        store.gate = asyncio.Event()
        reading = asyncio.create_task(cache.get_items(["i0", "i1"]))
        await asyncio.sleep(0)  # the read has taken its snapshot (old i0)
        store.items["i0"] = Item("i0", "v2")
        cache.invalidate(["i0"])
        store.gate.set()
        assert (await reading)["i0"].title == "v1-0"  # that read may return the old item...
        store.gate = None
        assert (await cache.get_items(["i0"]))["i0"].title == "v2"  # ...but did not cache it
        assert (await cache.get_items(["i1"]))["i1"].title == "v1-1"
        assert store.calls[-1] == ["i0"]  # i1 was cached by the first read

    asyncio.run(body())


def test_clear_during_inflight_read_caches_nothing():
    async def body():
        store = CountingStore(items(2))
        cache = ItemCache(store, 10)
        store.gate = asyncio.Event()
        reading = asyncio.create_task(cache.get_items(["i0", "i1"]))
        await asyncio.sleep(0)
        cache.clear()
        store.gate.set()
        await reading
        assert len(cache) == 0

    asyncio.run(body())


def test_lru_bound_and_eviction_order():
    async def body():
        store = CountingStore(items(10))
        cache = ItemCache(store, 3)
        await cache.get_items(["i0", "i1", "i2"])
        await cache.get_items(["i0"])  # i0 becomes most recent
        await cache.get_items(["i3"])  # evicts i1, the least recently used
        assert len(cache) == 3 and cache.stats()["evictions"] == 1
        n = len(store.calls)
        await cache.get_items(["i0", "i2", "i3"])
        assert len(store.calls) == n  # all hits
        await cache.get_items(["i1"])
        assert store.calls[-1] == ["i1"]
        # A batch bigger than the cache still returns everything.
        assert len(await cache.get_items([f"i{k}" for k in range(10)])) == 10
        assert len(cache) == 3

    asyncio.run(body())


def test_zero_size_disables_caching():
    async def body():
        store = CountingStore(items(2))
        cache = ItemCache(store, 0)
        for _ in range(3):
            assert len(await cache.get_items(["i0", "i1"])) == 2
        assert len(store.calls) == 3 and len(cache) == 0
        with pytest.raises(ValueError):
            ItemCache(store, -1)

    asyncio.run(body())


def test_ttl_bounds_staleness_from_other_gateways():
    async def body():
        now = [0.0]
        store = CountingStore(items(1))
        cache = ItemCache(store, 10, ttl_s=5.0, clock=lambda: now[0])
        await cache.get_items(["i0"])
        store.items["i0"] = Item("i0", "v2")  # written through another gateway
        now[0] = 4.9
        assert (await cache.get_items(["i0"]))["i0"].title == "v1-0"
        now[0] = 5.0
        assert (await cache.get_items(["i0"]))["i0"].title == "v2"

    asyncio.run(body())


def test_concurrent_readers_and_invalidations():
    async def body():
        rng = random.Random(3)
        store = CountingStore(items(50))
        cache = ItemCache(store, 20)
        version = {f"i{k}": 1 for k in range(50)}

        async def reader():
            for _ in range(100):
                ids = rng.sample(sorted(version), 10)
                got = await cache.get_items(ids)
                assert set(got) == set(ids)
                assert len(cache) <= 20

        async def writer():
            for _ in range(100):
                item_id = rng.choice(sorted(version))
                version[item_id] += 1
                store.items[item_id] = Item(item_id, f"v{version[item_id]}")
                cache.invalidate([item_id])
                await asyncio.sleep(0)

        await asyncio.gather(*[reader() for _ in range(8)], writer())
        # Once writes stop, every read returns the latest version.
        got = await cache.get_items(sorted(version))
        want = {i: f"v{v}" if v > 1 else f"v1-{i[1:]}" for i, v in version.items()}
        assert {i: it.title for i, it in got.items()} == want

    asyncio.run(body())


def test_in_front_of_sqlite(tmp_path):
    async def body():
        store = SqliteStore(tmp_path / "s.db")
        try:
            await store.upsert_items(items(5))
            cache = ItemCache(store, 100)
            assert len(await cache.get_items(["i0", "i1", "x"])) == 2
            await store.upsert_items([Item("i0", "v2")])
            cache.invalidate(["i0"])
            assert (await cache.get_items(["i0", "i1"]))["i0"].title == "v2"
            assert cache.stats()["hits"] == 1
        finally:
            await store.close()

    asyncio.run(body())
