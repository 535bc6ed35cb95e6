"""A generated shop catalogue that is not MovieLens, with users whose sequences can be learnt:
training on your own data shown end to end (``tests/integration/test_train_own_data.py``).

Items are products: a category (coffee, running, camping, ...), a brand, a title and a short
text. Within each category the items lie on a ring (a seeded order); a user starts in a
favourite category and mostly clicks the next item along the ring, sometimes another item
of the category, and now and then drifts to another category. The ring is directional,
which a co-occurrence retriever cannot see and a next-item model can. Browsing noise comes
as ``view`` events of random items (train with ``model.event_weights = "view=0"`` to drop
them, as a gateway would from histories); a tenth of the clicks share the previous event's
timestamp, so ties are broken by recording order.

``python -m interactions.synthetic --out DIR [--store URL]`` writes ``DIR/interactions.csv``
and ``DIR/items.csv`` and, with ``--store``, records the same events into a feature store.
"""

from __future__ import annotations

import asyncio
import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.items import Item
from interactions.sources import RawEvent
from server.types import Event

CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "coffee": (("beans", "espresso machine", "grinder", "mug", "filter", "kettle"),
               ("dark roast", "light roast", "single origin", "organic", "decaf")),
    "running": (("shoes", "socks", "shorts", "watch", "jacket", "belt"),
                ("trail", "road", "lightweight", "reflective", "cushioned")),
    "camping": (("tent", "stove", "lantern", "sleeping bag", "backpack", "mat"),
                ("ultralight", "waterproof", "two-person", "compact", "insulated")),
    "kitchen": (("pan", "knife", "cutting board", "pot", "whisk", "blender"),
                ("cast-iron", "stainless", "nonstick", "bamboo", "ceramic")),
    "books": (("novel", "cookbook", "atlas", "biography", "poetry", "field guide"),
              ("paperback", "hardcover", "illustrated", "pocket", "signed")),
    "garden": (("hose", "shears", "planter", "seeds", "gloves", "rake"),
               ("heirloom", "raised", "terracotta", "steel", "self-watering")),
    "audio": (("headphones", "speaker", "turntable", "earbuds", "amplifier", "microphone"),
              ("wireless", "noise-cancelling", "portable", "hi-fi", "studio")),
    "toys": (("puzzle", "blocks", "kite", "robot", "doll", "board game"),
             ("wooden", "educational", "remote-control", "classic", "glow-in-the-dark")),
}
BRANDS = ("Acme", "Northwind", "Umbra", "Kestrel", "Lumen", "Tamarack", "Orla", "Vesta")
START_TS = 1_700_000_000


@dataclass
class SyntheticData:
    """The catalogue and every event, in recording (row) order."""

    items: list[Item]
    events: list[RawEvent]

    def idempotency_key(self, row: int) -> str:
        return f"synthetic:{row}"


