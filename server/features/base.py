"""The feature-store contract shared by the SQLite and Redis backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.types import Event, Item, RecordResult


class FeatureStore(Protocol):
    """Async interface; every method is safe to call concurrently.

    Durability: when ``record_events`` / ``upsert_items`` return, the write is durable
    (SQLite: committed in WAL mode; Redis: per the server's AOF setting) and visible to
    the next ``recent_items`` / ``get_items`` call, from any gateway sharing the store.
    """

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """Items found, by id; missing ids are absent from the result."""

    async def upsert_items(self, items: Sequence[Item]) -> int:
        """Create or replace items; returns how many were written."""

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        """Delete items; returns how many existed."""

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        """Append events atomically (all or none); a repeated idempotency key is not applied twice."""

    async def recent_events(self, user_id: str, limit: int) -> list[Event]:
        """The user's most recent events, newest first (ties: later-recorded first)."""

    async def forget_user(self, user_id: str) -> int:
        """Erase everything stored under the user (events, history, the idempotency keys of
        its events) in one transaction; returns how many events were removed (0 when none:
        idempotent)."""

    async def close(self) -> None:
        """Release connections."""


def open_store(url: str, *, history_len: int = 20) -> FeatureStore:
    """Open the backend named by ``url``: ``sqlite:///relative/path``, ``sqlite:////absolute/path``
    (the usual SQLite URL convention) or ``redis://host:port/db``."""
    if url.startswith("sqlite:///"):
        from server.features.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), history_len=history_len)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from server.features.redis import RedisStore

        return RedisStore(url, history_len=history_len)
    raise ValueError(f"unsupported store url {url!r} (expected sqlite:///... or redis://...)")
