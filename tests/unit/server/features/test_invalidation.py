"""Cross-gateway invalidation over a real redis-server: two store objects stand for two
gateways; the subscriber's callbacks are the caches' own methods or recorders."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.features.cache import ItemCache
from server.features.invalidation import Invalidation
from server.features.redis import RedisStore
from server.types import Item
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis


@pytest.fixture
def redis_proc(tmp_path):
    try:
        proc = start_redis(tmp_path / "redis", appendonly=False)
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    yield proc
    proc.stop()


class Recorder:
    def __init__(self):
        self.items: list[list[str]] = []
        self.forgotten: list[str] = []
        self.resyncs = 0

    def subscriber(self, store) -> Invalidation:
        return Invalidation(store, on_items=lambda ids: self.items.append(list(ids)),
                            on_forget=self.forgotten.append, on_resync=self._resync, backoff_max_s=0.2)

    def _resync(self):
        self.resyncs += 1


async def _until(predicate, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_other_gateways_writes_reach_the_subscriber_not_its_own(redis_proc):
    async def body():
        prefix = f"inv:{uuid.uuid4().hex[:8]}:"
        a, b = RedisStore(redis_proc.url, key_prefix=prefix), RedisStore(redis_proc.url, key_prefix=prefix)
        other = RedisStore(redis_proc.url, key_prefix="elsewhere:")
        rec_a, rec_b = Recorder(), Recorder()
        inv_a, inv_b = rec_a.subscriber(a), rec_b.subscriber(b)
        tasks = [asyncio.create_task(inv_a.run()), asyncio.create_task(inv_b.run())]
        try:
            await asyncio.wait_for(asyncio.gather(inv_a.subscribed.wait(), inv_b.subscribed.wait()), 5)
            assert (rec_a.resyncs, rec_b.resyncs) == (1, 1)
            await a.upsert_items([Item("x", "X"), Item("y", "Y"), Item("x", "X2")])
            await a.delete_items(["y", "gone"])
            await a.forget_user("alice")
            await other.upsert_items([Item("z")])  # another deployment (prefix): not ours
            await _until(lambda: rec_b.forgotten)
            assert rec_b.items == [["x", "y"], ["y", "gone"]]
            assert rec_b.forgotten == ["alice"]
            assert inv_b.received == 3
            await asyncio.sleep(0.05)
            assert rec_a.items == [] and rec_a.forgotten == []  # its own writes: already applied
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in (a, b, other):
                await s.close()

    asyncio.run(body())


def test_item_cache_of_another_gateway_sees_an_upsert_within_a_hop(redis_proc):
    async def body():
        prefix = f"inv:{uuid.uuid4().hex[:8]}:"
        a, b = RedisStore(redis_proc.url, key_prefix=prefix), RedisStore(redis_proc.url, key_prefix=prefix)
        cache_b = ItemCache(b, 100, ttl_s=None)  # no expiry: only the message can refresh it
        inv = Invalidation(b, on_items=cache_b.invalidate, on_forget=lambda u: None, on_resync=cache_b.clear)
        task = asyncio.create_task(inv.run())
        try:
            await asyncio.wait_for(inv.subscribed.wait(), 5)
            await a.upsert_items([Item("i", "old")])
            assert (await cache_b.get_items(["i"]))["i"].title == "old"  # now cached on b
            await a.upsert_items([Item("i", "new")])
            await _until(lambda: inv.received == 2)
            assert (await cache_b.get_items(["i"]))["i"].title == "new"
            await a.delete_items(["i"])
            await _until(lambda: inv.received == 3)
            assert await cache_b.get_items(["i"]) == {}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await a.close()
            await b.close()

    asyncio.run(body())


def test_subscriber_reconnects_after_redis_restart_and_resyncs(redis_proc):
    async def body():
        prefix = f"inv:{uuid.uuid4().hex[:8]}:"
        a, b = RedisStore(redis_proc.url, key_prefix=prefix), RedisStore(redis_proc.url, key_prefix=prefix)
        rec = Recorder()
        inv = rec.subscriber(b)
        task = asyncio.create_task(inv.run())
        try:
            await asyncio.wait_for(inv.subscribed.wait(), 5)
            redis_proc.kill()
            await _until(lambda: not inv.subscribed.is_set(), 10)
            redis_proc.restart()
            await asyncio.wait_for(inv.subscribed.wait(), 10)
            assert inv.reconnects == 1 and rec.resyncs == 2  # the cache is cleared on resubscribing
            await a.upsert_items([Item("after")])
            await _until(lambda: rec.items == [["after"]])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await a.close()
            await b.close()

    asyncio.run(body())


def test_malformed_and_own_messages_are_ignored():
    class Store:
        changes_channel, instance_id = "p:invalidate", "me"

    rec = Recorder()
    inv = rec.subscriber(Store())
    for data in ("not json", "[1, 2]", '{"origin": "me", "items": ["a"]}', '{"origin": "x", "items": "a"}'):
        inv.handle(data)
    assert rec.items == [] and rec.forgotten == []
    inv.handle('{"origin": "x", "items": ["a", 7], "forget": "u"}')
    assert rec.items == [["a", "7"]] and rec.forgotten == ["u"]
