"""grpc.aio load generator for the rerankd gateway.

* closed loop: ``concurrency`` workers, each sends its next request when the last returns;
* open loop: Poisson arrivals at a fixed rate (exponential gaps from a seeded RNG), each
  request sent on time whether or not earlier ones returned (bounded by ``max_outstanding``:
  beyond it an arrival is counted as ``CLIENT_OVERLOAD`` and not sent);
* per-request Triton compute (sequential requests only): the model's execution statistics
  are read before and after each request, so end-to-end minus Triton compute is exact.

Run alone: ``python -m perf.loadgen --addr 127.0.0.1:50051 --concurrency 4 --duration 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from perf.workload import Request


def _pb():
    from server.api.pb import reranker_pb2, reranker_pb2_grpc

    return reranker_pb2, reranker_pb2_grpc


def build_messages(requests: list[Request]):
    pb, _ = _pb()
    return [pb.RerankRequest(user_id=r.user_id, candidates=[pb.Candidate(item_id=i) for i in r.item_ids])
            for r in requests]


@dataclass
class Run:
    mode: str
    level: float  # concurrency or rate
    candidates: int
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    pairs: int = 0
    elapsed_s: float = 0.0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    offered: int = 0
    done_at: list[tuple[float, int]] = field(default_factory=list)  # (completion time, pairs)

    def record(self, t_ms: float, code: str, pairs: int = 0, timings=()) -> None:
        self.codes[code] += 1
        if code == "OK":
            self.latencies_ms.append(t_ms)
            self.pairs += pairs
            self.done_at.append((time.perf_counter(), pairs))
            for t in timings:
                self.stage_ms.setdefault(t.stage, []).append(t.ms)

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        ok = self.codes.get("OK", 0)
        out = {
            "mode": self.mode, "level": self.level, "candidates": self.candidates,
            "requests_ok": ok, "errors": sum(v for k, v in self.codes.items() if k != "OK"),
            "errors_by_code": ";".join(f"{k}={v}" for k, v in sorted(self.codes.items()) if k != "OK"),
            "rps": ok / self.elapsed_s if self.elapsed_s else 0.0,
            "pairs_per_s": self.pairs / self.elapsed_s if self.elapsed_s else 0.0,
            "completions": len(self.done_at),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(np.mean(lat)),
        }
        if self.mode == "closed" and len(self.done_at) >= 3:
            # Between the first and the last completion in the window: free of the window
            # edges' quantization (a whole request either lands in the window or not).
            t = sorted(self.done_at)
            span = t[-1][0] - t[0][0]
            if span > 0:
                out["pairs_per_s"] = sum(p for _, p in t[1:]) / span
                out["rps"] = (len(t) - 1) / span
        for stage, values in sorted(self.stage_ms.items()):
            out[f"gw_{stage}_p50_ms"] = float(np.percentile(values, 50))
        return out


async def _call(stub, msg, timeout_s: float):
    import grpc

    t0 = time.perf_counter()
    try:
        resp = await stub.Rerank(msg, timeout=timeout_s)
        return (time.perf_counter() - t0) * 1000.0, "OK", resp
    except grpc.aio.AioRpcError as exc:
        return (time.perf_counter() - t0) * 1000.0, exc.code().name, None


async def closed_loop(addr: str, messages, concurrency: int, duration_s: float, *,
                      warmup_s: float = 1.0, timeout_s: float = 30.0, candidates: int = 0) -> Run:
    """``concurrency`` workers for ``warmup_s + duration_s``; counted: the requests that
    *complete* inside the measurement window [warmup, warmup + duration], divided by the
    window (requests still in flight at its end are dropped, not waited for: waiting would
    add a drain tail without new work and understate throughput at high concurrency). The
    window should span several latencies (``sections.gateway`` sizes it so)."""
    import grpc

    _, pb_grpc = _pb()
    run = Run("closed", concurrency, candidates)
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        counter = iter(range(10**9))
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker():
            while time.perf_counter() < stop_at:
                msg = messages[next(counter) % len(messages)]
                t_ms, code, resp = await _call(stub, msg, timeout_s)
                if measure_from <= time.perf_counter() <= stop_at:
                    run.record(t_ms, code, len(msg.candidates), resp.timings if resp else ())

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        run.elapsed_s = duration_s
    return run


async def open_loop(addr: str, messages, rate: float, duration_s: float, *, seed: int = 0,
                    max_outstanding: int = 512, timeout_s: float = 30.0, candidates: int = 0) -> Run:
    import grpc

    _, pb_grpc = _pb()
    run = Run("open", rate, candidates)
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        tasks: set[asyncio.Task] = set()
        start = time.perf_counter()
        t_next, i = start, 0

        async def one(msg):
            t_ms, code, resp = await _call(stub, msg, timeout_s)
            run.record(t_ms, code, len(msg.candidates), resp.timings if resp else ())

        while t_next < start + duration_s:
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            run.offered += 1
            if len(tasks) >= max_outstanding:
                run.codes["CLIENT_OVERLOAD"] += 1
            else:
                task = asyncio.create_task(one(messages[i % len(messages)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
            t_next += rng.expovariate(rate)
        if tasks:
            await asyncio.gather(*tasks)
        run.elapsed_s = time.perf_counter() - start
    return run


def _compute_by_batch(stats: dict) -> dict[int, tuple[int, int]]:
    """batch size -> (executions, compute input + infer + output ns), cumulative."""
    out: dict[int, tuple[int, int]] = {}
    for m in stats.get("model_stats", []):
        for b in m.get("batch_stats", []):
            ns = sum(int(b.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output"))
            n = int(b.get("compute_infer", {}).get("count", 0))
            c, t = out.get(int(b["batch_size"]), (0, 0))
            out[int(b["batch_size"])] = (c + n, t + ns)
    return out


def compute_wall_ms(before: dict, after: dict, instances: int = 1) -> tuple[float, float, int]:
    """(wall ms, summed ms, executions) of the model executions between two statistics snapshots.

    Executions of one request (its chunks) run one after another on one instance (wall =
    sum) or side by side on several (wall = the longest, while chunks <= instances)."""
    b, a = _compute_by_batch(before), _compute_by_batch(after)
    durations = []
    for size, (n, ns) in a.items():
        n0, ns0 = b.get(size, (0, 0))
        if n > n0:
            durations += [(ns - ns0) / (n - n0) / 1e6] * (n - n0)
    total = float(sum(durations))
    if instances > 1 and 1 < len(durations) <= instances:
        return float(max(durations)), total, len(durations)
    return total, total, len(durations)


def _queue_ns(stats: dict) -> int:
    return sum(int(m.get("inference_stats", {}).get("queue", {}).get("ns", 0)) for m in stats.get("model_stats", []))


def _executions(stats: dict) -> int:
    return sum(n for n, _ in _compute_by_batch(stats).values())


def sequential_overhead(addr: str, messages, n: int, stats_fn, *, instances: int = 1,
                        max_batch: int = 0, timeout_s: float = 30.0) -> list[dict]:
    """One request at a time; per request: end-to-end ms, Triton compute ms (from the model's
    statistics delta, see ``compute_wall_ms``), queue ms, the gateway's own stage timings.

    A blocking gRPC stub, not grpc.aio: one call at a time needs no event loop, and the
    blocking client's own cost is the smaller (``grpc_floor`` measures it), so less of the
    client is booked as gateway overhead."""
    import grpc

    _, pb_grpc = _pb()
    rows = []
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        # Warm-up: one pass over the distinct requests (fills the item, render and token
        # caches as a running gateway has them), so the figures describe the steady state.
        for msg in list(messages[:64]) + [messages[0]] * 3:
            _call_sync(stub, msg, timeout_s)
        for i in range(n):
            msg = messages[i % len(messages)]
            before = stats_fn()
            t_ms, code, resp = _call_sync(stub, msg, timeout_s)
            after = stats_fn()
            # Triton books an execution's statistics just after its response: wait until all
            # of this request's chunks are booked (else its compute lands on the next one).
            expected = _executions(before) + (-(-len(msg.candidates) // max_batch) if max_batch else 1)
            deadline = time.perf_counter() + 2.0
            while _executions(after) < expected and time.perf_counter() < deadline:
                time.sleep(0.01)
                after = stats_fn()
            if code != "OK":
                rows.append({"code": code})
                continue
            compute, summed, execs = compute_wall_ms(before, after, instances)
            queue = (_queue_ns(after) - _queue_ns(before)) / 1e6
            row = {"code": code, "candidates": len(msg.candidates), "e2e_ms": t_ms,
                   "triton_compute_ms": compute, "triton_compute_sum_ms": summed, "executions": execs,
                   "triton_queue_ms": queue, "overhead_ms": t_ms - compute}
            row.update({f"gw_{t.stage}_ms": t.ms for t in resp.timings})
            if "gw_infer_ms" in row:  # the gateway's own time, outside its Triton call
                row["gateway_only_ms"] = t_ms - row["gw_infer_ms"]
            if "gw_handler_ms" in row:  # both gRPC stacks and the network, outside the handler
                row["transport_ms"] = t_ms - row["gw_handler_ms"]
            rows.append(row)
    return rows


def event_to_effect(addr: str, messages, n: int, *, timeout_s: float = 30.0) -> dict:
    """How soon a user's event changes their ranking, through the public API.

    Per sample, a user never seen before (so the event is the whole history): ``Rerank``
    (cold start), then ``RecordEvents`` with one click, then the next ``Rerank`` of the same
    candidates, which must score them differently (the click is now in the user's text).
    Reports the event call's latency, event-to-effect (event sent -> changed ranking
    received) p50/p99 ms, and how many samples changed (all of them, or the figure is void).
    """
    import grpc

    pb, pb_grpc = _pb()
    run_id = f"{os.getpid()}-{int(time.time())}"
    record_ms, effect_ms, changed = [], [], 0
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        for k in range(n + 1):  # the first sample warms up and is not counted
            msg = pb.RerankRequest()
            msg.CopyFrom(messages[k % len(messages)])
            msg.user_id = f"perf-effect-{run_id}-{k}"
            before = {i.item_id: i.model_score for i in stub.Rerank(msg, timeout=timeout_s).items}
            clicked = msg.candidates[(k * 7) % len(msg.candidates)].item_id
            t0 = time.perf_counter()
            stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(
                user_id=msg.user_id, item_id=clicked, event_type="click", timestamp=time.time())]),
                timeout=timeout_s)
            t1 = time.perf_counter()
            after = {i.item_id: i.model_score for i in stub.Rerank(msg, timeout=timeout_s).items}
            t2 = time.perf_counter()
            if k == 0:
                continue
            record_ms.append((t1 - t0) * 1e3)
            effect_ms.append((t2 - t0) * 1e3)
            changed += any(abs(after[i] - s) > 1e-6 for i, s in before.items())
    return {"samples": n, "changed": changed, "candidates": len(messages[0].candidates),
            "record_p50_ms": float(np.percentile(record_ms, 50)), "record_p99_ms": float(np.percentile(record_ms, 99)),
            "effect_p50_ms": float(np.percentile(effect_ms, 50)), "effect_p99_ms": float(np.percentile(effect_ms, 99))}


def _call_sync(stub, msg, timeout_s: float):
    import grpc

    t0 = time.perf_counter()
    try:
        resp = stub.Rerank(msg, timeout=timeout_s)
        return (time.perf_counter() - t0) * 1000.0, "OK", resp
    except grpc.RpcError as exc:
        return (time.perf_counter() - t0) * 1000.0, exc.code().name, None


def grpc_floor(addr: str, n: int, gap_s: float) -> dict:
    """The gRPC round trip with nothing behind it: ``grpc.health.v1`` Check on the gateway,
    the same blocking client, one call every ``gap_s`` (the idle time a real request spends
    waiting on Triton, which costs thread wake-ups on both sides). A floor no gateway code
    can go under; subtract it to see what the gateway's own work costs."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    lat = []
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(3):
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        for _ in range(n):
            time.sleep(gap_s)
            t0 = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            lat.append((time.perf_counter() - t0) * 1000.0)
    v = np.array(lat)
    return {"requests": n, "gap_ms": gap_s * 1000.0, "p50_ms": float(np.percentile(v, 50)),
            "p95_ms": float(np.percentile(v, 95)), "p99_ms": float(np.percentile(v, 99))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0.0, help="open loop at this rate (req/s) instead")
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args(argv)
    from perf.workload import make_requests

    msgs = build_messages(make_requests(64, args.candidates))
    if args.rate:
        run = asyncio.run(open_loop(args.addr, msgs, args.rate, args.duration, candidates=args.candidates))
    else:
        run = asyncio.run(closed_loop(args.addr, msgs, args.concurrency, args.duration, candidates=args.candidates))
    for k, v in run.summary().items():
        print(f"{k:24s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
