"""Helpers shared by the perf tools (the suite, ``ab_gateway``, ``engine_quality``): the log,
CSV output, the machine's load, and the summary of per-request gateway-overhead rows."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(msg, flush=True)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV, columns the union of their keys (first seen first); dict and list
    values as JSON. Nothing is written for no rows."""
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


def overhead_summary(rows: list[dict], n: int) -> dict:
    """Percentiles of ``loadgen.sequential_overhead`` rows (requests of ``n`` candidates):
    end to end, Triton compute and queue, overhead, gateway only, transport, gateway stages."""
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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``): ratios are comparable only on one model."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
