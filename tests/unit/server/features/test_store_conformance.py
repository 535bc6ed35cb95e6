"""One behavioural contract for every FeatureStore backend (SQLite and Redis).

Each test runs once per backend through the ``store`` / ``backend`` fixtures. The Redis
runs share one real ``redis-server`` per session, each test under its own key prefix.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(ROOT))

from server.features.redis import RedisStore  # noqa: E402
from server.features.sqlite import SqliteStore  # noqa: E402
from server.types import Event, Item, RecordResult  # noqa: E402

# -- fixtures ----------------------------------------------------------------------------


class Backend:
    """Opens store objects on one shared storage: each is a separate "gateway"."""

    def __init__(self, name: str, opener):
        self.name = name
        self._opener = opener
        self.opened: list = []

    def open(self, *, history_len: int = 20):
        store = self._opener(history_len)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path, aio):
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        b = Backend("sqlite", lambda h: SqliteStore(path, history_len=h))
    else:
        proc = request.getfixturevalue("redis_proc")
        prefix = f"test:{uuid.uuid4().hex[:12]}:"
        b = Backend("redis", lambda h: RedisStore(proc.url, history_len=h, key_prefix=prefix))
    yield b
    for store in b.opened:
        aio(store.close())


@pytest.fixture
def store(backend):
    return backend.open()


def ev(user, item, ts, key="", *, event_type="view", value=None) -> Event:
    return Event(user, item, event_type, ts, value, key)


def items_of(events) -> list[str]:
    return [e.item_id for e in events]


# -- items -------------------------------------------------------------------------------


def test_items_upsert_get_delete(store, aio):
    async def body():
        assert await store.get_items([]) == {}
        assert await store.get_items(["nope"]) == {}
        a = Item("a", "Title A", "text a", {"brand": "x", "lang": "fr"})
        b = Item("b")
        n = await store.upsert_items([a, b, Item("c", "C")])
        assert n == 3
        got = await store.get_items(["a", "b", "missing", "a"])
        assert got == {"a": a, "b": b}  # missing ids absent, duplicates collapsed

        a2 = Item("a", "Title A2", "", {"brand": "y"})
        # Create-or-replace; within one batch the last duplicate wins.
        assert await store.upsert_items([Item("a", "stale"), a2]) == 2
        assert (await store.get_items(["a"]))["a"] == a2

        assert await store.delete_items(["a", "missing", "a"]) == 1  # how many existed
        assert await store.get_items(["a", "b", "c"]) == {"b": b, "c": Item("c", "C")}
        assert await store.delete_items([]) == 0
        assert await store.upsert_items([]) == 0
        assert await store.delete_items(["a"]) == 0

    aio(body())


def test_get_items_many_and_unicode(store, aio):
    async def body():
        present = [Item(f"id-{i}", f"titre é {i}", "日本語 ✓", {"k": str(i)})
                   for i in range(0, 600, 2)]
        await store.upsert_items(present)
        got = await store.get_items([f"id-{i}" for i in range(600)])
        assert got == {i.item_id: i for i in present}

    aio(body())


# -- events ------------------------------------------------------------------------------


def test_events_newest_first_ties_later_recorded_first(store, aio):
    async def body():
        assert await store.recent_events("u", 10) == []
        assert await store.record_events([]) == RecordResult(0, 0)
        await store.record_events([ev("u", "a", 10.0), ev("u", "b", 20.0), ev("u", "c", 20.0)])
        await store.record_events([ev("u", "d", 20.0)])
        await store.record_events([ev("u", "e", 5.0)])  # recorded last, but oldest
        await store.record_events([ev("other", "z", 30.0)])
        assert items_of(await store.recent_events("u", 10)) == ["d", "c", "b", "a", "e"]
        assert items_of(await store.recent_events("u", 2)) == ["d", "c"]
        assert items_of(await store.recent_events("other", 10)) == ["z"]

    aio(body())


def test_event_fields_round_trip(store, aio):
    async def body():
        events = [
            Event("u", "a", "rating", 1732850000.1234567, 4.5, "key-1"),
            Event("u", "b", "purchase", 1732850001.0, None, ""),
            Event("u", "c", "click", 1732850002.0, 0.0, "ключ"),
        ]
        assert await store.record_events(events) == RecordResult(3, 0)
        assert await store.recent_events("u", 10) == events[::-1]

    aio(body())


def test_history_bounded_to_newest(backend, aio):
    store = backend.open(history_len=5)

    async def body():
        await store.record_events([ev("u", f"old{i}", 100.0 + i) for i in range(6)])
        for i in range(6):
            await store.record_events([ev("u", f"new{i}", 200.0 + i)])
        await store.record_events([ev("u", "ancient", 1.0)])  # older than everything kept
        await store.record_events([ev("v", "x", 1.0)])
        newest = [f"new{i}" for i in range(5, 0, -1)]
        assert items_of(await store.recent_events("u")) == newest  # default limit: history_len
        assert items_of(await store.recent_events("u", 3)) == newest[:3]
        assert items_of(await store.recent_events("u", 5)) == newest
        assert items_of(await store.recent_events("v")) == ["x"]

    aio(body())


def test_idempotency(backend, aio):
    store, other_gateway = backend.open(), backend.open()

    async def body():
        e1 = ev("u", "a", 1.0, "k1")
        assert await store.record_events([e1]) == RecordResult(1, 0)
        assert await store.record_events([e1]) == RecordResult(0, 1)
        # Another store object (another gateway) on the same backend.
        assert await other_gateway.record_events([e1]) == RecordResult(0, 1)
        # SQLite: keys are global, the same key for another user is still a duplicate;
        # Redis: keys are per user (each user's keys in its own cluster slot).
        other_user = await store.record_events([ev("v", "a", 1.0, "k1")])
        assert other_user == (RecordResult(0, 1) if backend.name == "sqlite" else RecordResult(1, 0))
        # Within one batch, the second occurrence is the duplicate.
        twice = [ev("u", "b", 2.0, "k2"), ev("u", "b2", 2.0, "k2")]
        assert await store.record_events(twice) == RecordResult(1, 1)
        # Mixed batch: old key, new key, and key-less events (never deduplicated).
        r = await other_gateway.record_events(
            [ev("u", "a", 1.0, "k1"), ev("u", "c", 3.0, "k3"), ev("u", "d", 4.0), ev("u", "d", 4.0)]
        )
        assert r == RecordResult(3, 1)
        assert items_of(await store.recent_events("u", 20)) == ["d", "d", "c", "b", "a"]
        assert items_of(await store.recent_events("v", 20)) == ([] if backend.name == "sqlite" else ["a"])

    aio(body())


def test_rejected_batch_applies_nothing(store, aio):
    async def body():
        await store.record_events([ev("u", "before", 1.0, "k0")])
        bad = Event("u", object(), "view", 3.0)  # not storable by either backend
        batch = [ev("u", "x", 2.0, "kx"), bad, ev("u", "y", 4.0, "ky")]
        with pytest.raises(Exception):
            await store.record_events(batch)
        assert items_of(await store.recent_events("u", 10)) == ["before"]
        # The failed batch consumed no idempotency key.
        assert await store.record_events([batch[0], batch[2]]) == RecordResult(2, 0)
        assert items_of(await store.recent_events("u", 10)) == ["y", "x", "before"]

    aio(body())


def test_non_finite_timestamp_rejects_whole_batch(backend, aio):
    store = backend.open()

    async def body():
        with pytest.raises(Exception):
            await store.record_events([ev("u", "x", 2.0, "kx"), ev("u", "nan", float("nan"))])
        assert await store.recent_events("u", 10) == []

    aio(body())


def test_batches_become_visible_all_at_once(backend, aio):
    writer, reader_gateway = backend.open(history_len=1000), backend.open(history_len=1000)
    batch, batches = 10, 40

    async def write():
        for b in range(batches):
            events = [ev("u", f"b{b}-{i}", float(b), f"b{b}-{i}") for i in range(batch)]
            await writer.record_events(events)
            await asyncio.sleep(0)

    async def read(store, seen: list[int]):
        while True:
            events = await store.recent_events("u", 1000)
            seen.append(len(events))
            by_batch: dict[str, int] = {}
            for e in events:
                by_batch[e.item_id.split("-")[0]] = by_batch.get(e.item_id.split("-")[0], 0) + 1
            assert set(by_batch.values()) <= {batch}, by_batch  # never half a batch
            if len(events) == batch * batches:
                return
            await asyncio.sleep(0)

    async def body():
        seen_a: list[int] = []
        seen_b: list[int] = []
        await asyncio.wait_for(
            asyncio.gather(write(), read(writer, seen_a), read(reader_gateway, seen_b)), 20
        )
        for seen in (seen_a, seen_b):
            assert seen == sorted(seen)  # read-your-writes: never goes backwards
            assert all(n % batch == 0 for n in seen)

    aio(body())


def test_concurrent_writers_and_readers_lose_nothing(backend, aio):
    # Two "gateways"; 20 writers x 50 events over 4 users, plus 5 writers replaying the
    # events (same idempotency keys) of writers 0-4 at the same time.
    gateways = [backend.open(history_len=400), backend.open(history_len=400)]
    writers, per_writer, users = 20, 50, 4
    rng = random.Random(7)

    def events_of(w: int) -> list[Event]:
        # Timestamps collide across writers on purpose (ties).
        return [ev(f"u{w % users}", f"w{w}-{i}", 1000.0 + i, f"w{w}-{i}") for i in range(per_writer)]

    async def write(w: int, replay: bool = False) -> RecordResult:
        store = gateways[(w + replay) % 2]
        events = events_of(w)
        accepted = duplicates = 0
        i = 0
        while i < len(events):
            n = rng.randint(1, 5)
            r = await store.record_events(events[i:i + n])
            accepted, duplicates = accepted + r.accepted, duplicates + r.duplicates
            i += n
        return RecordResult(accepted, duplicates)

    done = asyncio.Event()

    async def read(store, user: str) -> int:
        reads, last = 0, 0
        while not done.is_set():
            events = await store.recent_events(user, 400)
            keys = [(e.timestamp) for e in events]
            assert keys == sorted(keys, reverse=True)
            assert len({e.idempotency_key for e in events}) == len(events)
            assert len(events) >= last
            last, reads = len(events), reads + 1
            await asyncio.sleep(0.001)
        return reads

    async def body():
        readers = [asyncio.create_task(read(gateways[i % 2], f"u{i % users}")) for i in range(4)]
        results = await asyncio.wait_for(
            asyncio.gather(*[write(w) for w in range(writers)], *[write(w, True) for w in range(5)]), 30
        )
        done.set()
        assert all(n > 0 for n in await asyncio.gather(*readers))
        for w in range(writers):
            runs = [results[w]] + ([results[writers + w]] if w < 5 else [])
            assert sum(r.accepted for r in runs) == per_writer  # each key applied exactly once
            assert sum(r.duplicates for r in runs) == per_writer * (len(runs) - 1)
        for u in range(users):
            for store in gateways:
                events = await store.recent_events(f"u{u}", 400)
                want = {e.idempotency_key for w in range(u, writers, users) for e in events_of(w)}
                assert len(events) == len(want) == (writers // users) * per_writer
                assert {e.idempotency_key for e in events} == want

    aio(body())


def test_two_gateways_read_your_writes(backend, aio):
    a, b = backend.open(), backend.open()

    async def body():
        await a.upsert_items([Item("i1", "one")])
        assert (await b.get_items(["i1"]))["i1"].title == "one"
        await b.upsert_items([Item("i1", "uno")])
        assert (await a.get_items(["i1"]))["i1"].title == "uno"
        await b.delete_items(["i1"])
        assert await a.get_items(["i1"]) == {}
        for i in range(20):
            await (a if i % 2 else b).record_events([ev("u", f"x{i}", float(i))])
            reader = b if i % 2 else a
            assert items_of(await reader.recent_events("u", 1)) == [f"x{i}"]

    aio(body())


# -- Redis only --------------------------------------------------------------------------


def test_redis_key_prefix_isolates_deployments(redis_proc, aio):
    async def body():
        p1, p2 = f"t:{uuid.uuid4().hex[:8]}:", f"t:{uuid.uuid4().hex[:8]}:"
        s1 = RedisStore(redis_proc.url, key_prefix=p1)
        s2 = RedisStore(redis_proc.url, key_prefix=p2)
        s1_by_url = RedisStore(f"{redis_proc.url}?key_prefix={p1}")
        try:
            assert s1_by_url.prefix == p1
            await s1.upsert_items([Item("a", "A")])
            await s1.record_events([ev("u", "a", 1.0, "k")])
            assert await s2.get_items(["a"]) == {}
            assert await s2.recent_events("u") == []
            assert await s2.record_events([ev("u", "a", 1.0, "k")]) == RecordResult(1, 0)
            assert (await s1_by_url.get_items(["a"]))["a"].title == "A"
            assert await s1_by_url.record_events([ev("u", "a", 1.0, "k")]) == RecordResult(0, 1)
            keys = await s1._r.keys("*")
            assert all(k.startswith((p1, p2)) or not k.startswith("t:") for k in keys)
        finally:
            for s in (s1, s2, s1_by_url):
                await s.close()

    aio(body())


def test_redis_storage_is_bounded_and_keys_expire(redis_proc, aio):
    async def body():
        s = RedisStore(redis_proc.url, history_len=3, key_prefix=f"t:{uuid.uuid4().hex[:8]}:",
                       idempotency_ttl_s=3600)
        try:
            for i in range(10):
                await s.record_events([ev("u", f"x{i}", float(i), f"k{i}")])
            assert await s._r.zcard(f"{s.prefix}ev:{{u}}") == 3  # key layout v2, spelled out
            assert 3500 < await s._r.ttl(f"{s.prefix}idem:{{u}}:k0") <= 3600
            # The script is reloaded transparently after the server forgets it.
            await s._r.script_flush()
            assert await s.record_events([ev("u", "y", 20.0)]) == RecordResult(1, 0)
            with pytest.raises(ValueError):
                RedisStore(redis_proc.url, history_len=0)
        finally:
            await s.close()

    aio(body())


# -- forgetting a user (ForgetUser) ------------------------------------------------------


def test_forget_user_erases_events_and_their_idempotency_keys(backend, aio):
    store, other_gateway = backend.open(), backend.open()

    async def body():
        await store.record_events([ev("alice", "a", 1.0, "alice-1"), ev("alice", "b", 2.0, "alice-2"),
                                   ev("alice", "c", 3.0), ev("bob", "a", 1.0, "bob-1")])
        assert await store.forget_user("alice") == 3
        assert await store.recent_events("alice", 10) == []
        assert await other_gateway.recent_events("alice", 10) == []  # every gateway, at once
        assert items_of(await store.recent_events("bob", 10)) == ["a"]
        assert await store.forget_user("alice") == 0  # idempotent
        assert await other_gateway.forget_user("nobody") == 0
        # The user's idempotency keys went with the events; other users' stay.
        assert await store.record_events([ev("alice", "a", 1.0, "alice-1")]) == RecordResult(1, 0)
        assert await store.record_events([ev("bob", "a", 1.0, "bob-1")]) == RecordResult(0, 1)
        assert items_of(await other_gateway.recent_events("alice", 10)) == ["a"]

    aio(body())


def test_sqlite_forget_leaves_no_trace_in_the_files(tmp_path, aio):
    path = tmp_path / "store.db"
    user = "person-7f3c-erase-me"

    async def body():
        store = SqliteStore(path)
        try:
            await store.record_events([ev(user, f"item{i}", float(i), f"{user}-key-{i}") for i in range(50)]
                                      + [ev("bob", "a", 1.0, "bob-1")])
            assert await store.forget_user(user) == 50
            # Read while the store is open: closing the last connection checkpoints anyway.
            return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("store.db"))
        finally:
            await store.close()

    on_disk = aio(body())
    assert user.encode() not in on_disk  # rows, index entries and the write-ahead log
    assert b"bob-1" in on_disk  # ...while the other user's rows are still there


def test_redis_forget_leaves_no_key_naming_the_user(redis_proc, aio):
    async def body():
        prefix = f"t:{uuid.uuid4().hex[:8]}:"
        s = RedisStore(redis_proc.url, history_len=2, key_prefix=prefix)
        try:
            # Five keyed events, of which the history keeps two: the other three idempotency
            # keys are found through the user's index, not the history.
            await s.record_events([ev("alice", f"i{i}", float(i), f"alice-order-{i}") for i in range(5)])
            await s.record_events([ev("bob", "i0", 1.0, "bob-order-0")])
            assert any("alice" in k for k in await s._r.keys(prefix + "*"))
            assert await s.forget_user("alice") == 2  # Redis keeps history_len events per user
            left = await s._r.keys(prefix + "*")
            assert not [k for k in left if "alice" in k], left
            assert s._idem_key("bob", "bob-order-0") in left and s._ev_key("bob") in left
            assert await s.forget_user("alice") == 0

            # Keys recorded before the index existed: found through the history's payloads.
            await s.record_events([ev("carol", "i1", 1.0, "carol-1")])
            await s._r.delete(s._user_idem_key("carol"))
            assert await s.forget_user("carol") == 1
            assert not [k for k in await s._r.keys(prefix + "*") if "carol" in k]
        finally:
            await s.close()

    aio(body())


def test_redis_user_idempotency_index_is_pruned_and_expires(redis_proc, aio):
    async def body():
        s = RedisStore(redis_proc.url, key_prefix=f"t:{uuid.uuid4().hex[:8]}:", idempotency_ttl_s=3600)
        try:
            await s.record_events([ev("u", "a", 1.0, "k1")])
            index = s._user_idem_key("u")
            assert await s._r.zrange(index, 0, -1) == [s._idem_key("u", "k1")]
            assert 3500 < await s._r.ttl(index) <= 3600
            # An entry whose key has expired is pruned by the user's next keyed event.
            await s._r.zadd(index, {s._idem_key("u", "old"): 1.0})
            await s.record_events([ev("u", "b", 2.0, "k2")])
            assert sorted(await s._r.zrange(index, 0, -1)) == [s._idem_key("u", "k1"), s._idem_key("u", "k2")]
        finally:
            await s.close()

    aio(body())
