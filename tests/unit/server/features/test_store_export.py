"""``export_events`` / ``export_items`` (training on the store's own logs) on both backends:
a real SQLite file and a real ``redis-server`` (tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(ROOT))

from server.features.redis import RedisStore  # noqa: E402
from server.features.sqlite import SqliteStore  # noqa: E402
from server.types import Event, Item  # noqa: E402


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path):
    """Opens the backend (the test closes it, on its own event loop)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "store.db", history_len=5)
    proc = request.getfixturevalue("redis_proc")
    # Glob characters in the prefix must not widen the scan to other prefixes' keys.
    prefix = f"t[{uuid.uuid4().hex[:8]}]*:"
    return lambda: RedisStore(proc.url, history_len=5, key_prefix=prefix)


async def _all(gen) -> list:
    out = []
    async for batch in gen:
        assert batch  # never an empty batch
        out += batch
    return out


def test_export_returns_every_item_and_each_users_events_in_recording_order(open_store):
    async def run():
        store = open_store()
        try:
            return await body(store)
        finally:
            await store.close()

    async def body(store):
        assert await _all(store.export_events()) == [] and await _all(store.export_items()) == []
        items = [Item(f"i{n}", f"title {n}", "text", {"category": "c"}) for n in range(7)]
        await store.upsert_items(items)
        # u1: equal timestamps recorded in the order a, b, c; u2 recorded interleaved.
        await store.record_events([Event("u1", "a", "click", 10.0), Event("u2", "x", "view", 5.0, 2.5, "k1")])
        await store.record_events([Event("u1", "b", "click", 10.0), Event("u1", "c", "purchase", 9.0)])
        await store.record_events([Event("u2", "y", "view", 6.0)])
        events = await _all(store.export_events(batch=2))
        got_items = await _all(store.export_items(batch=3))
        return items, events, got_items

    items, events, got_items = asyncio.run(run())
    assert sorted(got_items, key=lambda i: i.item_id) == items
    by_user = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append((e.item_id, e.event_type, e.timestamp, e.value))
    assert by_user == {"u1": [("a", "click", 10.0, None), ("b", "click", 10.0, None), ("c", "purchase", 9.0, None)],
                       "u2": [("x", "view", 5.0, 2.5), ("y", "view", 6.0, None)]}
    assert next(e for e in events if e.item_id == "x").idempotency_key == "k1"


def test_redis_exports_only_the_retained_history(redis_proc):
    s = RedisStore(redis_proc.url, history_len=3, key_prefix=f"t{uuid.uuid4().hex[:8]}:")

    async def run():
        try:
            await s.record_events([Event("u", f"i{n}", "view", float(n)) for n in range(5)])
            return await _all(s.export_events())
        finally:
            await s.close()

    assert [e.item_id for e in asyncio.run(run())] == ["i2", "i3", "i4"]
