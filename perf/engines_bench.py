"""In-process engine comparison: every CPU engine variant on the same token inputs, measured
in interleaved rounds (the machine is shared: each round runs every variant once, and the
median over rounds is reported with the spread), plus agreement with fp32 scores.

The variants run through the backend's own ``load_scorer`` (model_repository/reranker/model.py),
so what is measured here is what Triton runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.engines import ENGINE_PARAMETERS, agreement, load_backend
from perf.stack import BACKEND_SRC


@dataclass(frozen=True)
class Variant:
    name: str
    engine: str
    params: dict

    def scorer(self, version_dir: Path, threads: int, backend=None):
        backend = backend or load_backend(BACKEND_SRC)
        return backend.load_scorer(str(version_dir), {"intra_op_threads": str(threads), **ENGINE_PARAMETERS[self.engine],
                                                      **self.params, "engine": self.engine})


def default_variants(engines: list[str]) -> list[Variant]:
    out = []
    for e in engines:
        if e == "onnxruntime":
            out.append(Variant("ort_fp32", e, {}))
        elif e == "onnxruntime_int8":
            out.append(Variant("ort_int8_dynamic", e, {}))
        elif e == "openvino":
            out.append(Variant("ov_fp32", e, {"precision": "f32"}))
            out.append(Variant("ov_bf16", e, {"precision": "bf16"}))
        elif e == "openvino_int8":
            out.append(Variant("ov_int8_static", e, {"precision": "bf16"}))
    return out


def fixed_length_batches(prepared, seq: int, batch: int = 100) -> list[dict[str, np.ndarray]]:
    """Real token ids cut to ``seq`` and every row made exactly ``seq`` long (mask all ones,
    the tail filled from the row's own tokens): the engine computes batch x seq tokens."""
    rows = {k: [] for k in prepared[0].arrays}
    for p in prepared:
        for i in range(len(p.item_texts)):
            mask = p.arrays["attention_mask"][i]
            n = int(mask.sum())
            idx = np.arange(seq) % max(n, 1)
            for k, v in p.arrays.items():
                rows[k].append(np.ones(seq, np.int64) if k == "attention_mask" else v[i, idx])
    total = len(rows["input_ids"])
    return [{k: np.stack(v[s:s + batch]) for k, v in rows.items()} for s in range(0, total - batch + 1, batch)]


def _timed(fn, items, seconds: float) -> tuple[int, float]:
    """Call ``fn`` on ``items`` cyclically for about ``seconds``; (pairs done, elapsed)."""
    fn(items[0])  # warm (first shapes compile / allocate)
    n, t0, i = 0, time.perf_counter(), 0
    while True:
        item = items[i % len(items)]
        fn(item)
        n += next(iter(item.values())).shape[0]
        i += 1
        if time.perf_counter() - t0 >= seconds:
            return n, time.perf_counter() - t0


def torch_scorer(hf_dir: Path, dtype: str, threads: int):
    import torch

    from export.base_model import load_for_export

    torch.set_num_threads(threads)
    model = load_for_export(hf_dir)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)

    def run(feed):
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
        return out[:, 0].float().numpy()

    return run


def compare_engines(version_dir: Path, variants: list[Variant], workloads: dict[str, list[dict]], *,
                    seconds: float, rounds: int, threads: int, hf_dir: Path | None = None,
                    torch_dtypes: tuple[str, ...] = ("bf16",), trim_options=(True,), log=print) -> list[dict]:
    """pairs/s of each variant (x trim on/off) on each workload; interleaved rounds."""
    backend = load_backend(BACKEND_SRC)
    runners: dict[str, object] = {}
    for v in variants:
        for trim in trim_options:
            key = f"{v.name}{'' if trim else '+notrim'}"
            try:
                s = v.scorer(version_dir, threads, backend)
            except Exception as exc:  # engine not available here: say so, keep going
                log(f"    {key}: not available ({exc})")
                continue
            s.mask_name = s.mask_name if trim else None
            runners[key] = s.score
    if hf_dir is not None:
        for dt in torch_dtypes:
            runners[f"torch_{dt}"] = torch_scorer(hf_dir, dt, threads)
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for wname, items in workloads.items():
            for key, fn in runners.items():
                n, el = _timed(fn, items, seconds)
                results.setdefault((key, wname), []).append(n / el)
        log(f"    round {r + 1}/{rounds}: " + ", ".join(
            f"{k}@{w}={v[-1]:.0f}" for (k, w), v in results.items()))
    rows = []
    for (key, wname), vals in results.items():
        rows.append({"variant": key, "workload": wname, "pairs_per_s": float(np.median(vals)),
                     "min": float(np.min(vals)), "max": float(np.max(vals)), "rounds": len(vals),
                     "threads": threads})
    return rows


