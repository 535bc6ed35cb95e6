"""``RedisStore`` with Redis down: typed ``Unavailable`` errors, then reconnection by itself.

A real ``redis-server`` (tests/redis_server.py), SIGKILLed and restarted on its directory and
port; the gateway-level chaos test is tests/integration/test_chaos_redis.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from server.errors import Unavailable
from server.features.redis import RedisStore
from server.types import Event, Item
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis


def _redis(tmp_path, **kw):
    try:
        return start_redis(tmp_path / "redis", **kw)
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _every_method(store: RedisStore) -> list[Exception | object]:
    calls = [
        store.get_items(["a"]),
        store.upsert_items([Item("a", "A")]),
        store.delete_items(["a"]),
        store.record_events([Event("u", "a", "click", 1.0, None, "k1")]),
        store.recent_events("u", 5),
    ]
    return list(await asyncio.gather(*calls, return_exceptions=True))


def test_every_method_raises_unavailable_when_nothing_listens():
    async def run():
        store = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0")
        try:
            return await _every_method(store)
        finally:
            await store.close()

    results = asyncio.run(run())
    assert all(isinstance(r, Unavailable) for r in results), results
    assert all(r.status == "UNAVAILABLE" and "feature store (redis) unavailable" in str(r) for r in results)


def test_killed_then_restarted_redis_fails_typed_then_serves_again_with_acked_writes(tmp_path):
    proc = _redis(tmp_path)

    async def run():
        store = RedisStore(proc.url, history_len=100)
        try:
            acked = await store.record_events([Event("u", "a", "click", 1.0, None, "before")])
            proc.kill()
            down = await _every_method(store)
            proc.restart()
            # The pool's dead connections are replaced by itself: no new store, no error.
            after = await store.record_events([Event("u", "b", "click", 2.0, None, "after")])
            return acked, down, after, await store.recent_events("u", 100)
        finally:
            await store.close()

    try:
        acked, down, after, events = asyncio.run(run())
    finally:
        proc.stop()
    assert acked.accepted == 1 and after.accepted == 1
    assert all(isinstance(r, Unavailable) for r in down), down
    assert [e.idempotency_key for e in events] == ["after", "before"]


def test_non_durable_redis_is_reported_and_durable_redis_is_not(tmp_path):
    async def problem(url):
        store = RedisStore(url)
        try:
            return await store.durability_problem()
        finally:
            await store.close()

    lax = _redis(tmp_path / "lax", appendonly=False)
    strict = _redis(tmp_path / "strict", appendonly=True)
    try:
        lax_problem, strict_problem = asyncio.run(problem(lax.url)), asyncio.run(problem(strict.url))
    finally:
        lax.stop()
        strict.stop()
    assert lax_problem is not None and "appendonly=no" in lax_problem and "appendfsync always" in lax_problem
    assert strict_problem is None


def test_request_errors_are_not_reported_as_unavailable(tmp_path):
    proc = _redis(tmp_path)

    async def run():
        store = RedisStore(proc.url)
        try:
            # Redis answers WRONGTYPE: an error of the data, not Redis down.
            await store._r.set(store._ev_key("u"), "not a sorted set")
            return await store.record_events([Event("u", "a", "click", 1.0, None, "")])
        finally:
            await store.close()

    try:
        with pytest.raises(Exception) as info:
            asyncio.run(run())
    finally:
        proc.stop()
    assert not isinstance(info.value, Unavailable) and "WRONGTYPE" in str(info.value)