def generate(users: int = 200, items_per_category: int = 30, seed: int = 0, *, min_len: int = 12,
             max_len: int = 30, p_next: float = 0.7, p_drift: float = 0.08, p_view: float = 0.3,
             p_tie: float = 0.1) -> SyntheticData:
    """A seeded catalogue (``items_per_category`` x 8 categories) and ``users`` sequences."""
    rng = random.Random(seed)
    items: list[Item] = []
    rings: dict[str, list[str]] = {}
    n = 0
    for cat, (nouns, adjectives) in CATEGORIES.items():
        ring = []
        for k in range(items_per_category):
            n += 1
            item_id = f"p{n:04d}"
            noun, adj, brand = nouns[k % len(nouns)], rng.choice(adjectives), rng.choice(BRANDS)
            items.append(Item(item_id, f"{brand} {adj} {noun}",
                              f"{adj} {noun} for {cat} lovers, by {brand}",
                              {"category": cat, "brand": brand, "price": f"{rng.randint(5, 300)}"}))
            ring.append(item_id)
        rng.shuffle(ring)
        rings[cat] = ring
    position = {i: (cat, k) for cat, ring in rings.items() for k, i in enumerate(ring)}
    all_ids = [i.item_id for i in items]
    cats = list(rings)
    events: list[RawEvent] = []
    for u in range(1, users + 1):
        user = f"u{u:04d}"
        ts = START_TS + u * 10_000
        cat = rng.choice(cats)
        current = rng.choice(rings[cat])
        seen = {current}
        seq = [current]
        for _ in range(rng.randint(min_len, max_len) - 1):
            r = rng.random()
            if r < p_drift:
                cat = rng.choice([c for c in cats if c != cat])
                nxt = rng.choice(rings[cat])
            elif r < p_drift + p_next:
                c, k = position[current]
                ring = rings[c]
                nxt = ring[(k + 1) % len(ring)]
            else:
                nxt = rng.choice(rings[position[current][0]])
            # Never the same item twice: walk on along its ring to an unseen one.
            c, k = position[nxt]
            while nxt in seen and len(seen) < len(all_ids):
                k = (k + 1) % len(rings[c])
                nxt = rings[c][k]
                if all(i in seen for i in rings[c]):
                    c = rng.choice(cats)
                    k, nxt = 0, rings[c][0]
            seen.add(nxt)
            seq.append(nxt)
            current = nxt
        for item_id in seq:
            if rng.random() < p_view:  # browsing noise: a random item viewed before the click
                ts += rng.randint(5, 120)
                events.append(RawEvent(user, rng.choice(all_ids), float(ts), "view", None))
            if rng.random() >= p_tie:
                ts += rng.randint(60, 3600)
            kind, value = ("purchase", float(rng.randint(5, 300))) if rng.random() < 0.1 else ("click", None)
            events.append(RawEvent(user, item_id, float(ts), kind, value))
    return SyntheticData(items, events)


def write_csv(data: SyntheticData, folder: Path) -> tuple[Path, Path]:
    """``folder/interactions.csv`` (user, item, timestamp, type, value) and ``folder/items.csv``
    (item_id, title, text, then the attributes); returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter, items = folder / "interactions.csv", folder / "items.csv"
    with open(inter, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp", "type", "value"])
        for e in data.events:
            w.writerow([e.user_id, e.item_id, int(e.timestamp), e.event_type, "" if e.value is None else e.value])
    attrs = sorted({a for i in data.items for a in i.attributes})
    with open(items, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "text", *attrs])
        for i in data.items:
            w.writerow([i.item_id, i.title, i.text, *(i.attributes.get(a, "") for a in attrs)])
    return inter, items


async def record_into_store(data: SyntheticData, store, batch: int = 2000,
                            log: Callable[[str], object] = print) -> int:
    """Upsert the catalogue and record the events in row order, as a gateway would receive
    them (``UpsertItems``, ``RecordEvents``); idempotent (one key per row). Returns the events
    applied."""
    await store.upsert_items(data.items)
    accepted = 0
    for start in range(0, len(data.events), batch):
        chunk = [Event(e.user_id, e.item_id, e.event_type, e.timestamp, e.value, data.idempotency_key(start + k))
                 for k, e in enumerate(data.events[start:start + batch])]
        accepted += (await store.record_events(chunk)).accepted
    log(f"[synthetic] {len(data.items)} items, {accepted} new events of {len(data.events)}")
    return accepted


def main(argv: list[str] | None = None) -> None:
    import argparse

    from server.features.base import open_store

    ap = argparse.ArgumentParser(description="Generate a synthetic shop catalogue and its users' events.")
    ap.add_argument("--out", type=Path, required=True, help="folder for interactions.csv and items.csv")
    ap.add_argument("--store", help="also record into this store (sqlite:///path or redis://...)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--items-per-category", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = generate(args.users, args.items_per_category, args.seed)
    for p in write_csv(data, args.out):
        print(f"[synthetic] wrote {p}")
    if args.store:
        async def run() -> None:
            store = open_store(args.store)
            try:
                await record_into_store(data, store)
            finally:
                await store.close()

        asyncio.run(run())


if __name__ == "__main__":
    main()
