"""Load MovieLens-100K items and ratings into a feature store (the demo's data).

``python -m interactions.to_store --store sqlite:///var/features.db --upto test``
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from contract.items import Item
from interactions.movielens import Split, load_items
from server.features.base import FeatureStore
from server.types import Event


async def load_into_store(
    store: FeatureStore,
    folder: Path | None,
    split: Split,
    *,
    upto: Literal["valid", "test", "all"] = "test",
    batch: int = 5000,
    items: Sequence[Item] | None = None,
    log: Callable[[str], object] = print,
) -> dict[str, int]:
    """Upsert every item of ``folder`` (or ``items``, another source's catalogue) and record
    users' ratings as ``rating`` events.

    ``upto='valid'`` records train interactions only (a served history then equals
    ``split.history(u, 'valid')``), ``'test'`` train + valid, ``'all'`` everything.
    Idempotent: events carry the key ``ml100k:{user}:{item}:{ts}``, so a rerun adds nothing.
    Returns counts: items, events, accepted, duplicates.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    items = list(items) if items is not None else load_items(folder)
    for start in range(0, len(items), batch):
        await store.upsert_items(items[start:start + batch])
    log(f"[ml-100k] items {len(items)}/{len(items)}")

    # split.interactions() is in (timestamp, row) order. Recording in that order matters:
    # stores break equal timestamps by "later-recorded first", which then matches the
    # split's row-order tie-break (415 users' last two ratings share a timestamp).
    rows = split.interactions(upto)
    events = [
        Event(x.user_id, x.item_id, "rating", float(x.timestamp), x.rating,
              f"ml100k:{x.user_id}:{x.item_id}:{x.timestamp}")
        for x in rows
    ]
    accepted = duplicates = 0
    for start in range(0, len(events), batch):
        res = await store.record_events(events[start:start + batch])
        accepted += res.accepted
        duplicates += res.duplicates
        log(f"[ml-100k] events {min(start + batch, len(events))}/{len(events)}")
    log(f"[ml-100k] loaded upto={upto}: {len(items)} items, {accepted} new events, {duplicates} already present")
    return {"items": len(items), "events": len(events), "accepted": accepted, "duplicates": duplicates}


def main(argv: list[str] | None = None) -> None:
    import argparse

    from interactions.movielens import fetch_movielens, leave_one_out, load_interactions
    from server.features.base import open_store

    ap = argparse.ArgumentParser(description="Load MovieLens-100K into a feature store.")
    ap.add_argument("--store", default="sqlite:///var/features.db", help="sqlite:///path or redis://...")
    ap.add_argument("--cache", type=Path, default=Path(".cache/data"))
    ap.add_argument("--upto", choices=("valid", "test", "all"), default="test")
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args(argv)

    async def run() -> None:
        folder = fetch_movielens(args.cache)
        split = leave_one_out(load_interactions(folder))
        store = open_store(args.store)
        try:
            await load_into_store(store, folder, split, upto=args.upto, batch=args.batch)
        finally:
            await store.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
