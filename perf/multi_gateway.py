"""Several gateways, one Redis truth: event-to-effect and item-to-effect across gateways.

Two ``rerankd serve`` processes (A and B) on one Triton share one ``redis-server`` (AOF,
``appendfsync always``), with a rules file that makes both effects observable in B's reply:

* **event to effect**: a click recorded through A on a candidate; ``exclude_interacted``
  drops it from the user's next Rerank on B. Per trial: one Rerank on B (the item is there),
  then RecordEvents on A, then Reranks on B until the item is gone. Reported: time from
  sending the event to B's reply without the item (p50/p99), and how many Reranks on B that
  took (1 = the very next one, which the design promises).
* **item to effect**: the item cache. B caches the item; A upserts it with
  ``available=false`` (``exclude_unavailable``), then back to true; Reranks on B until the
  change shows. The gateways run with an item cache TTL of 600 s, so only the pub/sub
  invalidation (``server.features.invalidation``) can make it show within the run.

    python -m perf.multi_gateway --trials 300            # figures into reports/multi_gateway.json

The score cache is off unless ``--score-cache`` (trials repeat user texts, so with it most
Reranks would skip the model); every Rerank then scores its 20 candidates on Triton.

The functions ``event_to_effect`` and ``item_to_effect`` also serve the integration test
(``tests/integration/test_multi_gateway.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from server.api.pb import reranker_pb2 as pb
from server.settings import PROJECT_ROOT

RULES = """version: 1
rule_sets:
  default:
    exclude_interacted: true
    exclude_unavailable: true
"""
# Env for both gateways: the pub/sub, not the TTL, must be what refreshes B's item cache.
GATEWAY_ENV = {"RERANKD_STORE_ITEM_CACHE_TTL_S": "600", "RERANKD_RULES_RELOAD_INTERVAL_S": "60"}
N_CANDIDATES = 20
POLL_TIMEOUT_S = 10.0


def catalog(prefix: str, available: bool = True, n: int = N_CANDIDATES) -> list[pb.Item]:
    return [pb.Item(item_id=f"{prefix}{i}", title=f"Film {prefix}{i}",
                    attributes={"genres": "Drama", "available": "true" if available else "false"})
            for i in range(n)]


def _rerank_ids(stub, user: str, ids: list[str]) -> set[str]:
    resp = stub.Rerank(pb.RerankRequest(user_id=user, candidates=[pb.Candidate(item_id=i) for i in ids]),
                       timeout=30)
    return {i.item_id for i in resp.items}


def _until(stub, user: str, ids: list[str], done) -> int:
    """Rerank on ``stub`` until ``done(returned ids)``; returns how many Reranks it took."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    tries = 0
    while True:
        tries += 1
        if done(_rerank_ids(stub, user, ids)):
            return tries
        if time.monotonic() > deadline:
            raise AssertionError(f"no effect on the other gateway within {POLL_TIMEOUT_S:.0f} s ({tries} Reranks)")


def event_to_effect(a, b, trials: int, *, prefix: str, user_prefix: str) -> list[tuple[float, int]]:
    """(seconds from sending a click on A to B's first reply without the item, Reranks on B)
    per trial; each trial a new user. The items ``<prefix>0..`` must exist, available."""
    ids = [f"{prefix}{i}" for i in range(N_CANDIDATES)]
    out = []
    for t in range(trials):
        user, item = f"{user_prefix}-{t}", ids[t % len(ids)]
        assert item in _rerank_ids(b, user, ids)  # before: the effect can fail to show
        start = time.perf_counter()
        a.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item, event_type="click",
                                                               timestamp=time.time())]), timeout=30)
        tries = _until(b, user, ids, lambda got: item not in got)
        out.append((time.perf_counter() - start, tries))
    return out


