"""Impressions and events with a request id (online evaluation) on both backends: SQLite and a
real ``redis-server``; the SQLite migration of a database file from before ``request_id``."""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest

from server.features.redis import RedisStore
from server.features.sqlite import SqliteStore
from server.types import Event, Impression


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path, aio):
    """Opens stores on one shared storage (each a separate "gateway")."""
    opened = []
    if request.param == "sqlite":
        def opener(**kw):
            return SqliteStore(tmp_path / "store.db", **kw)
    else:
        proc = request.getfixturevalue("redis_proc")
        prefix = f"test:{uuid.uuid4().hex[:12]}:"

        def opener(**kw):
            return RedisStore(proc.url, key_prefix=prefix, **kw)

    def open_(**kw):
        store = opener(**kw)
        opened.append(store)
        return store

    open_.backend = request.param
    yield open_
    for store in opened:
        aio(store.close())


def imp(rid, user, ts, items=("a", "b", "c"), version="1", degraded=""):
    return Impression(rid, user, "reranker", version, tuple(items), ts, degraded)


def test_impressions_round_trip_and_since(open_store, aio):
    store = open_store()
    now = time.time()
    rows = [imp("r1", "u1", now - 7200), imp("r2", "u2", now - 60, items=("x",), version="2", degraded="deadline")]
    assert aio(store.record_impressions(rows)) == 2
    other = open_store()  # another gateway reads what this one wrote
    assert aio(other.export_impressions()) == rows
    assert [i.request_id for i in aio(other.export_impressions(since=now - 3600))] == ["r2"]
    # A repeated request id replaces the earlier impression.
    aio(store.record_impressions([imp("r1", "u1", now - 30, items=("z",))]))
    assert [(i.request_id, i.item_ids) for i in aio(other.export_impressions())] == [("r2", ("x",)), ("r1", ("z",))]


def test_events_keep_their_request_id(open_store, aio):
    store = open_store()
    now = time.time()
    aio(store.record_impressions([imp("r1", "u1", now - 10)]))
    events = [Event("u1", "b", "click", now - 5, None, "k1", "r1"), Event("u1", "c", "view", now - 4)]
    aio(store.record_events(events))
    # The history reads them back, request id included (the Redis payload's sixth field).
    assert [(e.item_id, e.request_id) for e in aio(store.recent_events("u1", 5))] == [("c", ""), ("b", "r1")]
    [got] = aio(store.export_attributed_events())
    assert (got.user_id, got.item_id, got.event_type, got.idempotency_key, got.request_id) == ("u1", "b", "click",
                                                                                               "k1", "r1")
    assert got.timestamp == pytest.approx(now - 5)
    assert aio(store.export_attributed_events(since=now)) == []


def test_retention_bounds_what_is_kept(open_store, aio):
    store = open_store(impression_retention_s=3600)
    now = time.time()
    aio(store.record_impressions([imp("old", "u1", now - 7200), imp("new", "u1", now - 60)]))
    assert [i.request_id for i in aio(store.export_impressions())] == ["new"]


def test_forget_user_erases_the_users_impressions_and_their_events(open_store, aio):
    store = open_store()
    now = time.time()
    aio(store.record_impressions([imp("r1", "u1", now - 10), imp("r2", "u2", now - 10)]))
    aio(store.record_events([Event("u1", "a", "click", now - 5, None, "", "r1"),
                             Event("u2", "a", "click", now - 5, None, "", "r2")]))
    assert aio(store.forget_user("u1")) == 1
    assert [i.request_id for i in aio(store.export_impressions())] == ["r2"]
    assert [e.user_id for e in aio(store.export_attributed_events())] == ["u2"]
    assert aio(store.forget_user("u1")) == 0  # idempotent


def test_redis_impression_keys_expire_and_name_no_user_after_forget(redis_proc, aio):
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    store = RedisStore(redis_proc.url, key_prefix=prefix, impression_retention_s=600)
    try:
        now = time.time()
        aio(store.record_impressions([imp("r1", "secret-user", now)]))
        aio(store.record_events([Event("secret-user", "a", "click", now, None, "", "r1")]))
        keys = aio(store._r.keys(prefix + "*"))
        imp_keys = [k for k in keys if ":imp" in k or ":uimp" in k]
        assert len(imp_keys) == 4  # the impression, its events, the day index, the user's index
        for k in imp_keys:
            assert 0 < aio(store._r.ttl(k)) <= 600 + 86400
        aio(store.forget_user("secret-user"))
        left = aio(store._r.keys(prefix + "*"))
        assert not [k for k in left if "secret-user" in k or ":imp:" in k or ":impev:" in k]
        assert all(aio(store._r.zcard(k)) == 0 for k in left if ":impday:" in k)
    finally:
        aio(store.close())


def test_sqlite_migrates_a_file_from_before_request_id(tmp_path, aio):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE items (item_id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '',
                            text TEXT NOT NULL DEFAULT '', attributes TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
                             item_id TEXT NOT NULL, event_type TEXT NOT NULL, ts REAL NOT NULL,
                             value REAL, idem_key TEXT UNIQUE);
        INSERT INTO events (user_id, item_id, event_type, ts) VALUES ('u1', 'a', 'view', 1.0);
    """)
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        assert [e.item_id for e in aio(store.recent_events("u1", 5))] == ["a"]  # old rows kept
        aio(store.record_events([Event("u1", "b", "click", 2.0, None, "", "r9")]))
        assert [e.request_id for e in aio(store.export_attributed_events())] == ["r9"]
    finally:
        aio(store.close())
    SqliteStore(path)  # opening a migrated file again changes nothing
    cols = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(events)")]
    assert cols.count("request_id") == 1
