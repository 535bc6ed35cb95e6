"""The gateway's own CPU per request, without Triton: the real pipeline (store, item cache,
renderer, tokenizer, rules, proto conversion) with a scorer that returns at once.

    python -m perf.gateway_profile [--candidates 100] [--requests 300] [--distinct 48] [--profile]

Reports per-stage p50/p99 (ms) and, with ``--profile``, the top functions by cumulative time
(cProfile). Run on a quiet machine for absolute numbers; on a busy one the p99 shows how
time-slicing stretches the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np


class InstantScorer:
    async def score(self, batch, spec, version, timeout_s=None, **kwargs):
        return np.linspace(1.0, 0.0, len(batch), dtype=np.float32)


class FixedModel:
    def __init__(self, served):
        self.served = served
        self.current = served

    def require(self, user_id: str = ""):
        return self.served


async def bench(version_dir: Path, db_path: Path, candidates: int, n: int, profile: bool,
                evict_ms: float = 0.0, distinct: int = 0) -> dict:
    from perf.loadgen import build_messages
    from perf.workload import make_requests
    from server.api import convert
    from server.core.pipeline import Pipeline, PipelineConfig
    from server.features import open_store
    from server.features.cache import ItemCache
    from server.triton.models import load_served_model

    served = load_served_model(version_dir.parent.parent, version_dir.parent.name, version_dir.name)
    store = open_store(f"sqlite:///{db_path}", history_len=20)
    pipe = Pipeline(PipelineConfig(), store, InstantScorer(), FixedModel(served), items=ItemCache(store, 100_000))
    distinct = distinct or n
    msgs = build_messages(make_requests(distinct, candidates, seed=7))
    msgs = [msgs[i % distinct] for i in range(n)]
    stages: dict[str, list[float]] = {}
    wall = []

    async def one(msg, i):
        t0 = time.perf_counter()
        req = convert.rerank_request(msg, request_id=str(i), timeout_s=10.0)
        t1 = time.perf_counter()
        resp = await pipe.rerank(req)
        t2 = time.perf_counter()
        out = convert.rerank_response(resp).SerializeToString()
        msg.SerializeToString()
        t3 = time.perf_counter()
        stages.setdefault("proto_in", []).append((t1 - t0) * 1e3)
        stages.setdefault("proto_out", []).append((t3 - t2) * 1e3)
        for k, v in resp.timings_ms.items():
            stages.setdefault(k, []).append(v)
        wall.append((t3 - t0) * 1e3)
        return out

    for i, m in enumerate(msgs[:5]):  # warm the caches of the first requests too
        await one(m, i)
    stages.clear()
    wall.clear()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    big = np.random.default_rng(0).random((512, 512), dtype=np.float32) if evict_ms else None
    for i, m in enumerate(msgs):
        if big is not None:  # what the engine does to this core's caches between requests
            t_end = time.perf_counter() + evict_ms / 1000.0
            while time.perf_counter() < t_end:
                big @ big
        await one(m, i)
    if prof:
        prof.disable()
    await store.close()
    res = {k: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) for k, v in stages.items()}
    res["all (in-process)"] = (float(np.percentile(wall, 50)), float(np.percentile(wall, 99)))
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(__import__("os").environ.get("SORT", "cumulative")).print_stats(int(__import__("os").environ.get("NPROF", "25")))
        res["_profile"] = s.getvalue()
    return res


def main(argv=None) -> int:
    from server.settings import PROJECT_ROOT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    work = PROJECT_ROOT / "reports" / "perf" / "work"
    ap.add_argument("--version-dir", type=Path, default=work / "model_repository" / "reranker" / "1")
    ap.add_argument("--store", type=Path, default=work / "store.db")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--evict-ms", type=float, default=0.0,
                    help="run a matrix product this long before each request, as the engine does "
                         "on a shared CPU (cold caches: the gateway's cost in a real deployment)")
    ap.add_argument("--distinct", type=int, default=0,
                    help="cycle this many distinct requests (0: all distinct, every text first seen)")
    args = ap.parse_args(argv)
    res = asyncio.run(bench(args.version_dir, args.store, args.candidates, args.requests, args.profile,
                            args.evict_ms, args.distinct))
    prof = res.pop("_profile", "")
    print(f"{'stage':18s} {'p50 ms':>8s} {'p99 ms':>8s}   ({args.requests} requests x {args.candidates} candidates, "
          f"{args.distinct or args.requests} distinct requests cycled)")
    for k, (p50, p99) in res.items():
        print(f"{k:18s} {p50:8.2f} {p99:8.2f}")
    if prof:
        print(prof)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
