"""Gateway overhead before/after a change: two gateways on one Triton, measured in turns.

The machine is shared and its load drifts, so two separate runs of the overhead figure
differ by more than most changes are worth. Here the gateway of another commit (``--base``,
checked out into a temporary git worktree) and the gateway of this tree serve the same
model on the same Triton, and rounds of sequential requests alternate between them (ABBA),
so both see the same load. Reports overhead p50/p95/p99 per gateway and their differences.

    python -m perf.ab_gateway --base HEAD~3 --model-version 7
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
from pathlib import Path

from perf.common import cpu_pressure, log, overhead_summary, write_csv
from server.settings import PROJECT_ROOT

# End to end and Triton's compute too: a change can move time between the two (e.g. input
# copies that Triton books as compute), which the overhead alone would hide.
KEYS = ("overhead_p50_ms", "overhead_p95_ms", "overhead_p99_ms", "e2e_p50_ms", "e2e_p99_ms",
        "triton_compute_p50_ms", "transport_p50_ms", "gateway_only_p50_ms")


@contextlib.contextmanager
def worktree(ref: str):
    """A detached checkout of ``ref`` in a temporary folder, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="rerankd-ab-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", str(path), ref],
                       check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(path)],
                           capture_output=True)


def compare(addrs: dict[str, str], messages, stats_fn, *, requests: int, rounds: int,
            max_batch: int) -> dict[str, list[dict]]:
    """Per gateway, the rows of ``rounds`` turns of ``requests`` sequential requests (ABBA order)."""
    from perf.loadgen import sequential_overhead

    names = list(addrs)
    rows: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            got = sequential_overhead(addrs[name], messages, requests, stats_fn, max_batch=max_batch)
            rows[name] += got
            s = overhead_summary(got, len(messages[0].candidates))
            log(f"    round {r + 1}/{rounds} {name}: overhead p50 {s.get('overhead_p50_ms', float('nan')):.2f} "
                f"p99 {s.get('overhead_p99_ms', float('nan')):.2f}, end to end p50 "
                f"{s.get('e2e_p50_ms', float('nan')):.2f} ms")
    return rows


def summarize(rows: dict[str, list[dict]], candidates: int) -> dict[str, dict]:
    """Overhead figures per gateway, and (last gateway - first) for each figure."""
    out = {name: {k: v for k, v in overhead_summary(r, candidates).items() if k in KEYS or k == "requests"}
           for name, r in rows.items()}
    first, last = list(out)[0], list(out)[-1]
    out["difference"] = {k: out[last][k] - out[first][k] for k in KEYS if k in out[first] and k in out[last]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git ref of the gateway to compare against")
    ap.add_argument("--model-version", required=True, help="version folder of model_repository/reranker to serve")
    ap.add_argument("--engine", default="", help="served engine (default: the version's own)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--requests", type=int, default=150, help="sequential requests per gateway per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf-ab")
    args = ap.parse_args(argv)

    from contract.model_spec import Manifest
    from perf import workload as W
    from perf.loadgen import build_messages
    from perf.stack import MODEL, Stack, prepare_repo
    from server.devstack import gateway_process
    from server.settings import load_settings
    from server.triton.install import ensure_triton
    from server.triton.launcher import TritonPorts, TritonServer, free_port

    out = args.out.resolve()  # the base gateway runs in its worktree: relative paths would miss
    (out / "logs").mkdir(parents=True, exist_ok=True)
    version_dir = PROJECT_ROOT / "model_repository" / MODEL / args.model_version
    engine = args.engine or Manifest.read(version_dir / "manifest.json").engine or "onnxruntime"
    vd = prepare_repo(out / "model_repository", engine=engine, version_dir=version_dir, log=log)
    db = W.load_store(out / "store.db", log=log)
    messages = build_messages(W.make_requests(48, args.candidates, seed=1000))
    max_batch = Manifest.read(vd / "manifest.json").spec.max_batch_size
    env = {"RERANKD_SERVER_SCORE_CACHE_SIZE": "0", "RERANKD_SERVER_MAX_IN_FLIGHT": "256",
           "RERANKD_SERVER_MAX_CANDIDATES": "1000", "RERANKD_STORE_URL": f"sqlite:///{db}"}
    # This tree's gateway with its metrics endpoint on, as deployed (``--base`` may predate it).
    this_env = {"RERANKD_TELEMETRY_METRICS_PORT": str(free_port())}
    inst = ensure_triton(load_settings(env={}).triton.install_dir, log=log)
    triton = TritonServer(inst, out / "model_repository", ports=TritonPorts.free(),
                          log_path=out / "logs" / "triton.log", load_models=[MODEL])
    triton.start()
    try:
        triton.wait_ready(300)
        with worktree(args.base) as base_tree, \
                gateway_process(triton.grpc_url, out / "model_repository", out / "logs" / "base.log",
                                cwd=base_tree, **env) as (_, base_addr), \
                gateway_process(triton.grpc_url, out / "model_repository", out / "logs" / "this.log",
                                **env, **this_env) as (_, this_addr):
            stats = Stack(triton, None, this_addr, out / "model_repository", out / "logs").model_stats
            log(f"==> {args.base} ({base_addr}) vs this tree ({this_addr}), {args.rounds} rounds x "
                f"{args.requests} requests of {args.candidates} candidates; CPU pressure {cpu_pressure()}")
            rows = compare({args.base: base_addr, "this tree": this_addr}, messages, stats,
                           requests=args.requests, rounds=args.rounds, max_batch=max_batch)
    finally:
        triton.stop()
    summary = summarize(rows, args.candidates)
    write_csv(out / "ab_overhead.csv", [{"gateway": k, **v} for k, v in summary.items()])
    for name, s in summary.items():
        log(f"    {name:12s} " + "  ".join(f"{k[:-3]} {v:+.2f}" if name == "difference" else f"{k[:-3]} {v:.2f}"
                                           for k, v in s.items() if k in KEYS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
