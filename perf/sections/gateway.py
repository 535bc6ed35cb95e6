"""[5/6] The gateway under load: closed loop (concurrency sweep), open loop (Poisson), latency
vs candidates, gateway overhead = end to end - Triton compute per request, event to effect."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from perf.common import cpu_pressure, load_avg, overhead_summary, write_csv
from perf.sections.context import Served, Suite
from perf.sections.triton import apply_config


@dataclass
class GatewayResult:
    sequential_config: dict  # -> "sequential_config": the layout of the sequential measurements
    event_effect: dict  # -> "event_effect"
    closed: list[dict]  # -> "gateway_closed" (gateway_closed.csv)
    opened: list[dict]  # -> "gateway_open" (gateway_open.csv)
    candidates: list[dict]  # -> "gateway_candidates" (gateway_candidates.csv)
    overhead: dict  # -> "gateway_overhead" (per request: gateway_overhead_requests.csv)


def workload_msgs_for_overhead(n: int, candidates: int = 100):
    """``n`` distinct MovieLens requests of ``candidates`` items for the overhead figure."""
    from perf import workload as W
    from perf.loadgen import build_messages

    return build_messages(W.make_requests(n, candidates, seed=1000))


def closed_loop_sweep(ctx: Suite, stack, messages) -> list[dict]:
    from perf.loadgen import closed_loop

    closed = []
    lat1 = 0.0
    for c in sorted(ctx.budget.gw_conc):
        # window and warm-up scale with the latency at this concurrency (~ c x the c=1 latency)
        warm, dur = max(1.0, c * lat1), max(ctx.budget.gw_s, 3 * c * lat1)
        s = asyncio.run(closed_loop(stack.addr, messages, c, dur, warmup_s=warm, candidates=100)).summary()
        lat1 = lat1 or s["p50_ms"] / 1000
        s["window_s"] = dur
        s["load_avg"] = load_avg()
        closed.append(s)
        ctx.log(f"    closed c={c}: {s['rps']:.1f} req/s {s['pairs_per_s']:.0f} pairs/s p50 {s['p50_ms']:.0f} "
                f"p99 {s['p99_ms']:.0f} ms errors {s['errors_by_code'] or 0}")
    return closed


def open_loop_rates(ctx: Suite, stack, messages, capacity: float) -> list[dict]:
    """Poisson arrivals at the budget's fractions of ``capacity`` (req/s)."""
    from perf.loadgen import open_loop

    opened = []
    for frac in ctx.budget.open_rates:
        rate = max(0.2, capacity * frac)
        s = asyncio.run(open_loop(stack.addr, messages, rate, ctx.budget.open_s, candidates=100)).summary()
        s["rate_fraction_of_closed_max"] = frac
        s["load_avg"] = load_avg()
        opened.append(s)
        ctx.log(f"    open {rate:.2f}/s ({frac:.0%} of closed max): p50 {s['p50_ms']:.0f} p95 {s['p95_ms']:.0f} "
                f"p99 {s['p99_ms']:.0f} ms, errors {s['errors_by_code'] or 0}")
    return opened


def latency_vs_candidates(ctx: Suite, stack, cand_msgs: dict, instances: int, max_batch: int) -> list[dict]:
    from perf.loadgen import sequential_overhead

    cands = []
    for n, msgs in cand_msgs.items():
        rows = sequential_overhead(stack.addr, msgs, ctx.budget.cand_n, stack.model_stats,
                                   instances=instances, max_batch=max_batch)
        cands.append(overhead_summary(rows, n))
        ctx.log(f"    {n} candidates (sequential): e2e p50 {cands[-1]['e2e_p50_ms']:.0f} ms, "
                f"overhead p50 {cands[-1]['overhead_p50_ms']:.1f} p99 {cands[-1]['overhead_p99_ms']:.1f} ms")
    return cands


