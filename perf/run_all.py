"""The whole benchmark suite, one command: ``make perf`` = ``python -m perf.run_all --budget short``.

1. engines   in-process engine variants on the same real token ids (interleaved rounds),
             pairs/s at seq 64 and on real requests, share of the CPU's nominal peak, and
             agreement of each variant's scores with fp32 (Spearman / top-10 overlap);
2. stack     Triton + gateway on free ports, the served engine exported into a scratch
             model repository (reports/perf/work/), MovieLens loaded into a scratch store;
3. tuning    Triton config grid (instances x threads, batcher, max batch, sub-batch),
             measured end to end; the best is kept for what follows;
4. model     perf_analyzer concurrency sweep on the ``reranker`` model with real token ids;
5. gateway   closed loop (concurrency sweep), open loop (Poisson), latency vs candidates,
             gateway overhead = end to end - Triton compute, per request;
6. side      (a) engine in-process, (b) CrossEncoder.predict, (c) rerankd, ratios c/a, c/b.

Results: reports/perf/<section>.csv, report.md, results.json, *.png.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from server.settings import PROJECT_ROOT

BUDGETS = {
    # seconds per measurement, rounds, ...
    "short": dict(engine_s=1.5, engine_rounds=3, engine_batches=3, quality_requests=6,
                  tune_s=9.0, tune_warm=2.5, tune_passes=2, pa_ms=2000, pa_conc=[1, 2, 4], gw_s=5.0, gw_conc=[1, 2, 4, 8],
                  open_s=8.0, open_rates=[0.5, 0.8, 1.0], cand_n=6, cands=[10, 50, 100, 200, 500],
                  overhead_n=300, effect_n=50, side_s=4.0, side_rounds=3, tune_grid="short"),
    # a quick end-to-end check of the suite itself (numbers too short to quote)
    "smoke": dict(engine_s=0.3, engine_rounds=1, engine_batches=1, quality_requests=2,
                  tune_s=1.5, tune_warm=0.5, tune_passes=1, pa_ms=1000, pa_conc=[1], gw_s=1.5, gw_conc=[1, 2],
                  open_s=2.0, open_rates=[0.5], cand_n=2, cands=[10, 100],
                  overhead_n=5, effect_n=3, side_s=1.0, side_rounds=1, tune_grid="short"),
    "full": dict(engine_s=3.0, engine_rounds=5, engine_batches=6, quality_requests=30,
                 tune_s=20.0, tune_warm=3.0, tune_passes=3, pa_ms=5000, pa_conc=[1, 2, 4, 8], gw_s=15.0, gw_conc=[1, 2, 4, 8, 16, 32],
                 open_s=30.0, open_rates=[0.25, 0.5, 0.75, 0.9, 1.0, 1.2], cand_n=20,
                 cands=[10, 50, 100, 200, 500], overhead_n=1000, effect_n=200, side_s=10.0, side_rounds=5,
                 tune_grid="full"),
}
THREADS = 2


def log(msg: str) -> None:
    print(msg, flush=True)


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_pressure() -> dict[str, float] | None:
    """Linux PSI ``some`` averages (% of time runnable tasks waited for a CPU) over the last
    10 and 60 s: on a shared machine, how much other load there was (None where absent)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return {"avg10": float(fields["avg10"]), "avg60": float(fields["avg60"])}


