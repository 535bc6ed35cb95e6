"""Side by side in one run, same checkpoint, same pairs, same thread count:

(a) the raw engine in-process (the served engine and settings, via the backend's ``load_scorer``);
(b) sentence-transformers ``CrossEncoder.predict`` on the same Hugging Face checkpoint (fp32,
    default batch size: what a user would write; a bf16 variant is reported too);
(c) rerankd end to end over gRPC (Triton + gateway), closed loop.

Rounds are interleaved (a, b, c, a, b, c, ...) so that load from other processes on this
shared machine hits all three alike; medians over rounds and the spread are reported.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from export.engines import load_backend
from perf.loadgen import build_messages, closed_loop
from perf.stack import BACKEND_SRC


def cross_encoder(hf_dir: Path, threads: int, max_length: int, dtype: str = "fp32"):
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    kwargs = {}
    if dtype == "bf16":
        kwargs["model_kwargs"] = {"torch_dtype": torch.bfloat16}
    torch.manual_seed(0)
    return CrossEncoder(str(hf_dir), num_labels=1, device="cpu", max_length=max_length, **kwargs)


def _loop(fn, prepared, seconds: float) -> float:
    fn(prepared[0])
    n, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p = prepared[i % len(prepared)]
        fn(p)
        n += len(p.item_texts)
        i += 1
    return n / (time.perf_counter() - t0)


def run(version_dir: Path, params: dict[str, str], hf_dir: Path, prepared, addr: str, *,
        threads: int, seconds: float, rounds: int, concurrency: int = 2,
        max_length: int = 256, log=print) -> dict:
    backend = load_backend(BACKEND_SRC)
    scorer = backend.load_scorer(str(version_dir), params)
    ce = cross_encoder(hf_dir, threads, max_length)
    try:
        ce_bf16 = cross_encoder(hf_dir, threads, max_length, "bf16")
    except Exception as exc:  # an older sentence-transformers without model_kwargs
        log(f"    CrossEncoder bf16 unavailable: {exc}")
        ce_bf16 = None
    messages = build_messages([p.request for p in prepared])
    systems = {
        "a_engine": lambda: _loop(lambda p: scorer.score(p.arrays), prepared, seconds),
        "b_cross_encoder": lambda: _loop(lambda p: ce.predict(p.pairs, show_progress_bar=False), prepared, seconds),
        # (c) counts completions inside a window after a warm-up of about one latency
        "c_rerankd": lambda: asyncio.run(closed_loop(addr, messages, concurrency, 2 * seconds,
                                                     warmup_s=1.5)).summary()["pairs_per_s"],
    }
    if ce_bf16 is not None:
        systems["b_cross_encoder_bf16"] = lambda: _loop(
            lambda p: ce_bf16.predict(p.pairs, show_progress_bar=False), prepared, seconds)
    per: dict[str, list[float]] = {k: [] for k in systems}
    ratios: dict[str, list[float]] = {"c/a": [], "c/b": []}
    for r in range(rounds):
        for k, fn in systems.items():
            per[k].append(fn())
        ratios["c/a"].append(per["c_rerankd"][-1] / per["a_engine"][-1])
        ratios["c/b"].append(per["c_rerankd"][-1] / per["b_cross_encoder"][-1])
        log(f"    round {r + 1}/{rounds}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in per.items())
            + f"  c/a={ratios['c/a'][-1]:.2f} c/b={ratios['c/b'][-1]:.2f}")
    out = {"threads": threads, "seconds": seconds, "rounds": rounds, "concurrency_c": concurrency,
           "pairs_per_request": float(np.mean([len(p.item_texts) for p in prepared]))}
    for k, v in {**per, **ratios}.items():
        out[k] = {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                  "values": [round(x, 3) for x in v]}
    return out
