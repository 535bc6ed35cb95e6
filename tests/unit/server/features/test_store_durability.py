"""Acknowledged writes survive a SIGKILL, and a batch cut short by one is all or none.

Redis: ``redis-server`` (AOF, ``appendfsync always``) is killed while a writer streams
batches, then restarted on the same directory. SQLite: a child process streams batches,
printing "acked <n>" after each, and is killed mid-stream. These kill processes; they
do not simulate a power cut (data in the OS page cache survives a process kill).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(ROOT))

from server.features.redis import RedisStore  # noqa: E402
from server.features.sqlite import SqliteStore  # noqa: E402
from server.types import Event, Item, RecordResult  # noqa: E402
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis  # noqa: E402

BATCH = 10


def batch_events(b: int) -> list[Event]:
    return [Event("u", f"b{b}-{i}", "view", float(b), None, f"b{b}-{i}") for i in range(BATCH)]


def check_after_crash(events: list[Event], acked: int) -> None:
    """Every acked batch is present; any batch present is complete."""
    per_batch: dict[int, int] = {}
    for e in events:
        b = int(e.item_id[1:].split("-")[0])
        per_batch[b] = per_batch.get(b, 0) + 1
    assert all(n == BATCH for n in per_batch.values()), per_batch
    lost = set(range(acked)) - set(per_batch)
    assert not lost, f"lost acked batches: {sorted(lost)}"
    assert set(per_batch) <= set(range(acked + 1))  # at most the one in flight besides


def test_redis_acked_writes_survive_sigkill(tmp_path):
    try:
        proc = start_redis(tmp_path / "redis", appendonly=True)
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    try:
        asyncio.run(_redis_crash(proc))
    finally:
        proc.stop()


async def _redis_crash(proc) -> None:
    store = RedisStore(proc.url, history_len=1000)
    await store.upsert_items([Item("i1", "one", "", {"a": "b"})])
    acked = 0
    killed = asyncio.Event()

    async def stream():
        nonlocal acked
        b = 0
        while True:
            await store.record_events(batch_events(b))
            acked = b = b + 1
            if b == 30:
                killed.set()  # the killer runs while the next batches are in flight

    async def kill_soon():
        await killed.wait()
        await asyncio.sleep(0.005)
        proc.kill()

    with pytest.raises(Exception):  # the writer fails once the server is gone
        await asyncio.wait_for(asyncio.gather(stream(), kill_soon()), 20)
    assert acked >= 30
    proc.restart()
    # A new store, and the old one (its pooled connections died with the server).
    fresh = RedisStore(proc.url, history_len=1000)
    try:
        for s in (fresh, store):
            events = await s.recent_events("u", 1000)
            check_after_crash(events, acked)
            assert (await s.get_items(["i1"]))["i1"] == Item("i1", "one", "", {"a": "b"})
            # Idempotency keys survived too.
            assert await s.record_events(batch_events(0)) == RecordResult(0, BATCH)
    finally:
        await fresh.close()
        await store.close()


_SQLITE_WRITER = textwrap.dedent("""
    import asyncio, sys
    from server.features.sqlite import SqliteStore
    from server.types import Event, Item

    async def main(path):
        store = SqliteStore(path, history_len=1000)
        await store.upsert_items([Item("i1", "one", "", {"a": "b"})])
        b = 0
        while True:
            await store.record_events(
                [Event("u", f"b{b}-{i}", "view", float(b), None, f"b{b}-{i}") for i in range(%d)]
            )
            b += 1
            print("acked", b, flush=True)

    asyncio.run(main(sys.argv[1]))
""" % BATCH)


def test_sqlite_acked_writes_survive_sigkill(tmp_path):
    path = tmp_path / "store.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _SQLITE_WRITER, str(path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked = 0
    try:
        deadline = time.monotonic() + 20
        for line in child.stdout:  # the child keeps writing after each ack
            assert line.startswith("acked "), line
            acked = int(line.split()[1])
            if acked >= 30 or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        for line in child.stdout:  # acks already in the pipe when the kill landed
            acked = int(line.split()[1])
    finally:
        if child.poll() is None:
            child.kill()
        err = child.stderr.read()
        child.stdout.close()
        child.stderr.close()
    assert acked >= 30, f"child acked only {acked} batches: {err}"

    async def check():
        store = SqliteStore(path, history_len=1000)
        try:
            check_after_crash(await store.recent_events("u", 1000), acked)
            assert (await store.get_items(["i1"]))["i1"] == Item("i1", "one", "", {"a": "b"})
            assert await store.record_events(batch_events(0)) == RecordResult(0, BATCH)
        finally:
            await store.close()

    asyncio.run(check())
