"""Embedded SQLite feature store (the zero-setup default).

WAL mode with ``synchronous=FULL``: an acknowledged write survives a killed process and a
power cut. Writes go through one connection behind a lock, in a worker thread, so the
event loop never waits on an fsync. Reads (the hot path: a few indexed lookups per
request) run inline on a second connection: in WAL mode readers never wait for the writer,
and a thread hand-off would cost more than the query (measured: p99 0.36 ms vs 0.13 ms
quiet, 3.9 ms vs 0.02 ms under load). A read after an awaited write sees that write.

Erasure (``forget_user``): ``secure_delete`` zeroes deleted rows in the database file, and a
checkpoint afterwards truncates the write-ahead log, which still holds earlier page images.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from server.features.base import IMPRESSION_RETENTION_S
from server.types import Event, Impression, Item, RecordResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id    TEXT PRIMARY KEY,
    title      TEXT NOT NULL DEFAULT '',
    text       TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts         REAL NOT NULL,
    value      REAL,
    idem_key   TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts DESC, seq DESC);
CREATE TABLE IF NOT EXISTS impressions (
    request_id    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    degraded      TEXT NOT NULL DEFAULT '',
    item_ids      TEXT NOT NULL,
    ts            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_by_ts ON impressions (ts);
CREATE INDEX IF NOT EXISTS impressions_by_user ON impressions (user_id);
"""

# Run after ``_SCHEMA`` on a file written before events had a request_id (see ``_migrate``).
_AFTER_MIGRATION = """
CREATE INDEX IF NOT EXISTS events_by_request ON events (request_id) WHERE request_id IS NOT NULL;
"""


