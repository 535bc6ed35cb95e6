"""Feature-store micro-benchmark: SQLite vs Redis side by side, as a markdown table.

    python -m perf.bench_store [--batches 50] [--samples 500] [--dir /path/on/real/disk]

Both backends durable (SQLite WAL + synchronous=FULL; redis-server started here with
AOF ``appendfsync always``), data on ``--dir`` (default: a temporary directory).

* ingest: ``record_events`` in batches of 100 events, one writer, then 8 concurrent writers.
* event->effect: one ``record_events`` of one event through gateway A, then
  ``recent_events`` through gateway B (another store object) returns it; p50 / p99.
* get_items(100): one call for 100 existing ids; p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from server.features.redis import RedisStore
from server.features.sqlite import SqliteStore
from server.types import Event, Item

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.redis_server import start_redis  # noqa: E402

BATCH = 100


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def bench(open_store, batches: int, samples: int) -> dict[str, float]:
    a, b = open_store(), open_store()
    out: dict[str, float] = {}
    try:
        n = 0

        def batch(user: str) -> list[Event]:
            nonlocal n
            n += BATCH
            return [Event(user, f"i{k % 1000}", "view", time.time(), None, f"k{n}-{k}") for k in range(BATCH)]

        await a.record_events(batch("warm"))
        t = time.perf_counter()
        for _ in range(batches):
            await a.record_events(batch("u1"))
        out["ingest_1"] = batches * BATCH / (time.perf_counter() - t)

        writers = 8

        async def writer(w: int):
            for _ in range(batches // writers or 1):
                await (a if w % 2 else b).record_events(batch(f"w{w}"))

        t = time.perf_counter()
        await asyncio.gather(*[writer(w) for w in range(writers)])
        out["ingest_8"] = writers * (batches // writers or 1) * BATCH / (time.perf_counter() - t)

        lat = []
        for s in range(samples):
            e = Event("lat", f"i{s}", "click", time.time(), None, f"lat-{s}")
            t = time.perf_counter()
            await a.record_events([e])
            while (await b.recent_events("lat", 1))[:1] != [e]:
                pass
            lat.append((time.perf_counter() - t) * 1000)
        out["e2e_p50"], out["e2e_p99"] = pct(lat, 0.50), pct(lat, 0.99)

        await a.upsert_items([Item(f"it{k}", f"title {k}", "some text " * 20, {"brand": "x"}) for k in range(1000)])
        ids = [f"it{k}" for k in range(0, 1000, 10)]
        lat = []
        for _ in range(samples):
            t = time.perf_counter()
            got = await b.get_items(ids)
            lat.append((time.perf_counter() - t) * 1000)
            assert len(got) == 100
        out["get_p50"], out["get_p99"] = pct(lat, 0.50), pct(lat, 0.99)
    finally:
        await a.close()
        await b.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=50, help="batches of 100 events per ingest run")
    ap.add_argument("--samples", type=int, default=500, help="latency samples")
    ap.add_argument("--dir", type=Path, default=None, help="where the data files go")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        results = {}
        results["SQLite"] = asyncio.run(bench(
            lambda: SqliteStore(tmp / "bench.db", history_len=20), args.batches, args.samples))
        proc = start_redis(tmp / "redis", appendonly=True)
        try:
            results["Redis (AOF always)"] = asyncio.run(bench(
                lambda: RedisStore(proc.url, history_len=20), args.batches, args.samples))
        finally:
            proc.stop()
    rows = [
        ("ingest, 1 writer (events/s, batches of 100)", "ingest_1", "{:,.0f}"),
        ("ingest, 8 writers (events/s, batches of 100)", "ingest_8", "{:,.0f}"),
        ("event->effect p50 (ms)", "e2e_p50", "{:.2f}"),
        ("event->effect p99 (ms)", "e2e_p99", "{:.2f}"),
        ("get_items(100 ids) p50 (ms)", "get_p50", "{:.2f}"),
        ("get_items(100 ids) p99 (ms)", "get_p99", "{:.2f}"),
    ]
    names = list(results)
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |")


if __name__ == "__main__":
    main()
