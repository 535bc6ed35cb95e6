"""Triton's ``perf_analyzer`` without Docker, and a model-level concurrency sweep with it.

``ensure_perf_analyzer()`` lays out ``.cache/perf_analyzer/``:

* ``tritonclient==2.41.1`` (manylinux1 wheel, ``--no-deps --target``): ships ``bin/perf_analyzer``
  (glibc 2.34; newer perf-analyzer wheels need glibc 2.38, which Debian 12 lacks);
* ``nvidia-cuda-runtime-cu12`` (``--no-deps --target``): ``libcudart.so.12``, which the
  binary links even on CPU;
* ``libb64.so.0d``: the system one (Debian ``libb64-0d``) if present, else a link to the
  renamed copy in Triton's ``nvidia_pytriton.libs`` (``.cache/triton/pkg``), else apt-get.

``run_sweep`` feeds real token ids (``--input-data`` JSON written from the workload) at the
sequence buckets the gateway really sends, and parses perf_analyzer's CSV.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".cache" / "perf_analyzer"
TRITONCLIENT_PIN = "tritonclient==2.41.1"
CUDART_REQ = "nvidia-cuda-runtime-cu12"


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dirs: tuple[Path, ...]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(p) for p in self.lib_dirs] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
        return env

    def works(self) -> bool:
        try:
            r = subprocess.run([str(self.binary), "--help"], env=self.environment(),
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "perf_analyzer" in (r.stdout + r.stderr) and "error while loading shared libraries" not in r.stderr


def _pip_target(requirement: str, target: Path, log) -> None:
    log(f"==> installing {requirement} into {target} (--no-deps --target)")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
                    "--target", str(target), requirement], check=True)


def _find_libb64(install_dir: Path, triton_pkg: Path, log) -> Path | None:
    """A folder holding ``libb64.so.0d`` (created under ``install_dir/lib`` when needed)."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib/x86_64-linux-gnu"):
        if Path(d, "libb64.so.0d").exists():
            return Path(d)
    lib = install_dir / "lib"
    if (lib / "libb64.so.0d").exists():
        return lib
    renamed = sorted(glob.glob(str(triton_pkg / "nvidia_pytriton.libs" / "libb64-*.so.0d")))
    if renamed:
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copy2(renamed[0], lib / "libb64.so.0d")
        return lib
    log("==> installing Debian package libb64-0d")
    subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=False,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return Path("/usr/lib/x86_64-linux-gnu") if Path("/usr/lib/x86_64-linux-gnu/libb64.so.0d").exists() else None


def ensure_perf_analyzer(install_dir: Path = DEFAULT_DIR, triton_pkg: Path | None = None,
                         log=print) -> PerfAnalyzer:
    """Install (once) and return a working perf_analyzer; raises RuntimeError if it cannot run."""
    install_dir = Path(install_dir)
    triton_pkg = Path(triton_pkg) if triton_pkg else ROOT / ".cache" / "triton" / "pkg"
    client_dir, cuda_dir = install_dir / "tritonclient", install_dir / "cudart"
    binary = client_dir / "bin" / "perf_analyzer"  # the wheel's data scripts
    if not binary.exists():
        _pip_target(TRITONCLIENT_PIN, client_dir, log)
    cudart = cuda_dir / "nvidia" / "cuda_runtime" / "lib"
    if not any(cudart.glob("libcudart.so.12*")):
        _pip_target(CUDART_REQ, cuda_dir, log)
    if not binary.exists():
        raise RuntimeError(f"{TRITONCLIENT_PIN} has no bin/perf_analyzer")
    binary.chmod(0o755)
    libb64 = _find_libb64(install_dir, triton_pkg, log)
    dirs = tuple(p for p in (cudart, libb64) if p is not None)
    pa = PerfAnalyzer(binary, dirs)
    if not pa.works():
        r = subprocess.run([str(binary), "--help"], env=pa.environment(), capture_output=True, text=True)
        raise RuntimeError(f"perf_analyzer does not run: {r.stderr.strip()[:500]}")
    return pa


def write_input_data(path: Path, rows: list[dict[str, np.ndarray]]) -> Path:
    """perf_analyzer ``--input-data`` JSON: one entry per pair (batch-1 sample, shape [seq]);
    with ``-b N`` it sends N consecutive entries per request."""
    data = [{name: {"content": [int(x) for x in arr], "shape": [len(arr)]} for name, arr in row.items()}
            for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


def rows_at_bucket(batches: list[dict[str, np.ndarray]], seq: int, limit: int = 512) -> list[dict[str, np.ndarray]]:
    """Real pairs padded / cut to ``seq`` tokens (pairs longer than ``seq`` are cut, keeping the
    final [SEP] position meaningless but the compute exact)."""
    rows = []
    for b in batches:
        n, width = next(iter(b.values())).shape
        for i in range(n):
            row = {}
            for k, v in b.items():
                r = np.zeros(seq, np.int64)
                r[:min(seq, width)] = v[i, :seq]
                row[k] = r
            rows.append(row)
            if len(rows) >= limit:
                return rows
    return rows


def run_sweep(pa: PerfAnalyzer, *, model: str, grpc_url: str, input_json: Path, batch: int,
              concurrency: list[int], out_csv: Path, measurement_ms: int = 4000,
              version: str = "", timeout_s: float = 600, log=print) -> list[dict]:
    """perf_analyzer over gRPC with ``--concurrency-range`` values; rows of its CSV (one per
    concurrency) with throughput (inferences/s = pairs/s) and latency percentiles (us)."""
    cmd = [str(pa.binary), "-m", model, "-u", grpc_url, "-i", "grpc", "-b", str(batch),
           "--input-data", str(input_json), "-p", str(measurement_ms),
           "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}:{_step(concurrency)}",
           "--percentile", "99", "-f", str(out_csv),
           # The machine is shared: accept the trials as they are (no stability gate), and
           # report them with the load average next to them.
           "--max-trials", "3", "--stability-percentage", "1000"]
    if version:
        cmd += ["-x", version]
    log("    $ " + " ".join(cmd[1:]))
    r = subprocess.run(cmd, env=pa.environment(), capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0 or not out_csv.exists():
        raise RuntimeError(f"perf_analyzer failed ({r.returncode}): {(r.stdout + r.stderr)[-1500:]}")
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["batch"] = batch
        # perf_analyzer counts inferences per batch row: with -b N, one request is N of them.
        row["pairs_per_s"] = float(row["Inferences/Second"])
        row["requests_per_s"] = float(row["Inferences/Second"]) / batch
    return rows


def _step(values: list[int]) -> int:
    """perf_analyzer takes start:end:step; a geometric sweep is run as several calls instead."""
    vs = sorted(values)
    steps = {b - a for a, b in zip(vs, vs[1:])}
    return steps.pop() if len(steps) == 1 else 1