def quality_vs_fp32(version_dir: Path, variants: list[Variant], batches: list[dict], threads: int) -> list[dict]:
    """Agreement of each variant's scores with fp32 ONNX Runtime (untrimmed) per request."""
    backend = load_backend(BACKEND_SRC)
    ref_scorer = backend.load_scorer(str(version_dir), {"intra_op_threads": str(threads), "engine": "onnxruntime",
                                                        "trim_padding": "false", "sub_batch": "0"})
    ref = [ref_scorer.score(b) for b in batches]
    rows = []
    for v in variants:
        try:
            s = v.scorer(version_dir, threads, backend)
        except Exception as exc:
            rows.append({"variant": v.name, "error": str(exc)})
            continue
        a = agreement(ref, [s.score(b) for b in batches])
        rows.append({"variant": v.name, **a.as_dict(), "accepted": a.ok()})
    return rows


def machine_peak() -> dict:
    """Nominal peak of this CPU from its ISA flags and clock (an estimate, stated as such).

    Per core per cycle, 512-bit ops as issued: AMX (Intel) bf16 1024 / int8 2048;
    AVX512-BF16 (VDPBF16PS) 64 bf16 flops; AVX512-VNNI (VPDPBUSD) 128 int8 ops; AVX-512 FMA
    fp32 32 flops. Zen 4 executes 512-bit ops on 256-bit halves at one zmm op per cycle,
    which these numbers already assume (Intel server cores with 2 FMA ports double them)."""
    flags, mhz, vendor, family = set(), 0.0, "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and not mhz:
                    mhz = float(value)
                elif key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "cpu family" and not family:
                    family = value.strip()
    except OSError:
        pass
    cores = os.cpu_count() or 1
    # Under KVM "cpu MHz" is the base (TSC) clock; the cores boost above it (ONNX Runtime fp32
    # was measured above the base-clock fp32 peak here). Zen 4 (AMD family 25 with AVX-512)
    # server parts boost to ~3.7 GHz; PERF_CPU_GHZ overrides.
    zen4 = vendor == "AuthenticAMD" and family == "25" and "avx512f" in flags
    base_ghz = mhz / 1000 if mhz else 2.5
    ghz = float(os.environ.get("PERF_CPU_GHZ") or (max(base_ghz, 3.7) if zen4 else base_ghz))
    amx = "amx_bf16" in flags
    bf16 = 1024 if amx else (64 if "avx512_bf16" in flags else 32)
    int8 = 2048 if "amx_int8" in flags else (128 if "avx512_vnni" in flags else 64)
    fp32 = 32 if "avx512f" in flags else 16
    return {"cores": cores, "ghz": ghz, "base_ghz": base_ghz, "cpu": f"{vendor} family {family}", "amx": amx, "avx512_bf16": "avx512_bf16" in flags,
            "avx512_vnni": "avx512_vnni" in flags,
            "peak_fp32_gflops": cores * ghz * fp32, "peak_bf16_gflops": cores * ghz * bf16,
            "peak_int8_gops": cores * ghz * int8}


def flops_per_pair(config: dict, seq: int) -> float:
    """Forward FLOPs of a BERT-style encoder for one pair of ``seq`` tokens (matmuls only)."""
    h = config["hidden_size"]
    inter = config.get("intermediate_size", 4 * h)
    layers = config["num_hidden_layers"]
    dense = 2 * seq * (4 * h * h + 2 * h * inter)
    attention = 2 * 2 * seq * seq * h
    return float(layers * (dense + attention))