# -- sections --------------------------------------------------------------------------
def section_engines(out: Path, vd: Path, prepared, b: dict, hf_dir: Path | None, engines: list[str], res: dict):
    from perf.engines_bench import (
        compare_engines,
        default_variants,
        fixed_length_batches,
        flops_per_pair,
        machine_peak,
        quality_vs_fp32,
    )

    log(f"==> [1/6] engines in-process ({THREADS} threads; load avg {load_avg()})")
    variants = default_variants(engines)
    fixed = fixed_length_batches(prepared, 64)[:b["engine_batches"]]
    real = [p.arrays for p in prepared[:b["engine_batches"]]]
    rows = compare_engines(vd, variants, {"seq64_b100": fixed, "real_requests": real}, seconds=b["engine_s"],
                           rounds=b["engine_rounds"], threads=THREADS, hf_dir=hf_dir,
                           torch_dtypes=("fp32", "bf16") if hf_dir else (), trim_options=(True, False), log=log)
    peak = machine_peak()
    cfg = json.loads((Path(hf_dir) / "config.json").read_text()) if hf_dir else None
    fl = flops_per_pair(cfg, 64) if cfg else None
    for r in rows:
        if fl and r["workload"] == "seq64_b100":
            gf = r["pairs_per_s"] * fl / 1e9
            r["gflops"] = gf
            int8 = "int8" in r["variant"]
            r["peak_used"] = "int8" if int8 else ("bf16" if "bf16" in r["variant"] else "fp32")
            r["share_of_peak"] = gf / (peak["peak_int8_gops"] if int8 else
                                       peak["peak_bf16_gflops"] if "bf16" in r["variant"] else peak["peak_fp32_gflops"])
    write_csv(out / "engines.csv", rows)
    log("    quality vs fp32 ...")
    qrows = quality_vs_fp32(vd, variants, [p.arrays for p in prepared[:b["quality_requests"]]], THREADS)
    write_csv(out / "engine_quality.csv", qrows)
    res["engines"], res["engine_quality"], res["machine_peak"] = rows, qrows, peak
    res["flops_per_pair_seq64"] = fl


def tune_grid(kind: str, spec) -> list[dict]:
    base = {"instances": 1, "threads": 2, "preferred": tuple(spec.preferred_batch_sizes),
            "delay_us": spec.max_queue_delay_us, "max_batch": spec.max_batch_size, "sub_batch": "32"}
    grid = [base,
            {**base, "max_batch": 64, "preferred": (16, 32, 64)},
            {**base, "instances": 2, "threads": 1},
            # 100 candidates as 50 + 50 (the gateway splits at max batch) on two instances
            {**base, "instances": 2, "threads": 1, "max_batch": 50, "preferred": (50,)},
            # a whole request per engine call on each of two instances (in-process, one call
            # per request was the fastest engine setting: the full grid's 1 x 2 threads pick)
            {**base, "instances": 2, "threads": 1, "sub_batch": "128"}]
    if kind == "full":
        grid += [{**base, "sub_batch": "64"},
                 {**base, "delay_us": 2000},
                 {**base, "delay_us": 5000},
                 {**base, "instances": 2, "threads": 1, "max_batch": 64, "preferred": (32, 64)},
                 {**base, "sub_batch": "128"},
                 {**base, "threads": 1}]
    return grid


def apply_config(stack, vd: Path, cfg: dict, params: dict) -> tuple[Path, dict]:
    """Serve ``cfg``: a new version (hard-linked files) when max batch changes the spec the
    gateway splits by, else a config reload. Returns (version dir, parameters)."""
    import dataclasses

    from contract.model_spec import Manifest

    manifest = Manifest.read(vd / "manifest.json")
    spec = dataclasses.replace(manifest.spec, max_batch_size=cfg["max_batch"],
                               preferred_batch_sizes=tuple(cfg["preferred"]), max_queue_delay_us=cfg["delay_us"])
    new_params = {**params, "intra_op_threads": str(cfg["threads"]), "sub_batch": cfg["sub_batch"]}
    target = vd
    if spec.max_batch_size != manifest.spec.max_batch_size:
        target = vd.parent / str(int(vd.name) + 1)
        shutil.copytree(vd, target, copy_function=lambda s, d: Path(d).hardlink_to(s))
        (target / "manifest.json").unlink()
        Manifest(**{**manifest.__dict__, "spec": spec}).write(target / "manifest.json")
    stack.reload(spec.config_pbtxt(instance_count=cfg["instances"], parameters=new_params))
    if target != vd:  # wait until the gateway follows the new version
        from perf.loadgen import build_messages

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _served_version(stack.addr, build_messages(_tiny_request())) == target.name:
                break
            time.sleep(0.5)
    return target, new_params


def _tiny_request():
    from perf.workload import Request

    return [Request("1", ("1", "2"))]


def _served_version(addr: str, msgs) -> str:
    import grpc

    from server.api.pb import reranker_pb2_grpc

    with grpc.insecure_channel(addr) as ch:
        try:
            return reranker_pb2_grpc.RerankerStub(ch).Rerank(msgs[0], timeout=10).model_version
        except grpc.RpcError:
            return ""


