"""Triton alone and its configuration: [3/6] the config grid (instances x threads, batcher,
max batch, sub-batch) measured end to end, the best kept; [4/6] perf_analyzer on the model."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from perf.common import load_avg, write_csv
from perf.sections.context import Served, Suite


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


def listed(cfg: dict) -> dict:
    """A grid row with its tuples as lists (as JSON and CSV show it)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def apply_config(stack, vd: Path, cfg: dict, params: dict) -> Served:
    """Serve ``cfg`` (a grid row) from version ``vd`` with ``params`` overridden by the row's:
    a new version (hard-linked files) when max batch changes the spec the gateway splits by,
    else a config reload. Returns what is served."""
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
    return Served(target, new_params, cfg)


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


@dataclasses.dataclass
class TuningResult:
    rows: list[dict]  # -> "tuning" (tuning.csv): per grid row, medians over the passes
    served: Served  # the kept row, applied

    @property
    def served_config(self) -> dict:  # -> "served_config"
        return listed(self.served.config)


def section_tuning(ctx: Suite, stack, served: Served, messages) -> TuningResult:
    from contract.model_spec import Manifest
    from perf.loadgen import closed_loop

    b, log = ctx.budget, ctx.log
    log(f"==> [3/6] Triton config tuning, closed loop c=4, 100 candidates (load avg {load_avg()})")
    vd, params = served.version_dir, served.params
    spec = Manifest.read(vd / "manifest.json").spec
    grid = tune_grid(b.tune_grid, spec)
    per: dict[int, list[dict]] = {i: [] for i in range(len(grid))}
    current_vd = vd
    for p in range(b.tune_passes):  # passes interleave the configs (the machine is shared)
        for i, cfg in enumerate(grid):
            current_vd = apply_config(stack, current_vd, cfg, params).version_dir
            s = asyncio.run(closed_loop(stack.addr, messages, 4, b.tune_s, warmup_s=b.tune_warm,
                                        candidates=100)).summary()
            s["load_avg"] = load_avg()
            per[i].append(s)
            log(f"    pass {p + 1}: {cfg} -> {s['pairs_per_s']:.0f} pairs/s p99 {s['p99_ms']:.0f} ms")
    rows, best = [], None
    for i, cfg in enumerate(grid):
        runs = per[i]
        row = {**listed(cfg),
               "pairs_per_s": float(np.median([r["pairs_per_s"] for r in runs])),
               "pairs_per_s_runs": [round(r["pairs_per_s"], 1) for r in runs],
               "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
               "p99_ms": float(np.median([r["p99_ms"] for r in runs])),
               "errors": sum(r["errors"] for r in runs), "load_avg": runs[-1]["load_avg"]}
        rows.append(row)
        if row["errors"] == 0 and (best is None or row["pairs_per_s"] > best[1]["pairs_per_s"]):
            best = (cfg, row)
    write_csv(ctx.out / "tuning.csv", rows)
    cfg = best[0] if best else tune_grid("short", spec)[0]
    log(f"    kept {cfg}")
    return TuningResult(rows, apply_config(stack, current_vd, cfg, params))


def section_perf_analyzer(ctx: Suite, stack, prepared: list, vd: Path) -> list[dict]:
    """-> "perf_analyzer" (perf_analyzer.csv): concurrency sweep on the reranker model."""
    from contract.model_spec import Manifest
    from perf.engines_bench import fixed_length_batches
    from perf.perf_analyzer import (
        ensure_perf_analyzer,
        rows_at_bucket,
        run_sweep,
        write_input_data,
    )

    b, log, work = ctx.budget, ctx.log, ctx.work
    log(f"==> [4/6] perf_analyzer on the reranker model (load avg {load_avg()})")
    pa = ensure_perf_analyzer(log=log)
    spec = Manifest.read(vd / "manifest.json").spec
    batch = min(64, spec.max_batch_size)  # the gateway sends <= max_batch_size rows per request
    rows = []
    common = max({p.seq_len for p in prepared}, key=lambda s: sum(p.seq_len == s for p in prepared))
    full64 = [{k: v[i] for k, v in fb.items()} for fb in fixed_length_batches(prepared, 64)[:3]
              for i in range(fb["input_ids"].shape[0])]
    inputs = {f"real pairs padded to {common}": rows_at_bucket([p.arrays for p in prepared], common, limit=256),
              "64 attended tokens": full64[:256]}
    for seq, pa_rows in inputs.items():
        data = write_input_data(work / f"pa_input_{len(pa_rows)}_{seq.split()[0]}.json", pa_rows)
        for conc in b.pa_conc:
            try:
                r = run_sweep(pa, model="reranker", grpc_url=stack.triton.grpc_url, input_json=data, batch=batch,
                              concurrency=[conc], out_csv=work / f"pa_{seq.split()[0]}_c{conc}.csv",
                              measurement_ms=b.pa_ms, log=lambda *_: None)
            except Exception as exc:
                log(f"    seq {seq} c={conc}: {exc}")
                continue
            for row in r:
                row["seq"] = seq
                rows.append(row)
                log(f"    seq {seq} batch {batch} c={conc}: {row['pairs_per_s']:.0f} pairs/s, "
                    f"p99 {float(row.get('p99 latency', 0)) / 1000:.0f} ms")
    write_csv(ctx.out / "perf_analyzer.csv", rows)
    return rows