def gateway_overhead(ctx: Suite, stack, instances: int, max_batch: int) -> dict:
    """Overhead at 100 candidates over the budget's sequential requests (each written to
    gateway_overhead_requests.csv), with the CPU pressure around it and the gRPC floor."""
    from perf.loadgen import grpc_floor, sequential_overhead

    n, log = ctx.budget.overhead_n, ctx.log
    log(f"    overhead at 100 candidates, {n} sequential requests ...")
    pressure_before = cpu_pressure()
    # 48 distinct users and candidate lists, cycled: user texts repeat only every 48 requests.
    rows = sequential_overhead(stack.addr, workload_msgs_for_overhead(48), n, stack.model_stats,
                               instances=instances, max_batch=max_batch)
    write_csv(ctx.out / "gateway_overhead_requests.csv", rows)
    ov = overhead_summary(rows, 100)
    ov["cpu_pressure"] = {"before": pressure_before, "after": cpu_pressure(), "load_avg": load_avg()}
    log(f"    overhead p50 {ov['overhead_p50_ms']:.1f} p95 {ov['overhead_p95_ms']:.1f} p99 {ov['overhead_p99_ms']:.1f} ms; "
        f"gateway only (e2e - its infer stage) p99 {ov.get('gateway_only_p99_ms', float('nan')):.1f} ms")
    ov["grpc_floor"] = grpc_floor(stack.addr, n, ov["e2e_p50_ms"] / 1000.0)
    log(f"    gRPC floor (health check, same client, same idle gap): p50 {ov['grpc_floor']['p50_ms']:.2f} "
        f"p99 {ov['grpc_floor']['p99_ms']:.2f} ms")
    if ov["cpu_pressure"]["after"] is not None:
        log(f"    CPU pressure from all processes (PSI some avg60, % of time tasks waited for a CPU): "
            f"{ov['cpu_pressure']['before']['avg60']:.1f} before, {ov['cpu_pressure']['after']['avg60']:.1f} after")
    return ov


def event_effect(ctx: Suite, stack) -> dict:
    from perf.loadgen import event_to_effect

    ev = event_to_effect(stack.addr, workload_msgs_for_overhead(48), ctx.budget.effect_n)
    ctx.log(f"    event -> effect through gRPC ({ev['samples']} new users, {ev['candidates']} candidates): "
            f"RecordEvents p50 {ev['record_p50_ms']:.1f} ms; event sent -> changed ranking received p50 "
            f"{ev['effect_p50_ms']:.1f} p99 {ev['effect_p99_ms']:.1f} ms; ranking changed in {ev['changed']} "
            f"of {ev['samples']}")
    return ev


def section_gateway(ctx: Suite, stack, messages, cand_msgs: dict, served: Served, max_batch: int) -> GatewayResult:
    ctx.log(f"==> [5/6] gateway load (load avg {load_avg()})")
    closed = closed_loop_sweep(ctx, stack, messages)
    opened = open_loop_rates(ctx, stack, messages, capacity=max(s["rps"] for s in closed))
    # Sequential part on one instance: its executions run one after another, so Triton's
    # compute for a request is exactly the sum of its executions' compute times (with several
    # instances the chunks of one request overlap and the statistics cannot say by how much).
    instances, restore = served.instances, served.instances > 1
    if restore:
        apply_config(stack, served.version_dir, {**served.config, "instances": 1, "threads": 2}, served.params)
        instances = 1
        ctx.log("    (sequential measurements on 1 instance x 2 threads, see report)")
    cands = latency_vs_candidates(ctx, stack, cand_msgs, instances, max_batch)
    ov = gateway_overhead(ctx, stack, instances, max_batch)
    ev = event_effect(ctx, stack)
    if restore:
        apply_config(stack, served.version_dir, served.config, served.params)
    write_csv(ctx.out / "gateway_closed.csv", closed)
    write_csv(ctx.out / "gateway_open.csv", opened)
    write_csv(ctx.out / "gateway_candidates.csv", cands)
    return GatewayResult({"instances": instances}, ev, closed, opened, cands, ov)
