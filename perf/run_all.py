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

The sections live in ``perf/sections/`` (one module per kind of measurement); each returns
its result and ``main`` files it under its results.json key, all in one place below.
Results: reports/perf/<section>.csv, report.md, results.json, *.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

from perf.common import load_avg
from perf.sections import engines, gateway, setup, side, triton
from perf.sections.context import BUDGETS, Suite
from server.settings import PROJECT_ROOT

SECTIONS = "engines,shared_prefix,tuning,perf_analyzer,gateway,side"


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--only", default=SECTIONS, help="comma-separated sections to run")
    ap.add_argument("--overhead-n", type=int, help="sequential requests for the gateway-overhead "
                                                   "figure (default: the budget's)")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    budget = BUDGETS[args.budget]
    if args.overhead_n:
        budget = dataclasses.replace(budget, overhead_n=args.overhead_n)
    only = set(args.only.split(","))
    ctx = Suite(args.out, budget)
    log = ctx.log
    setup.fresh_work_dir(ctx)
    t_start = time.time()
    from export.base_model import default_base_model
    from export.engines import ENGINES
    from perf.stack import launch

    if args.engine not in ENGINES:
        ap.error(f"--engine must be one of {ENGINES}")
    hf_dir = args.hf_dir or default_base_model()
    res: dict = {"budget": args.budget, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "engine": args.engine,
                 "hf_dir": str(hf_dir), "model_version": args.model_version or "",
                 "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                             "load_avg_start": load_avg()}}
    log(f"==> rerankd perf suite, budget {args.budget}; results in {ctx.out}")
    served = setup.serve_version(ctx, engine=args.engine, hf_dir=hf_dir, model_version=args.model_version,
                                 render=args.render)
    wl = setup.load_workload(ctx, served.version_dir)
    res["workload"] = wl.stats
    if "engines" in only:
        names = [e for e in args.engines.split(",") if e]
        variant_dir = engines.variant_version(ctx, served.version_dir, wl.prepared, args.engine, names)
        e = engines.section_engines(ctx, variant_dir, wl.prepared, hf_dir, names)
        res.update(engines=e.rows, engine_quality=e.quality, machine_peak=e.peak,
                   flops_per_pair_seq64=e.flops_per_pair)
    if "shared_prefix" in only:
        res["shared_prefix"] = engines.section_shared_prefix(ctx, served.version_dir, hf_dir)
    msgs100, cand_msgs = setup.gateway_messages(ctx, wl.prepared)
    with launch(ctx.work / "model_repository", wl.db, ctx.work / "logs", log=log) as stack:
        log(f"==> [2/6] stack up (load avg {load_avg()})")
        if "tuning" in only:
            t = triton.section_tuning(ctx, stack, served, msgs100)
            served = t.served  # the kept config, for all that follows
            res.update(tuning=t.rows, served_config=t.served_config)
        max_batch = setup.max_batch_size(served.version_dir)
        if "perf_analyzer" in only:
            try:
                res["perf_analyzer"] = triton.section_perf_analyzer(ctx, stack, wl.prepared, served.version_dir)
            except Exception as exc:  # keep the rest of the suite
                log(f"    perf_analyzer section failed: {exc}")
                res["perf_analyzer_error"] = str(exc)
        closed: list[dict] = []
        if "gateway" in only:
            g = gateway.section_gateway(ctx, stack, msgs100, cand_msgs, served, max_batch)
            closed = g.closed
            res.update(sequential_config=g.sequential_config, event_effect=g.event_effect,
                       gateway_closed=g.closed, gateway_open=g.opened, gateway_candidates=g.candidates,
                       gateway_overhead=g.overhead)
        if "side" in only:
            res["side_by_side"] = side.section_side(ctx, stack, served, hf_dir, wl.prepared, closed)
    setup.remove_scratch(ctx)
    res["elapsed_s"] = time.time() - t_start
    res["machine"]["load_avg_end"] = load_avg()
    (ctx.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    from perf.report import write_report

    write_report(ctx.out, res)
    log(f"==> done in {res['elapsed_s']:.0f}s: {ctx.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