class SqliteStore:
    """``FeatureStore`` over one SQLite file."""

    def __init__(self, path: str | Path, *, history_len: int = 20,
                 impression_retention_s: float = IMPRESSION_RETENTION_S):
        self.path = Path(path)
        self.history_len = history_len
        self.impression_retention_s = impression_retention_s
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._setup()
        # Used only from the event loop's thread (reads); ":memory:" has a single database.
        self._read = self._db if str(self.path) == ":memory:" else sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None)

    def _setup(self, attempts: int = 50) -> None:
        """WAL mode, durability and the schema. Several processes opening one new file at once
        (``serve --workers N``) can find it locked while another switches it to WAL, which
        SQLite reports at once rather than through the busy timeout: retry for a few seconds."""
        for attempt in range(attempts):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
                self._db.executescript(_SCHEMA)
                self._migrate()
                self._db.executescript(_AFTER_MIGRATION)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def _migrate(self) -> None:
        """Columns added since a database file may have been created."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "request_id" not in columns:
            try:
                self._db.execute("ALTER TABLE events ADD COLUMN request_id TEXT")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise

    async def _run(self, fn, *args):
        return await asyncio.to_thread(self._locked, fn, *args)

    def _reading(self, fn, *args):
        if self._read is self._db:  # ":memory:": one shared connection, so take the lock
            return self._locked(fn, *args)
        return fn(*args)

    def _locked(self, fn, *args):
        with self._lock:
            return fn(*args)

    # -- items -----------------------------------------------------------------------
    def _get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), 500):  # stay under SQLite's variable limit
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._read.execute(
                f"SELECT item_id, title, text, attributes FROM items WHERE item_id IN ({marks})", chunk
            )
            for item_id, title, text, attrs in rows:
                out[item_id] = Item(item_id, title, text, json.loads(attrs))
        return out

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        return self._reading(self._get_items, item_ids)

    def _upsert(self, items: Sequence[Item]) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO items (item_id, title, text, attributes) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(item_id) DO UPDATE SET title=excluded.title, text=excluded.text, "
                "attributes=excluded.attributes",
                [(i.item_id, i.title, i.text, json.dumps(i.attributes, sort_keys=True)) for i in items],
            )
        return len(items)

    async def upsert_items(self, items: Sequence[Item]) -> int:
        return await self._run(self._upsert, items) if items else 0

    def _delete(self, item_ids: Sequence[str]) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM items WHERE item_id = ?", [(i,) for i in item_ids])
        return cur.rowcount

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        return await self._run(self._delete, item_ids) if item_ids else 0

    # -- events ----------------------------------------------------------------------
    def _record(self, events: Sequence[Event]) -> RecordResult:
        accepted = 0
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for e in events:
                cur = self._db.execute(
                    # Only an idempotency-key conflict is ignored; any other violation
                    # (NOT NULL...) raises and rolls the whole batch back.
                    "INSERT INTO events (user_id, item_id, event_type, ts, value, idem_key, request_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(idem_key) DO NOTHING",
                    (e.user_id, e.item_id, e.event_type, e.timestamp, e.value, e.idempotency_key or None,
                     e.request_id or None),
                )
                accepted += cur.rowcount
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        if not events:
            return RecordResult(0, 0)
        return await self._run(self._record, events)

    def _recent(self, user_id: str, limit: int) -> list[Event]:
        rows = self._read.execute(
            "SELECT user_id, item_id, event_type, ts, value, COALESCE(idem_key, ''), COALESCE(request_id, '') "
            "FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, limit),
        )
        return [Event(*row) for row in rows]

    async def recent_events(self, user_id: str, limit: int | None = None) -> list[Event]:
        return self._reading(self._recent, user_id, limit or self.history_len)

    def _forget(self, user_id: str) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            # The idempotency keys live in the rows, so they go with them.
            cur = self._db.execute("DELETE FROM events WHERE user_id = ?", (user_id,))
            removed = cur.rowcount
            self._db.execute("DELETE FROM impressions WHERE user_id = ?", (user_id,))
        return removed

    def _truncate_wal(self) -> None:
        """Best effort: copy the log into the file and empty it. Its own connection, so the
        writer lock is not held while it waits for readers (other gateway processes)."""
        db = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=1000")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass  # busy: the log is reused (overwritten) from its start after the next checkpoint
        finally:
            db.close()

    async def forget_user(self, user_id: str) -> int:
        removed = await self._run(self._forget, user_id)
        if removed and str(self.path) != ":memory:":
            await asyncio.to_thread(self._truncate_wal)
        return removed

    # -- impressions (online evaluation) -----------------------------------------------
    def _record_impressions(self, impressions: Sequence[Impression]) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO impressions (request_id, user_id, model_name, model_version, degraded, "
                "item_ids, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.request_id, i.user_id, i.model_name, i.model_version, i.degraded_reason,
                  json.dumps(list(i.item_ids)), i.timestamp) for i in impressions])
            # Retention: what is past it goes with the next write (the ts index finds it).
            self._db.execute("DELETE FROM impressions WHERE ts < ?", (time.time() - self.impression_retention_s,))
        return len(impressions)

    async def record_impressions(self, impressions: Sequence[Impression]) -> int:
        return await self._run(self._record_impressions, impressions) if impressions else 0

    def _export_impressions(self, since: float) -> list[Impression]:
        rows = self._db.execute(
            "SELECT request_id, user_id, model_name, model_version, item_ids, ts, degraded FROM impressions "
            "WHERE ts >= ? ORDER BY ts", (since,))
        return [Impression(rid, user, name, version, tuple(json.loads(ids)), ts, degraded)
                for rid, user, name, version, ids, ts, degraded in rows]

    async def export_impressions(self, since: float = 0.0) -> list[Impression]:
        # Past retention but not yet pruned (no write since): gone, as on Redis.
        return await self._run(self._export_impressions, max(since, time.time() - self.impression_retention_s))

    def _export_attributed(self, since: float) -> list[Event]:
        rows = self._db.execute(
            "SELECT user_id, item_id, event_type, ts, value, COALESCE(idem_key, ''), request_id FROM events "
            "WHERE request_id IS NOT NULL AND ts >= ? ORDER BY ts, seq", (since,))
        return [Event(*row) for row in rows]

    async def export_attributed_events(self, since: float = 0.0) -> list[Event]:
        return await self._run(self._export_attributed, since)

    # -- offline export (training on the store's own logs) ---------------------------------
    def _events_after(self, seq: int, batch: int) -> list[tuple]:
        return self._read.execute(
            "SELECT seq, user_id, item_id, event_type, ts, value, COALESCE(idem_key, '') FROM events "
            "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, batch)).fetchall()

    async def export_events(self, batch: int = 10_000):
        """Every event, oldest-recorded (lowest ``seq``) first, in lists of up to ``batch``."""
        last = 0
        while rows := self._reading(self._events_after, last, batch):
            last = rows[-1][0]
            yield [Event(user, item, etype, ts, value, key) for _, user, item, etype, ts, value, key in rows]

    def _items_after(self, item_id: str, batch: int) -> list[tuple]:
        return self._read.execute(
            "SELECT item_id, title, text, attributes FROM items WHERE item_id > ? ORDER BY item_id LIMIT ?",
            (item_id, batch)).fetchall()

    async def export_items(self, batch: int = 10_000):
        """Every item, by ``item_id`` (text order), in lists of up to ``batch``."""
        last = ""
        while rows := self._reading(self._items_after, last, batch):
            last = rows[-1][0]
            yield [Item(i, title, text, json.loads(attrs)) for i, title, text, attrs in rows]

    async def close(self) -> None:
        with self._lock:
            if self._read is not self._db:
                self._read.close()
            self._db.close()
