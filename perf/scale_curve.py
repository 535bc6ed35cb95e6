"""The scale curve: throughput and p99 with 1 and 2 gateway processes x 1 and 2 Tritons, side by
side in one run, plus the per-request CPU cost of each tier and the capacity model built on it.

``python -m perf.scale_curve`` starts two Tritons (the project's model repository, served as
configured) and four gateways on free ports: two on the first Triton alone, two on both
(``triton.url = "a,b"``, ``server.triton.pool``). A configuration G x T loads the first G
gateways of the T-Triton pair with a closed loop (``perf.loadgen``) of MovieLens requests of
``--candidates`` items, the concurrency split evenly over the gateways (as a load balancer
in front of them would), at each ``--concurrency`` level; configurations alternate over
``--rounds`` (the machine is shared). Score cache off: every request reaches the model.

CPU per request, per tier: utime + stime from ``/proc/<pid>/stat`` of the gateways in use and
of the Tritons in use (their whole process group: tritonserver and its Python-backend stubs),
and the load generator's own (``getrusage``), over the measured window, divided by the requests
answered in it. Writes ``reports/perf/scale_curve.json`` and ``.md`` (the capacity model's
inputs and its result for 10k and 100k requests/s: ``capacity``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from perf import workload as W
from perf.common import cpu_model, cpu_pressure, load_avg, log
from perf.loadgen import build_messages, closed_loop
from server.devstack import MODEL, gateway_process
from server.settings import PROJECT_ROOT, load_settings
from server.triton.install import ensure_triton
from server.triton.launcher import TritonPorts, TritonServer, free_port, group_members

CONFIGS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (gateways, Tritons)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads) so far; 0 if it is gone."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / _TICK


def group_cpu_seconds(pgid: int) -> float:
    return sum(cpu_seconds(p.pid) for p in group_members(pgid))


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _load(addrs: list[str], messages, concurrency: int, duration_s: float, candidates: int):
    """One closed loop per gateway (its own channel), ``concurrency`` split over them."""
    shares = [concurrency // len(addrs) + (k < concurrency % len(addrs)) for k in range(len(addrs))]
    return await asyncio.gather(*(closed_loop(a, messages, c, duration_s, warmup_s=0.0, candidates=candidates)
                                  for a, c in zip(addrs, shares)))


def measure(gateways: list, tritons: list[TritonServer], messages, concurrency: int, duration_s: float,
            candidates: int) -> dict:
    """One configuration at one concurrency: a short warm-up, then the measured window."""
    addrs = [addr for _, addr in gateways]
    asyncio.run(_load(addrs, messages, concurrency, 1.0, candidates))  # warm-up, not counted

    def snapshot():
        return (sum(cpu_seconds(p.pid) for p, _ in gateways), sum(group_cpu_seconds(t.proc.pid) for t in tritons),
                self_cpu_seconds(), time.monotonic())

    before = snapshot()
    runs = asyncio.run(_load(addrs, messages, concurrency, duration_s, candidates))
    after = snapshot()
    gw, tr, client, wall = (b - a for a, b in zip(before, after))
    ok = sum(r.codes.get("OK", 0) for r in runs)
    errors = sum(sum(v for k, v in r.codes.items() if k != "OK") for r in runs)
    lat = np.array([x for r in runs for x in r.latencies_ms]) if ok else np.array([np.nan])
    return {
        "concurrency": concurrency, "requests_ok": ok, "errors": errors,
        "rps": ok / duration_s, "pairs_per_s": ok * candidates / duration_s,
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        # Requests still in flight at the window's end are not counted (at most ``concurrency``).
        "gateway_cpu_ms_per_req": 1000 * gw / ok if ok else None,
        "triton_cpu_ms_per_req": 1000 * tr / ok if ok else None,
        "client_cpu_ms_per_req": 1000 * client / ok if ok else None,
        "cores_busy": {"gateway": gw / wall, "triton": tr / wall, "client": client / wall},
    }


def redis_ops_per_rerank(item_hit_rate: float, candidates: int, history: int) -> dict:
    """Redis work of one Rerank, from the code path (``server/core/pipeline.py`` ``_gather``,
    ``server/features/redis.py``): one ZREVRANGE of the user's history, then one MGET of the
    item keys the item cache misses (the history's items and the candidates; none when all hit).
    On Redis Cluster that MGET is one per hash slot (pipelined per node): with a few misses among
    16384 slots, about one command per missed item."""
    keys = history + candidates
    misses = keys * (1.0 - item_hit_rate)
    p_any_miss = 1.0 - item_hit_rate ** keys
    return {"commands": 1.0 + p_any_miss, "commands_cluster": 1.0 + misses, "keys_read": 1.0 + misses}


def capacity(costs: dict, *, targets=(10_000, 100_000), utilization: float = 0.6, score_cache_hit: float = 0.0,
             item_cache_hit: float = 0.95, events_per_rerank: float = 0.2, candidates: int = 100,
             history: int = 20, redis_ops_per_shard: float = 100_000.0,
             gpu_pairs_per_s: float = 200_000.0) -> dict:
    """Cores (and GPUs) per tier and Redis ops/s for each target rate of ``candidates``-item
    Reranks, from measured CPU seconds per request (``costs``) and the named assumptions."""
    redis = redis_ops_per_rerank(item_cache_hit, candidates, history)
    rows = []
    for rate in targets:
        model_rate = rate * (1.0 - score_cache_hit)  # requests that reach the model
        gw_cores = rate * costs["gateway_cpu_ms_per_req"] / 1000 / utilization
        triton_cores = model_rate * costs["triton_cpu_ms_per_req"] / 1000 / utilization
        gpus = model_rate * candidates / (gpu_pairs_per_s * utilization)
        # + one script call per RecordEvents; shards sized by the cluster's command count.
        redis_cmds = rate * (redis["commands_cluster"] + events_per_rerank)
        rows.append({"rerank_per_s": rate, "gateway_cores": math.ceil(gw_cores),
                     "gateway_processes": math.ceil(gw_cores),  # one event loop per process: one core each
                     "triton_cpu_cores": math.ceil(triton_cores), "gpus": math.ceil(gpus),
                     "redis_commands_per_s": round(redis_cmds), "redis_keys_read_per_s": round(rate * redis["keys_read"]),
                     "redis_shards": max(1, math.ceil(redis_cmds / (redis_ops_per_shard * utilization)))})
    return {"assumptions": {"utilization": utilization, "score_cache_hit": score_cache_hit,
                            "item_cache_hit": item_cache_hit, "events_per_rerank": events_per_rerank,
                            "candidates": candidates, "history": history,
                            "redis_ops_per_shard": redis_ops_per_shard, "gpu_pairs_per_s": gpu_pairs_per_s},
            "costs": costs, "redis_per_rerank": redis, "rows": rows}


def markdown(result: dict) -> str:
    s = result["setup"]
    lines = ["# Scale curve (`python -m perf.scale_curve`)", "",
             f"CPU: {result['cpu']} ({os.cpu_count()} cores visible); load average {result['load_avg']}, "
             f"PSI before the run {result.get('cpu_pressure_before')}, at its end (ours included) "
             f"{result['cpu_pressure']}. {s['candidates']} candidates a request, closed loop, "
             f"{s['duration_s']:.0f} s windows, {s['rounds']} round(s) (medians), score cache off, model "
             f"`{s['repo']}` as configured (its config.pbtxt). G gateways split the concurrency evenly; "
             "CPU ms per request from /proc (gateways; Tritons with their backend stubs; the load generator).", "",
             "| gateways x Tritons | concurrency | req/s | pairs/s | p50 ms | p99 ms | errors | gateway CPU ms/req "
             "| Triton CPU ms/req | client CPU ms/req | cores busy (gw / Triton / client) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["table"]:
        b = row["cores_busy"]
        lines.append(f"| {row['config']} | {row['concurrency']} | {row['rps']:.0f} | {row['pairs_per_s']:.0f} | "
                     f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']:.0f} | "
                     f"{row['gateway_cpu_ms_per_req']:.2f} | {row['triton_cpu_ms_per_req']:.2f} | "
                     f"{row['client_cpu_ms_per_req']:.2f} | {b['gateway']:.2f} / {b['triton']:.2f} / "
                     f"{b['client']:.2f} |")
    cap = result["capacity"]
    a = cap["assumptions"]
    lines += ["", f"Capacity model (costs: gateway {cap['costs']['gateway_cpu_ms_per_req']:.2f}, Triton "
              f"{cap['costs']['triton_cpu_ms_per_req']:.2f} CPU ms per request, from {cap['costs']['from']}); "
              f"assumptions: {a}", "",
              f"Redis per Rerank: {cap['redis_per_rerank']}", "",
              "| Rerank/s | gateway cores (processes) | Triton CPU cores | or GPUs (assumed rate) "
              "| Redis Cluster commands/s | Redis keys read/s | Redis shards |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in cap["rows"]:
        lines.append(f"| {r['rerank_per_s']:,} | {r['gateway_cores']} | {r['triton_cpu_cores']} | {r['gpus']} | "
                     f"{r['redis_commands_per_s']:,} | {r['redis_keys_read_per_s']:,} | {r['redis_shards']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=PROJECT_ROOT / "model_repository")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--concurrency", default="4,16", help="total closed-loop concurrency levels")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json in --out")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    out = args.out.resolve()
    if args.render:
        result = json.loads((out / "scale_curve.json").read_text())  # the model again, same measured costs
        result["capacity"] = capacity(result["capacity"]["costs"], candidates=result["setup"]["candidates"])
        (out / "scale_curve.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "scale_curve.md").write_text(markdown(result))
        log(markdown(result))
        return 0
    work = out / "work" / "scale"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    db = work / "store.db"
    if not db.exists():
        W.load_store(db, log=log)
    messages = build_messages(W.make_requests(64, args.candidates, seed=17))
    pressure_before = cpu_pressure()  # other load on the machine before ours starts
    install = ensure_triton(load_settings(env={}).triton.install_dir, log=log)
    env = {"RERANKD_TRITON_POLL_INTERVAL_S": "0.5", "RERANKD_SERVER_MAX_CANDIDATES": str(max(args.candidates, 300)),
           "RERANKD_SERVER_MAX_IN_FLIGHT": "256", "RERANKD_SERVER_SCORE_CACHE_SIZE": "0",
           "RERANKD_STORE_URL": f"sqlite:///{db}"}
    samples: dict[tuple[str, int], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        tritons = []
        for k in range(2):
            t = TritonServer(install, args.repo, ports=TritonPorts.free(), log_path=work / "logs" / f"triton{k}.log",
                             load_models=[MODEL])
            t.start()
            stack.callback(t.stop)
            tritons.append(t)
        for t in tritons:
            t.wait_ready(300)
        urls = {1: tritons[0].grpc_url, 2: f"{tritons[0].grpc_url},{tritons[1].grpc_url}"}
        # Metrics on, as a deployed gateway runs (their cost is part of the figures).
        gateways = {(n_t, g): stack.enter_context(gateway_process(
            urls[n_t], args.repo, work / "logs" / f"gateway-t{n_t}-{g}.log",
            RERANKD_TELEMETRY_METRICS_PORT=str(free_port()), **env)) for n_t in (1, 2) for g in range(2)}
        log(f"==> 2 Tritons + 4 gateways up; {args.candidates} candidates, levels {levels}, "
            f"{args.rounds} round(s) of {args.duration:.0f} s windows")
        for r in range(args.rounds):
            for n_g, n_t in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
                for c in levels:
                    row = measure([gateways[(n_t, g)] for g in range(n_g)], tritons[:n_t], messages, c,
                                  args.duration, args.candidates)
                    samples.setdefault((f"{n_g}x{n_t}", c), []).append(row)
                    log(f"    round {r + 1} {n_g} gateway(s) x {n_t} Triton(s), c={c}: {row['rps']:.0f} req/s, "
                        f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}, CPU ms/req gateway "
                        f"{row['gateway_cpu_ms_per_req']:.2f} Triton {row['triton_cpu_ms_per_req']:.2f} "
                        f"client {row['client_cpu_ms_per_req']:.2f}")
    table = []
    for (config, c), rows in samples.items():
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]
               if isinstance(rows[0][k], (int, float)) and k != "concurrency"}
        med["cores_busy"] = {k: float(np.median([r["cores_busy"][k] for r in rows])) for k in rows[0]["cores_busy"]}
        table.append({"config": config, "concurrency": c, **med, "rounds": rows})
    table.sort(key=lambda r: (CONFIGS.index(tuple(int(x) for x in r["config"].split("x"))), r["concurrency"]))
    # The model's costs: one gateway on one Triton at the highest level (the whole machine busy, so the
    # per-request costs include what contention adds: conservative).
    base = next(r for r in table if r["config"] == "1x1" and r["concurrency"] == max(levels))
    costs = {"gateway_cpu_ms_per_req": base["gateway_cpu_ms_per_req"],
             "triton_cpu_ms_per_req": base["triton_cpu_ms_per_req"], "from": f"1x1 at concurrency {max(levels)}"}
    result = {"cpu": cpu_model(), "cpu_pressure_before": pressure_before, "cpu_pressure": cpu_pressure(),
              "load_avg": load_avg(),
              "setup": {"candidates": args.candidates, "levels": levels, "duration_s": args.duration,
                        "rounds": args.rounds, "repo": str(args.repo)},
              "table": table, "capacity": capacity(costs, candidates=args.candidates)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "scale_curve.md").write_text(markdown(result))
    log(markdown(result))
    shutil.rmtree(work / "logs", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