def item_to_effect(a, b, trials: int, *, prefix: str, user: str) -> list[tuple[float, int]]:
    """(seconds from sending an upsert on A to B's first reply showing it, Reranks on B) per
    trial; each trial flips one item's availability (B has it cached: it just served it)."""
    ids = [f"{prefix}{i}" for i in range(N_CANDIDATES)]
    out = []
    for t in range(trials):
        item = ids[t % len(ids)]
        hide = item in _rerank_ids(b, user, ids)  # also puts the item in B's cache
        start = time.perf_counter()
        a.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(
            item_id=item, title=f"Film {item}", attributes={"genres": "Drama", "available": str(not hide).lower()})]),
            timeout=30)
        tries = _until(b, user, ids, (lambda got: item not in got) if hide else (lambda got: item in got))
        out.append((time.perf_counter() - start, tries))
    return out


def summary(samples: list[tuple[float, int]]) -> dict[str, float]:
    ms = np.array([s for s, _ in samples]) * 1000.0
    tries = np.array([n for _, n in samples])
    return {"n": len(samples), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "next_rerank_share": float(np.mean(tries == 1)),
            "max_reranks": int(tries.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "multi_gateway.json")
    ap.add_argument("--repo", type=Path, default=PROJECT_ROOT / "model_repository",
                    help="model repository (its newest version of the reranker is served)")
    ap.add_argument("--score-cache", action="store_true", help="leave the gateways' score cache on")
    args = ap.parse_args(argv)

    import tempfile

    import grpc

    from perf.common import cpu_pressure, log
    from perf.stack import MODEL
    from server.api.pb import reranker_pb2_grpc as pb_grpc
    from server.devstack import gateway_process
    from server.settings import load_settings
    from server.triton.install import ensure_triton
    from server.triton.launcher import TritonPorts, TritonServer
    from tests.redis_server import start_redis

    with tempfile.TemporaryDirectory(prefix="multi-gw-") as tmp:
        tmp = Path(tmp)
        rules = tmp / "rules.yaml"
        rules.write_text(RULES)
        redis_proc = start_redis(tmp / "redis", appendonly=True)
        inst = ensure_triton(load_settings(env={}).triton.install_dir, log=log)
        triton = TritonServer(inst, args.repo, ports=TritonPorts.free(), log_path=tmp / "triton.log",
                              load_models=[MODEL])
        triton.start()
        try:
            triton.wait_ready(300)
            env = dict(GATEWAY_ENV, RERANKD_STORE_URL=f"{redis_proc.url}?key_prefix=mg:",
                       RERANKD_RULES_PATH=str(rules))
            if not args.score_cache:
                env["RERANKD_SERVER_SCORE_CACHE_SIZE"] = "0"
            with gateway_process(triton.grpc_url, args.repo, tmp / "a.log", **env) as (_, addr_a), \
                    gateway_process(triton.grpc_url, args.repo, tmp / "b.log", **env) as (_, addr_b), \
                    grpc.insecure_channel(addr_a) as ch_a, grpc.insecure_channel(addr_b) as ch_b:
                a, b = pb_grpc.RerankerStub(ch_a), pb_grpc.RerankerStub(ch_b)
                a.UpsertItems(pb.UpsertItemsRequest(items=catalog("mg")), timeout=30)
                event_to_effect(a, b, 10, prefix="mg", user_prefix="warm")  # warm-up, not reported
                log(f"==> {args.trials} trials each, gateways {addr_a} -> {addr_b}; CPU pressure {cpu_pressure()}")
                events = summary(event_to_effect(a, b, args.trials, prefix="mg", user_prefix="ev"))
                items = summary(item_to_effect(a, b, args.trials, prefix="mg", user="items-user"))
                pressure = cpu_pressure()
        finally:
            triton.stop()
            redis_proc.stop()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    versions = sorted(int(d.name) for d in (args.repo / MODEL).iterdir() if d.name.isdigit())
    result = {"cpu": cpu, "cpu_pressure_after": pressure, "model_version": versions[-1] if versions else None,
              "score_cache": args.score_cache, "candidates": N_CANDIDATES,
              "event_to_effect": events, "item_to_effect": items}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, s in (("event to effect", events), ("item to effect", items)):
        log(f"    {name:16s} p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  max {s['max_ms']:.1f} ms  "
            f"seen by the next Rerank on B: {s['next_rerank_share']:.1%} (max {s['max_reranks']} Reranks)")
    log(f"    written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
