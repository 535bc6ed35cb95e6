"""Impression logging's cost on Rerank latency: two gateways of this tree on one Triton, one
with ``online.log_impressions`` off and one with it on (both on one SQLite store, metrics on),
measured in alternating rounds of sequential requests (``perf.ab_gateway.compare``), so both
see the same machine load. Reports overhead and end-to-end p50/p95/p99 per gateway, their
differences, and how many impressions the logging gateway wrote.

    python -m perf.impressions_ab --model-version 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
from pathlib import Path

from perf.ab_gateway import KEYS, compare, summarize
from perf.common import cpu_pressure, log, write_csv
from server.settings import PROJECT_ROOT


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-version", required=True, help="version folder of model_repository/reranker to serve")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--requests", type=int, default=150, help="sequential requests per gateway per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf-impressions")
    args = ap.parse_args(argv)

    from contract.model_spec import SHARED_PREFIX, Manifest
    from perf import workload as W
    from perf.loadgen import build_messages
    from perf.stack import MODEL, Stack
    from server.devstack import gateway_process
    from server.settings import load_settings
    from server.triton.install import ensure_triton
    from server.triton.launcher import TritonPorts, TritonServer, free_port

    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    version_dir = PROJECT_ROOT / "model_repository" / MODEL / args.model_version
    # The version as it is served (both scoring kinds), hard-linked into a repository of its own.
    repo = out / "model_repository"
    if repo.exists():
        shutil.rmtree(repo)
    vd = repo / MODEL / args.model_version
    shutil.copytree(version_dir, vd, copy_function=_link)
    shutil.copy2(version_dir.parent / "config.pbtxt", repo / MODEL / "config.pbtxt")
    db = out / "store.db"
    if db.exists():
        db.unlink()
    W.load_store(db, log=log)
    messages = build_messages(W.make_requests(48, args.candidates, seed=1000))
    spec = Manifest.read(vd / "manifest.json").spec
    # Triton executions a request makes, for booking compute: a row per max_batch pairs, or
    # (shared prefix) one row for the whole request at these sizes.
    max_batch = 0 if spec.scoring == SHARED_PREFIX else spec.max_batch_size
    env = {"RERANKD_SERVER_SCORE_CACHE_SIZE": "0", "RERANKD_SERVER_MAX_IN_FLIGHT": "256",
           "RERANKD_SERVER_MAX_CANDIDATES": "1000", "RERANKD_STORE_URL": f"sqlite:///{db}"}
    inst = ensure_triton(load_settings(env={}).triton.install_dir, log=log)
    triton = TritonServer(inst, out / "model_repository", ports=TritonPorts.free(),
                          log_path=out / "logs" / "triton.log", load_models=[MODEL])
    triton.start()
    try:
        triton.wait_ready(300)
        with gateway_process(triton.grpc_url, out / "model_repository", out / "logs" / "off.log",
                             RERANKD_ONLINE_LOG_IMPRESSIONS="false", RERANKD_TELEMETRY_METRICS_PORT=str(free_port()),
                             **env) as (_, off_addr), \
                gateway_process(triton.grpc_url, out / "model_repository", out / "logs" / "on.log",
                                RERANKD_ONLINE_LOG_IMPRESSIONS="true",
                                RERANKD_TELEMETRY_METRICS_PORT=str(free_port()), **env) as (_, on_addr):
            stats = Stack(triton, None, on_addr, out / "model_repository", out / "logs").model_stats
            log(f"==> impressions off ({off_addr}) vs on ({on_addr}), {args.rounds} rounds x {args.requests} "
                f"requests of {args.candidates} candidates; CPU pressure {cpu_pressure()}")
            rows = compare({"impressions off": off_addr, "impressions on": on_addr}, messages, stats,
                           requests=args.requests, rounds=args.rounds, max_batch=max_batch)
    finally:
        triton.stop()
    written = sqlite3.connect(db).execute("SELECT COUNT(*) FROM impressions").fetchone()[0]
    summary = summarize(rows, args.candidates)
    write_csv(out / "impressions_ab.csv", [{"gateway": k, **v} for k, v in summary.items()])
    for name, s in summary.items():
        log(f"    {name:16s} " + "  ".join(f"{k[:-3]} {v:+.2f}" if name == "difference" else f"{k[:-3]} {v:.2f}"
                                           for k, v in s.items() if k in KEYS))
    log(f"    impressions written by the logging gateway: {written} (warm-up requests included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