def section_tuning(out: Path, stack, vd: Path, params: dict, messages, b: dict, res: dict) -> tuple[Path, dict, dict]:
    from contract.model_spec import Manifest
    from perf.loadgen import closed_loop

    log(f"==> [3/6] Triton config tuning, closed loop c=4, 100 candidates (load avg {load_avg()})")
    spec = Manifest.read(vd / "manifest.json").spec
    grid = tune_grid(b["tune_grid"], spec)
    per: dict[int, list[dict]] = {i: [] for i in range(len(grid))}
    current_vd, current_params = vd, params
    for p in range(b["tune_passes"]):  # passes interleave the configs (the machine is shared)
        for i, cfg in enumerate(grid):
            current_vd, current_params = apply_config(stack, current_vd, cfg, params)
            s = asyncio.run(closed_loop(stack.addr, messages, 4, b["tune_s"], warmup_s=b["tune_warm"],
                                        candidates=100)).summary()
            s["load_avg"] = load_avg()
            per[i].append(s)
            log(f"    pass {p + 1}: {cfg} -> {s['pairs_per_s']:.0f} pairs/s p99 {s['p99_ms']:.0f} ms")
    rows, best = [], None
    for i, cfg in enumerate(grid):
        runs = per[i]
        row = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
               "pairs_per_s": float(np.median([r["pairs_per_s"] for r in runs])),
               "pairs_per_s_runs": [round(r["pairs_per_s"], 1) for r in runs],
               "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
               "p99_ms": float(np.median([r["p99_ms"] for r in runs])),
               "errors": sum(r["errors"] for r in runs), "load_avg": runs[-1]["load_avg"]}
        rows.append(row)
        if row["errors"] == 0 and (best is None or row["pairs_per_s"] > best[1]["pairs_per_s"]):
            best = (cfg, row)
    write_csv(out / "tuning.csv", rows)
    res["tuning"] = rows
    cfg = best[0] if best else tune_grid("short", spec)[0]
    log(f"    kept {cfg}")
    current_vd, current_params = apply_config(stack, current_vd, cfg, params)
    res["served_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return current_vd, current_params, cfg


def section_perf_analyzer(out: Path, stack, prepared, vd: Path, b: dict, res: dict):
    from contract.model_spec import Manifest
    from perf.perf_analyzer import (
        ensure_perf_analyzer,
        rows_at_bucket,
        run_sweep,
        write_input_data,
    )

    log(f"==> [4/6] perf_analyzer on the reranker model (load avg {load_avg()})")
    pa = ensure_perf_analyzer(log=log)
    spec = Manifest.read(vd / "manifest.json").spec
    batch = min(64, spec.max_batch_size)  # the gateway sends <= max_batch_size rows per request
    rows = []
    from perf.engines_bench import fixed_length_batches

    common = max({p.seq_len for p in prepared}, key=lambda s: sum(p.seq_len == s for p in prepared))
    full64 = [{k: v[i] for k, v in fb.items()} for fb in fixed_length_batches(prepared, 64)[:3]
              for i in range(fb["input_ids"].shape[0])]
    inputs = {f"real pairs padded to {common}": rows_at_bucket([p.arrays for p in prepared], common, limit=256),
              "64 attended tokens": full64[:256]}
    for seq, pa_rows in inputs.items():
        data = write_input_data(out / "work" / f"pa_input_{len(pa_rows)}_{seq.split()[0]}.json", pa_rows)
        for conc in b["pa_conc"]:
            try:
                r = run_sweep(pa, model="reranker", grpc_url=stack.triton.grpc_url, input_json=data, batch=batch,
                              concurrency=[conc], out_csv=out / "work" / f"pa_{seq.split()[0]}_c{conc}.csv",
                              measurement_ms=b["pa_ms"], log=lambda *_: None)
            except Exception as exc:
                log(f"    seq {seq} c={conc}: {exc}")
                continue
            for row in r:
                row["seq"] = seq
                rows.append(row)
                log(f"    seq {seq} batch {batch} c={conc}: {row['pairs_per_s']:.0f} pairs/s, "
                    f"p99 {float(row.get('p99 latency', 0)) / 1000:.0f} ms")
    write_csv(out / "perf_analyzer.csv", rows)
    res["perf_analyzer"] = rows


def section_gateway(out: Path, stack, workload_msgs, cand_msgs: dict, b: dict, res: dict, instances: int = 1,
                    served: tuple | None = None, max_batch: int = 64):
    from perf.loadgen import (
        closed_loop,
        event_to_effect,
        grpc_floor,
        open_loop,
        sequential_overhead,
    )

    log(f"==> [5/6] gateway load (load avg {load_avg()})")
    closed = []
    lat1 = 0.0
    for c in sorted(b["gw_conc"]):
        # window and warm-up scale with the latency at this concurrency (~ c x the c=1 latency)
        warm, dur = max(1.0, c * lat1), max(b["gw_s"], 3 * c * lat1)
        s = asyncio.run(closed_loop(stack.addr, workload_msgs, c, dur, warmup_s=warm, candidates=100)).summary()
        lat1 = lat1 or s["p50_ms"] / 1000
        s["window_s"] = dur
        s["load_avg"] = load_avg()
        closed.append(s)
        log(f"    closed c={c}: {s['rps']:.1f} req/s {s['pairs_per_s']:.0f} pairs/s p50 {s['p50_ms']:.0f} "
            f"p99 {s['p99_ms']:.0f} ms errors {s['errors_by_code'] or 0}")
    capacity = max(s["rps"] for s in closed)
    opened = []
    for frac in b["open_rates"]:
        rate = max(0.2, capacity * frac)
        s = asyncio.run(open_loop(stack.addr, workload_msgs, rate, b["open_s"], candidates=100)).summary()
        s["rate_fraction_of_closed_max"] = frac
        s["load_avg"] = load_avg()
        opened.append(s)
        log(f"    open {rate:.2f}/s ({frac:.0%} of closed max): p50 {s['p50_ms']:.0f} p95 {s['p95_ms']:.0f} "
            f"p99 {s['p99_ms']:.0f} ms, errors {s['errors_by_code'] or 0}")
    # Sequential part on one instance: its executions run one after another, so Triton's
    # compute for a request is exactly the sum of its executions' compute times (with several
    # instances the chunks of one request overlap and the statistics cannot say by how much).
    restore = None
    if served is not None and served[2]["instances"] > 1:
        vd, params, cfg = served
        apply_config(stack, vd, {**cfg, "instances": 1, "threads": 2}, params)
        restore, instances = served, 1
        log("    (sequential measurements on 1 instance x 2 threads, see report)")
    res["sequential_config"] = {"instances": instances}
    cands = []
    for n, msgs in cand_msgs.items():
        rows = sequential_overhead(stack.addr, msgs, b["cand_n"], stack.model_stats,
                                   instances=instances, max_batch=max_batch)
        cands.append(_overhead_summary(rows, n))
        log(f"    {n} candidates (sequential): e2e p50 {cands[-1]['e2e_p50_ms']:.0f} ms, "
            f"overhead p50 {cands[-1]['overhead_p50_ms']:.1f} p99 {cands[-1]['overhead_p99_ms']:.1f} ms")
    log(f"    overhead at 100 candidates, {b['overhead_n']} sequential requests ...")
    pressure_before = cpu_pressure()
    # 48 distinct users and candidate lists, cycled: user texts repeat only every 48 requests.
    rows = sequential_overhead(stack.addr, workload_msgs_for_overhead(48), b["overhead_n"], stack.model_stats,
                               instances=instances, max_batch=max_batch)
    write_csv(out / "gateway_overhead_requests.csv", rows)
    ov = _overhead_summary(rows, 100)
    ov["cpu_pressure"] = {"before": pressure_before, "after": cpu_pressure(), "load_avg": load_avg()}
    log(f"    overhead p50 {ov['overhead_p50_ms']:.1f} p95 {ov['overhead_p95_ms']:.1f} p99 {ov['overhead_p99_ms']:.1f} ms; "
        f"gateway only (e2e - its infer stage) p99 {ov.get('gateway_only_p99_ms', float('nan')):.1f} ms")
    ov["grpc_floor"] = grpc_floor(stack.addr, b["overhead_n"], ov["e2e_p50_ms"] / 1000.0)
    log(f"    gRPC floor (health check, same client, same idle gap): p50 {ov['grpc_floor']['p50_ms']:.2f} "
        f"p99 {ov['grpc_floor']['p99_ms']:.2f} ms")
    if ov["cpu_pressure"]["after"] is not None:
        log(f"    CPU pressure from all processes (PSI some avg60, % of time tasks waited for a CPU): "
            f"{ov['cpu_pressure']['before']['avg60']:.1f} before, {ov['cpu_pressure']['after']['avg60']:.1f} after")
    ev = event_to_effect(stack.addr, workload_msgs_for_overhead(48), b["effect_n"])
    res["event_effect"] = ev
    log(f"    event -> effect through gRPC ({ev['samples']} new users, {ev['candidates']} candidates): "
        f"RecordEvents p50 {ev['record_p50_ms']:.1f} ms; event sent -> changed ranking received p50 "
        f"{ev['effect_p50_ms']:.1f} p99 {ev['effect_p99_ms']:.1f} ms; ranking changed in {ev['changed']} of {ev['samples']}")
    if restore is not None:
        apply_config(stack, restore[0], restore[2], restore[1])
    write_csv(out / "gateway_closed.csv", closed)
    write_csv(out / "gateway_open.csv", opened)
    write_csv(out / "gateway_candidates.csv", cands)
    res.update(gateway_closed=closed, gateway_open=opened, gateway_candidates=cands, gateway_overhead=ov)


def workload_msgs_for_overhead(n: int, candidates: int = 100):
    """``n`` distinct MovieLens requests of ``candidates`` items for the overhead figure."""
    from perf import workload as W
    from perf.loadgen import build_messages

    return build_messages(W.make_requests(n, candidates, seed=1000))


def _overhead_summary(rows: list[dict], n: int) -> dict:
    ok = [r for r in rows if r.get("code") == "OK"]
    out = {"candidates": n, "requests": len(ok), "errors": len(rows) - len(ok)}
    if not ok:
        return out
    for key in ("e2e_ms", "triton_compute_ms", "triton_queue_ms", "overhead_ms", "gateway_only_ms", "transport_ms"):
        if not all(key in r for r in ok):
            continue
        v = np.array([r[key] for r in ok])
        base = key[:-3]
        out.update({f"{base}_p50_ms": float(np.percentile(v, 50)), f"{base}_p95_ms": float(np.percentile(v, 95)),
                    f"{base}_p99_ms": float(np.percentile(v, 99))})
    for k in sorted({k for r in ok for k in r if k.startswith("gw_")}):
        out[f"{k[:-3]}_p50_ms"] = float(np.median([r[k] for r in ok if k in r]))
    out["pairs_per_s_sequential"] = n / (out["e2e_p50_ms"] / 1000)
    return out


def section_side(out: Path, stack, vd: Path, params: dict, hf_dir: Path, prepared, b: dict, res: dict):
    from perf import side_by_side

    # (c) at saturation, as the issue defines c/a: the smallest concurrency of the closed-loop
    # sweep within 3% of its best throughput (c=2 left two instances idle between requests).
    closed = res.get("gateway_closed") or []
    best = max((s["pairs_per_s"] for s in closed), default=0.0)
    conc = int(min((s["level"] for s in closed if s["pairs_per_s"] >= 0.97 * best), default=4))
    log(f"==> [6/6] side by side (a) engine (b) CrossEncoder (c) rerankd at concurrency {conc} "
        f"(load avg {load_avg()})")
    # (a) gets the machine's threads in one engine, whatever the served instance layout.
    r = side_by_side.run(vd, {**params, "intra_op_threads": str(THREADS)}, hf_dir, prepared, stack.addr, threads=THREADS, seconds=b["side_s"],
                         rounds=b["side_rounds"], concurrency=conc, log=log)
    res["side_by_side"] = r
    rows = [{"system": k, **v} for k, v in r.items() if isinstance(v, dict)]
    write_csv(out / "side_by_side.csv", rows)


# -- main -------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="rerankd benchmark suite")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="short")
    ap.add_argument("--hf-dir", type=Path, help="Hugging Face cross-encoder (default: packaged MiniLM-L6)")
    ap.add_argument("--model-version", help="serve this version of model_repository/reranker instead of "
                                            "exporting --hf-dir (its model.onnx; --hf-dir is still used for (b))")
    ap.add_argument("--render", default="", help="render options (JSON, RenderOptions.to_dict()) the --hf-dir "
                                                 "checkpoint was trained with (item-ID tokens...)")
    ap.add_argument("--engine", default="openvino_int8", help="served engine (export.engines.ENGINES)")
    ap.add_argument("--engines", default="onnxruntime,onnxruntime_int8,openvino,openvino_int8",
                    help="engines compared in-process")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf")
    ap.add_argument("--only", default="engines,tuning,perf_analyzer,gateway,side",
                    help="comma-separated sections to run")
    ap.add_argument("--overhead-n", type=int, help="sequential requests for the gateway-overhead "
                                                   "figure (default: the budget's)")
    args = ap.parse_args(argv)
    b = dict(BUDGETS[args.budget])
    if args.overhead_n:
        b["overhead_n"] = args.overhead_n
    only = set(args.only.split(","))
    out: Path = args.out
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    t_start = time.time()
    from export.base_model import default_base_model
    from export.engines import ENGINES
    from perf import workload as W
    from perf.loadgen import build_messages
    from perf.stack import launch, prepare_repo

    if args.engine not in ENGINES:
        ap.error(f"--engine must be one of {ENGINES}")
    hf_dir = args.hf_dir or default_base_model()
    res: dict = {"budget": args.budget, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "engine": args.engine,
                 "hf_dir": str(hf_dir), "model_version": args.model_version or "",
                 "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                             "load_avg_start": load_avg()}}
    log(f"==> rerankd perf suite, budget {args.budget}; results in {out}")
    src_version = PROJECT_ROOT / "model_repository" / "reranker" / args.model_version if args.model_version else None
    vd = prepare_repo(work / "model_repository", engine=args.engine, hf_dir=hf_dir, version_dir=src_version,
                      render=json.loads(args.render) if args.render else None, log=log)
    db = W.load_store(work / "store.db", log=log)
    texts = W.GatewayTexts(db, vd)
    prepared = texts.prepare(W.make_requests(24, 100, seed=0))
    res["workload"] = W.length_stats(prepared)
    log(f"    workload: {res['workload']}")
    from export.engines import ENGINE_PARAMETERS
    from export.write_repo import DEFAULT_PARAMETERS

    params = {**DEFAULT_PARAMETERS, **ENGINE_PARAMETERS[args.engine], "engine": args.engine}
    engines = [e for e in args.engines.split(",") if e]
    if "engines" in only:
        # Every variant needs its own files next to model.onnx.
        from export.engines import build_engine_files, calibration_feeds

        for e in engines:
            if e != args.engine and e in ("onnxruntime_int8", "openvino_int8"):
                build_engine_files(e, vd / "model.onnx", work / "variants",
                                   calibration_feeds([p.arrays for p in prepared[12:]]))
        variant_dir = work / "variants_version"
        shutil.copytree(vd, variant_dir)
        for name in ("model.int8.onnx", "openvino_int8"):
            src = work / "variants" / name
            if src.exists() and not (variant_dir / name).exists():
                (shutil.copytree if src.is_dir() else shutil.copyfile)(src, variant_dir / name)
        section_engines(out, variant_dir, prepared, b, hf_dir, engines, res)
    msgs100 = build_messages([p.request for p in prepared])
    cand_msgs = {n: build_messages(W.make_requests(max(b["cand_n"], 4), n, seed=n)) for n in b["cands"]}
    with launch(work / "model_repository", db, work / "logs", log=log) as stack:
        log(f"==> [2/6] stack up (load avg {load_avg()})")
        instances, served = 1, None
        if "tuning" in only:
            vd, params, kept = section_tuning(out, stack, vd, params, msgs100, b, res)
            instances, served = kept["instances"], (vd, params, kept)
        from contract.model_spec import Manifest

        max_batch = Manifest.read(vd / "manifest.json").spec.max_batch_size
        if "perf_analyzer" in only:
            try:
                section_perf_analyzer(out, stack, prepared, vd, b, res)
            except Exception as exc:  # keep the rest of the suite
                log(f"    perf_analyzer section failed: {exc}")
                res["perf_analyzer_error"] = str(exc)
        if "gateway" in only:
            section_gateway(out, stack, msgs100, cand_msgs, b, res, instances=instances, served=served,
                            max_batch=max_batch)
        if "side" in only:
            section_side(out, stack, vd, params, hf_dir, prepared, b, res)
    for scratch in ("variants", "variants_version", "model_repository-fp32"):  # ~300 MB of model copies
        shutil.rmtree(work / scratch, ignore_errors=True)
    res["elapsed_s"] = time.time() - t_start
    res["machine"]["load_avg_end"] = load_avg()
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    from perf.report import write_report

    write_report(out, res)
    log(f"==> done in {res['elapsed_s']:.0f}s: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
