"""[1/6] In-process engine variants on the same real token ids (interleaved rounds): pairs/s
at seq 64 and on real requests, share of the CPU's nominal peak, agreement with fp32."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from perf.common import load_avg, write_csv
from perf.sections.context import Suite


@dataclass
class EnginesResult:
    rows: list[dict]  # -> "engines" (engines.csv)
    quality: list[dict]  # -> "engine_quality" (engine_quality.csv)
    peak: dict  # -> "machine_peak"
    flops_per_pair: float | None  # -> "flops_per_pair_seq64"


def variant_version(ctx: Suite, version_dir: Path, prepared: list, served_engine: str, engines: list[str]) -> Path:
    """A copy of the served version (work/variants_version) with the files of every compared
    int8 variant next to its model.onnx (each variant needs its own files)."""
    from export.engines import build_engine_files, calibration_feeds

    work = ctx.work
    for e in engines:
        if e != served_engine and e in ("onnxruntime_int8", "openvino_int8"):
            build_engine_files(e, version_dir / "model.onnx", work / "variants",
                               calibration_feeds([p.arrays for p in prepared[12:]]))
    variant_dir = work / "variants_version"
    shutil.copytree(version_dir, variant_dir)
    for name in ("model.int8.onnx", "openvino_int8"):
        src = work / "variants" / name
        if src.exists() and not (variant_dir / name).exists():
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, variant_dir / name)
    return variant_dir


def section_engines(ctx: Suite, vd: Path, prepared: list, hf_dir: Path | None, engines: list[str]) -> EnginesResult:
    from perf.engines_bench import (
        compare_engines,
        default_variants,
        fixed_length_batches,
        flops_per_pair,
        machine_peak,
        quality_vs_fp32,
    )

    b, log, threads = ctx.budget, ctx.log, ctx.threads
    log(f"==> [1/6] engines in-process ({threads} threads; load avg {load_avg()})")
    variants = default_variants(engines)
    fixed = fixed_length_batches(prepared, 64)[:b.engine_batches]
    real = [p.arrays for p in prepared[:b.engine_batches]]
    rows = compare_engines(vd, variants, {"seq64_b100": fixed, "real_requests": real}, seconds=b.engine_s,
                           rounds=b.engine_rounds, threads=threads, hf_dir=hf_dir,
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
    write_csv(ctx.out / "engines.csv", rows)
    log("    quality vs fp32 ...")
    qrows = quality_vs_fp32(vd, variants, [p.arrays for p in prepared[:b.quality_requests]], threads)
    write_csv(ctx.out / "engine_quality.csv", qrows)
    return EnginesResult(rows, qrows, peak, fl)


def section_shared_prefix(ctx: Suite, version_dir: Path, hf_dir: Path) -> dict:
    """In-process pairs/s of the served weights laid out pairwise and as one shared-prefix
    sequence per request (``perf.shared_prefix_bench``: same engine, precision, threads)."""
    from perf.shared_prefix_bench import measure

    ctx.log("==> shared prefix vs pairwise, in process (100 candidates)")
    res = measure(hf_dir, version_dir, candidates=100, requests=4 * ctx.budget.engine_batches,
                  rounds=ctx.budget.engine_rounds, threads=ctx.threads)
    ctx.log(f"    pairwise {res['pairs_per_s']['pairwise']:.0f} pairs/s, shared prefix "
            f"{res['pairs_per_s']['shared_prefix']:.0f} pairs/s: {res['ratio']:.1f}x")
    return res
