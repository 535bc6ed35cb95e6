"""Load shedding by deadline under open-loop load: 80% and 120% of measured capacity.

One Triton serves two gateways: load shedding on (the default) and off
(``RERANKD_SERVER_LOAD_SHEDDING=false``), on the same store and the same MovieLens requests
(100 candidates, score cache off). Capacity is measured first, in the same run: the best
closed-loop throughput of the shedding gateway over a concurrency sweep. Then Poisson arrivals
at 80% and 120% of it, every call with the same deadline, each gateway in turn (order
alternating by round). Per run: OK p50/p99, the shares of OK / refused (RESOURCE_EXHAUSTED) /
late (DEADLINE_EXCEEDED), goodput, and the client-side latency of refused calls (p50/p99;
loopback, so it is the gateway's answer time plus one gRPC round trip).

    python -m perf.shed_bench                      # writes reports/shed.json and reports/shed.md
    python -m perf.shed_bench --on-model-failure degrade   # reports/shed-degrade.{json,md}
    python -m perf.shed_bench --deadline-ms 500 --open-s 20 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np

from perf import workload as W
from perf.common import cpu_model, cpu_pressure, load_avg, log
from perf.loadgen import build_messages, closed_loop
from perf.stack import launch
from server.devstack import gateway_process
from server.settings import PROJECT_ROOT
from server.triton.launcher import free_port


async def open_loop_calls(addr: str, messages, rate: float, duration_s: float, deadline_s: float,
                          *, seed: int = 0) -> tuple[list[tuple[str, float]], float]:
    """Poisson arrivals at ``rate`` for ``duration_s``, each call sent on time with
    ``deadline_s``; returns ((code, client ms) per call, seconds until the last answer).
    "DEGRADED": an OK reply in the fallback order (degraded mode)."""
    import grpc

    from server.api.pb import reranker_pb2_grpc as pb_grpc

    rng = random.Random(seed)
    out: list[tuple[str, float]] = []
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)

        async def one(msg):
            t0 = time.perf_counter()
            try:
                resp = await stub.Rerank(msg, timeout=deadline_s)
                code = "DEGRADED" if resp.degraded else "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            out.append((code, (time.perf_counter() - t0) * 1e3))

        tasks = []
        start = t_next = time.perf_counter()
        i = 0
        while t_next < start + duration_s:
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(messages[i % len(messages)])))
            i += 1
            t_next += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        return out, time.perf_counter() - start


def summarize(calls: list[tuple[str, float]], elapsed_s: float, duration_s: float) -> dict:
    def pct(values, q):
        return float(np.percentile(values, q)) if values else float("nan")

    n = len(calls)
    ok = [ms for c, ms in calls if c == "OK"]
    refused = [ms for c, ms in calls if c == "RESOURCE_EXHAUSTED"]
    late = [ms for c, ms in calls if c == "DEADLINE_EXCEEDED"]
    degraded = sum(c == "DEGRADED" for c, _ in calls)
    other = n - len(ok) - len(refused) - len(late) - degraded
    return {"calls": n, "ok": len(ok), "refused": len(refused), "late": len(late), "degraded": degraded,
            "other": other, "ok_share": len(ok) / n, "refused_share": len(refused) / n,
            "late_share": len(late) / n, "degraded_share": degraded / n,
            "goodput_rps": len(ok) / duration_s, "drain_s": max(0.0, elapsed_s - duration_s),
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99),
            "refused_p50_ms": pct(refused, 50), "refused_p99_ms": pct(refused, 99),
            "late_p50_ms": pct(late, 50)}


def refused_in_gateway(metrics_port: int) -> dict[str, float]:
    """The shedding gateway's histogram of refused Rerank calls (handler time, seconds):
    ``{"count": n, "le_0.005": calls answered within 5 ms, ...}`` from its ``/metrics``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {"count": 0.0}
    for line in text.splitlines():
        if line.startswith("rerankd_rerank_refused_duration_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            out[f"le_{le}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("rerankd_rerank_refused_duration_seconds_count"):
            out["count"] = float(line.rsplit(" ", 1)[1])
    return out


def capacity_sweep(addr: str, messages, levels: list[int], seconds: float) -> tuple[float, float, list[dict]]:
    """(best req/s, p50 ms at the lowest concurrency, the rows) of closed-loop runs."""
    rows = []
    for c in levels:
        s = asyncio.run(closed_loop(addr, messages, c, seconds, warmup_s=1.0, candidates=100)).summary()
        rows.append({k: s[k] for k in ("level", "rps", "p50_ms", "p99_ms", "errors")})
        log(f"    closed c={c}: {s['rps']:.1f} req/s, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms")
    return max(r["rps"] for r in rows), rows[0]["p50_ms"], rows


def markdown(result: dict) -> str:
    lines = [
        "# Load shedding by deadline (open loop)", "",
        f"on_model_failure={result['on_model_failure']}; {result['cpu']}; load avg {result['load_avg']}; capacity {result['capacity_rps']:.1f} req/s "
        f"(closed-loop best), c=1 p50 {result['alone_p50_ms']:.0f} ms; every call's deadline "
        f"{result['deadline_ms']:.0f} ms; {result['open_s']:.0f} s per run, {result['rounds']} round(s), "
        f"medians over rounds.", "",
        "| gateway | load | calls | OK | refused | late | degraded | goodput req/s | OK p50 ms | OK p99 ms "
        "| refused p50 ms | refused p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in result["runs"].items():
        gw, frac = key.split("@")
        lines.append(f"| {gw} | {frac} | {r['calls']:.0f} | {r['ok_share']:.0%} | {r['refused_share']:.0%} | "
                     f"{r['late_share']:.0%} | {r.get('degraded_share', 0):.0%} | {r['goodput_rps']:.1f} | {r['ok_p50_ms']:.0f} | "
                     f"{r['ok_p99_ms']:.0f} | {r['refused_p50_ms']:.1f} | {r['refused_p99_ms']:.1f} |")
    f = result["figure"]
    lines += ["", f"Shedding on: OK p99 at 120% / at 80% = {f['p99_ratio']:.2f} (target < 2); refused calls "
              f"answered in p50 {f['refused_p50_ms']:.1f} ms, p99 {f['refused_p99_ms']:.1f} ms at the client "
              f"(loopback); in the gateway (its handler time, the refused-call histogram) "
              f"{f.get('gateway_refused_within_5ms', float('nan')):.1%} of the refusals at 120% took under "
              f"5 ms (target: under 5 ms).", "",
              "An OK reply is always inside its deadline (the client enforces it), so what shedding changes "
              "is how the rest fail: refused at once instead of late after queueing, and how much capacity "
              "goes to calls that still make it (goodput)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=PROJECT_ROOT / "model_repository",
                    help="model repository to serve (copied to the work folder)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--concurrency", default="1,2,4,8,16", help="closed-loop sweep for capacity")
    ap.add_argument("--capacity-s", type=float, default=6.0, help="seconds per closed-loop level")
    ap.add_argument("--open-s", type=float, default=15.0, help="seconds per open-loop run")
    ap.add_argument("--rates", default="0.8,1.2", help="fractions of capacity")
    ap.add_argument("--deadline-ms", type=float, default=0.0,
                    help="every call's deadline; 0: 8 x the c=1 p50, at least 100 ms")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--on-model-failure", choices=("fail", "degrade"), default="fail",
                    help="both gateways' resilience.on_model_failure; fail (default here): shedding "
                         "alone, as degraded mode's circuit breaker opens on an overload's timeouts")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    work = out / "shed-work"
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    repo = work / "model_repository"
    shutil.copytree(args.repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    db = W.load_store(work / "store.db", log=log)
    messages = build_messages(W.make_requests(48, args.candidates, seed=1000))
    fracs = [float(f) for f in args.rates.split(",")]
    mode = {"RERANKD_RESILIENCE_ON_MODEL_FAILURE": args.on_model_failure}
    metrics_port = free_port()
    with launch(repo, db, work / "logs", log=log,
                env={**mode, "RERANKD_TELEMETRY_METRICS_PORT": str(metrics_port)}) as stack, \
            gateway_process(stack.triton.grpc_url, repo, work / "logs" / "gateway-noshed.log",
                            RERANKD_SERVER_LOAD_SHEDDING="false", RERANKD_SERVER_SCORE_CACHE_SIZE="0",
                            RERANKD_SERVER_MAX_IN_FLIGHT="256", RERANKD_SERVER_MAX_CANDIDATES="1000",
                            RERANKD_STORE_URL=f"sqlite:///{db}", **mode) as (_, noshed_addr):
        gateways = {"shed": stack.addr, "no-shed": noshed_addr}
        log(f"==> capacity (closed loop, shedding gateway; load avg {load_avg()})")
        capacity, alone_ms, sweep = capacity_sweep(stack.addr, messages,
                                                   [int(c) for c in args.concurrency.split(",")], args.capacity_s)
        deadline_ms = args.deadline_ms or max(100.0, 8 * alone_ms)
        log(f"==> open loop at {fracs} x {capacity:.1f} req/s, deadline {deadline_ms:.0f} ms")
        runs: dict[str, list[dict]] = {}
        for r in range(args.rounds):
            order = list(gateways) if r % 2 == 0 else list(gateways)[::-1]
            for frac in fracs:
                for name in order:
                    before = refused_in_gateway(metrics_port) if name == "shed" else None
                    calls, elapsed = asyncio.run(open_loop_calls(gateways[name], messages, capacity * frac,
                                                                 args.open_s, deadline_ms / 1e3, seed=r))
                    s = summarize(calls, elapsed, args.open_s)
                    if before is not None:  # the gateway's own time for the calls it refused
                        after = refused_in_gateway(metrics_port)
                        n = after["count"] - before["count"]
                        s["gateway_refused"] = n
                        # (no bucket lines before the first refusal)
                        s["gateway_refused_within_5ms"] = ((after.get("le_0.005", 0.0) - before.get("le_0.005", 0.0)) / n
                                                           if n else float("nan"))
                    s["load_avg"] = load_avg()
                    runs.setdefault(f"{name}@{frac:.0%}", []).append(s)
                    log(f"    round {r + 1} {name} at {frac:.0%}: OK {s['ok_share']:.0%} (p50 {s['ok_p50_ms']:.0f} "
                        f"p99 {s['ok_p99_ms']:.0f} ms), refused {s['refused_share']:.0%} (p50 "
                        f"{s['refused_p50_ms']:.1f} p99 {s['refused_p99_ms']:.1f} ms), late {s['late_share']:.0%}, "
                        f"goodput {s['goodput_rps']:.1f} req/s")
                    time.sleep(1.0)  # let the queue drain between runs
    shutil.rmtree(repo, ignore_errors=True)  # the model copy (~90 MB); logs and store stay

    def median(values):  # nan where no round has the figure (e.g. no refusals)
        values = [x for x in values if not np.isnan(x)]
        return float(np.median(values)) if values else float("nan")

    merged = {k: {m: median([s[m] for s in v]) for m in v[0] if m != "load_avg"} for k, v in runs.items()}
    lo, hi = f"shed@{min(fracs):.0%}", f"shed@{max(fracs):.0%}"
    result = {
        "on_model_failure": args.on_model_failure,
        "cpu": cpu_model(), "load_avg": load_avg(), "cpu_pressure": cpu_pressure(),
        "candidates": args.candidates, "capacity_rps": capacity, "alone_p50_ms": alone_ms,
        "closed_loop": sweep, "deadline_ms": deadline_ms, "open_s": args.open_s, "rounds": args.rounds,
        "runs": merged, "runs_by_round": runs,
        "figure": {"p99_ratio": merged[hi]["ok_p99_ms"] / merged[lo]["ok_p99_ms"],
                   "refused_p50_ms": merged[hi]["refused_p50_ms"], "refused_p99_ms": merged[hi]["refused_p99_ms"],
                   "gateway_refused_within_5ms": merged[hi].get("gateway_refused_within_5ms", float("nan"))},
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = "shed" if args.on_model_failure == "fail" else "shed-degrade"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    log(markdown(result))
    log(f"==> wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
