"""The feature-store contract shared by the SQLite and Redis backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from server.types import Event, Impression, Item, RecordResult


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
        """Append events atomically: all or none (Redis Cluster: all or none per user, the users
        of a batch independently); an idempotency key repeated for the same user is not applied
        twice (SQLite: keys are global, the same key for another user is a duplicate too)."""

    async def recent_events(self, user_id: str, limit: int) -> list[Event]:
        """The user's most recent events, newest first (ties: later-recorded first)."""

    async def forget_user(self, user_id: str) -> int:
        """Erase everything stored under the user (events, history, the idempotency keys of
        its events, its impressions) in one transaction; returns how many events were removed (0 when none:
        idempotent)."""

    async def record_impressions(self, impressions: Sequence[Impression]) -> int:
        """Store what Rerank replies showed (online evaluation), kept the store's
        ``impression_retention_s``; a repeated request id replaces the earlier impression.
        Returns how many were written."""

    async def export_impressions(self, since: float = 0.0) -> list[Impression]:
        """The impressions still kept that were shown at or after ``since`` (Unix seconds)."""

    async def export_attributed_events(self, since: float = 0.0) -> list[Event]:
        """Events that carry a ``request_id``, at or after ``since`` (an event sent twice may
        appear twice on Redis, where idempotency is the history's: the report dedupes)."""

    def export_events(self, batch: int = 10_000) -> AsyncIterator[list[Event]]:
        """Every stored event in lists of up to ``batch`` (offline: training on the gateway's
        own logs); each user's events oldest-recorded first (the order that breaks equal
        timestamps), users in the backend's order. Redis holds each user's newest
        ``history_len`` events only, so that is all it exports."""

    def export_items(self, batch: int = 10_000) -> AsyncIterator[list[Item]]:
        """Every stored item, in lists of up to ``batch`` (offline)."""

    async def close(self) -> None:
        """Release connections."""


# How long impressions (online evaluation) are kept unless the store is told otherwise.
IMPRESSION_RETENTION_S = 30 * 24 * 3600.0


def open_store(url: str, *, history_len: int = 20,
               impression_retention_s: float = IMPRESSION_RETENTION_S) -> FeatureStore:
    """Open the backend named by ``url``: ``sqlite:///relative/path``, ``sqlite:////absolute/path``
    (the usual SQLite URL convention) or ``redis://host:port/db``."""
    if url.startswith("sqlite:///"):
        from server.features.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), history_len=history_len,
                           impression_retention_s=impression_retention_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from server.features.redis import RedisStore

        return RedisStore(url, history_len=history_len, impression_retention_s=impression_retention_s)
    raise ValueError(f"unsupported store url {url!r} (expected sqlite:///... or redis://...)")
