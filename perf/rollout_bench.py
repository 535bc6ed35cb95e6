"""A promote and a rollback under steady load, and the canary's served share over 10,000 users.

``python -m perf.rollout_bench`` copies a trained version (default: the newest in
``model_repository/reranker``) into a scratch repository as version 1, starts Triton + a
gateway (``perf.stack.launch``: MovieLens store, score cache off, poll interval 0.5 s),
adds the same folder as version 2 (a second Triton instance: cold until warmed, which is what
a roll-out has to hide), and runs a closed loop of Rerank calls (``--concurrency``, MovieLens
users and ``--candidates`` catalogue items each) while ``server.triton.rollout.Rollout``
promotes version 2 and then rolls back to 1. Reported: failed and degraded calls, throughput
per one-second window, the lowest window from the promote's start to the end of the
rollback (+ 2 s) as a share of the steady throughput (median window before the promote).

Then ``canary 2 --share`` and one real Rerank per user for ``--users`` new user ids: the share
of replies naming version 2, next to what the routing function (``routes_to_candidate``)
gives for the same ids. Writes ``reports/rollout-bench.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from perf.common import cpu_model, cpu_pressure
from perf.loadgen import build_messages
from perf.stack import launch
from perf.workload import load_store, make_requests
from server.settings import PROJECT_ROOT, load_settings
from server.triton.rollout import Rollout, routes_to_candidate

MODEL = "reranker"
POLL_S = 0.5  # perf.stack.launch's gateway poll interval


class Timeline:
    """Closed-loop Rerank callers on a thread of their own (one event loop), recording
    (completion time, status, version, degraded) of every call."""

    def __init__(self, addr: str, messages, concurrency: int, timeout_s: float = 10.0, rate: float = 0.0):
        """``rate`` > 0: open loop instead, arrivals at ``rate`` a second, evenly spaced (Poisson
        arrivals would add their own noise to each one-second window: sqrt(rate) requests)."""
        self.addr, self.messages, self.concurrency, self.timeout_s = addr, messages, concurrency, timeout_s
        self.rate = rate
        self.calls: list[tuple[float, str, str, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import grpc

        from server.api.pb import reranker_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(self.addr) as ch:
            stub = pb_grpc.RerankerStub(ch)
            counter = iter(range(10**9))

            async def worker():
                while not self._stop.is_set():
                    msg = self.messages[next(counter) % len(self.messages)]
                    try:
                        resp = await stub.Rerank(msg, timeout=self.timeout_s)
                        self.calls.append((time.monotonic(), "OK", resp.model_version, resp.degraded))
                    except grpc.aio.AioRpcError as exc:
                        self.calls.append((time.monotonic(), exc.code().name, "", False))

            async def one(msg):
                try:
                    resp = await stub.Rerank(msg, timeout=self.timeout_s)
                    self.calls.append((time.monotonic(), "OK", resp.model_version, resp.degraded))
                except grpc.aio.AioRpcError as exc:
                    self.calls.append((time.monotonic(), exc.code().name, "", False))

            async def arrivals():
                pending: set[asyncio.Task] = set()
                next_at = time.monotonic()
                while not self._stop.is_set():
                    next_at += 1.0 / self.rate
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    task = asyncio.create_task(one(self.messages[next(counter) % len(self.messages)]))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.wait(pending, timeout=self.timeout_s)

            if self.rate > 0:
                await arrivals()
            else:
                await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def __enter__(self) -> "Timeline":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    def per_second(self, start: float, end: float) -> list[int]:
        """OK replies completed in each whole second of [start, end)."""
        counts = [0] * int(end - start)
        for t, code, _, _ in self.calls:
            k = int(t - start)
            if code == "OK" and 0 <= k < len(counts):
                counts[k] += 1
        return counts


def canary_share(addr: str, users: list[str], item_ids: list[str], *, concurrency: int = 8) -> Counter:
    """One Rerank per user (10 catalogue items): replies by version."""
    import grpc

    from server.api.pb import reranker_pb2 as pb
    from server.api.pb import reranker_pb2_grpc as pb_grpc

    seen: Counter = Counter()

    async def run():
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.RerankerStub(ch)
            queue = iter(enumerate(users))

            async def worker():
                for k, user in queue:
                    ids = [item_ids[(k * 7 + j) % len(item_ids)] for j in range(10)]
                    req = pb.RerankRequest(user_id=user, candidates=[pb.Candidate(item_id=i) for i in ids])
                    try:
                        resp = await stub.Rerank(req, timeout=10)
                        seen[resp.model_version] += 1
                    except grpc.aio.AioRpcError as exc:
                        seen[exc.code().name] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(run())
    return seen


def newest_trained(repo: Path) -> Path:
    from contract.model_spec import Manifest

    folders = sorted((p for p in (repo / MODEL).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for folder in reversed(folders):
        try:
            if Manifest.read(folder / "manifest.json").training.get("steps"):
                return folder
        except (OSError, ValueError):
            continue
    raise SystemExit(f"no trained version in {repo / MODEL}: run `make run` (it trains one) or pass --version-dir")


def run(args) -> dict:
    settings = load_settings(env={})
    src = Path(args.version_dir) if args.version_dir else newest_trained(settings.triton.model_repository)
    work = Path(tempfile.mkdtemp(prefix="rollout-bench-", dir=args.work_dir))
    repo = work / "repo"
    (repo / MODEL).mkdir(parents=True)
    shutil.copy(src.parent / "config.pbtxt", repo / MODEL / "config.pbtxt")
    shutil.copytree(src, repo / MODEL / "1")
    db = load_store(work / "store.db")
    requests = make_requests(400, args.candidates, seed=0)
    messages = build_messages(requests)
    item_ids = sorted({i for r in requests for i in r.item_ids})
    out: dict = {"cpu": cpu_model(), "source_version": str(src), "concurrency": args.concurrency,
                 "load": f"open loop, {args.rate:g} req/s evenly spaced" if args.rate > 0 else
                 f"closed loop, concurrency {args.concurrency}",
                 "candidates": args.candidates, "poll_interval_s": POLL_S}
    with launch(repo, db, work / "logs", env={"RERANKD_TRITON_POLL_INTERVAL_S": str(POLL_S)}) as stack:
        shutil.copytree(src, repo / MODEL / "2")  # the new version lands on disk
        rollout = Rollout(stack.triton.grpc_url, repo, MODEL, poll_interval_s=POLL_S, settle_s=2.0)
        marks: dict[str, float] = {}
        try:
            with Timeline(stack.addr, messages, args.concurrency, rate=args.rate) as tl:
                marks["start"] = time.monotonic()
                time.sleep(args.steady_s)
                marks["promote"] = time.monotonic()
                rollout.promote("2")
                marks["promoted"] = time.monotonic()
                time.sleep(args.between_s)
                marks["rollback"] = time.monotonic()
                rollout.rollback()
                marks["rolled_back"] = time.monotonic()
                time.sleep(args.between_s)
                marks["end"] = time.monotonic()
            pressure = cpu_pressure()
            rollout.canary("2", args.share)
            time.sleep(3 * POLL_S)
            users = [f"canary-user-{k}" for k in range(args.users)]
            t0 = time.monotonic()
            served = canary_share(stack.addr, users, item_ids)
            canary_s = time.monotonic() - t0
        finally:
            rollout.close()
    start = marks["start"]
    windows = tl.per_second(start, marks["end"])
    skip = 2  # the first seconds: connections and the first requests of the run
    steady = windows[skip:int(marks["promote"] - start)]
    steady_rps = statistics.median(steady)
    watched = windows[int(marks["promote"] - start):min(len(windows), int(marks["rolled_back"] - start) + 3)]
    codes = Counter(code for _, code, _, _ in tl.calls)
    by_version = Counter(v for _, code, v, _ in tl.calls if code == "OK")
    routed = sum(routes_to_candidate(settings.triton.canary_salt, u, args.share) for u in users)
    out.update(
        calls=len(tl.calls), codes=dict(codes), failed=sum(n for c, n in codes.items() if c != "OK"),
        degraded=sum(1 for _, _, _, d in tl.calls if d), replies_by_version=dict(by_version),
        steady_rps=steady_rps, min_window_rps=min(watched), min_window_share=min(watched) / steady_rps,
        windows=windows, marks={k: round(v - start, 2) for k, v in marks.items()},
        promote_s=round(marks["promoted"] - marks["promote"], 1),
        rollback_s=round(marks["rolled_back"] - marks["rollback"], 1), cpu_pressure=pressure,
        canary={"share_setting": args.share, "users": len(users), "replies": dict(served),
                "served_share": served.get("2", 0) / len(users), "routing_function_share": routed / len(users),
                "seconds": round(canary_s, 1)})
    return out


def markdown(r: dict) -> str:
    c = r["canary"]
    return "\n".join([
        "# Roll-out under load", "",
        f"CPU: {r['cpu']}; {r['load']}, {r['candidates']} candidates, "
        f"score cache off; gateway poll {r['poll_interval_s']} s.", "",
        "| figure | value |", "| --- | --- |",
        f"| calls / failed / degraded | {r['calls']} / {r['failed']} / {r['degraded']} |",
        f"| steady throughput (median 1 s window before the promote) | {r['steady_rps']:.0f} req/s |",
        f"| lowest 1 s window, promote start .. rollback end + 2 s | {r['min_window_rps']} req/s "
        f"= {r['min_window_share']:.0%} of steady |",
        f"| promote / rollback took (warm-up and unload included) | {r['promote_s']} / {r['rollback_s']} s |",
        f"| replies by version | {r['replies_by_version']} |",
        f"| canary: share {c['share_setting']}, {c['users']} users, real Rerank calls | "
        f"served {c['served_share']:.4f} (routing function {c['routing_function_share']:.4f}) |",
        "", f"Windows (req/s): {r['windows']}", f"Marks (s): {r['marks']}", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version-dir", help="a trained version folder (default: the newest in model_repository)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rate", type=float, default=0.0, help="open loop at this many req/s (0: closed loop)")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--steady-s", type=float, default=15.0)
    p.add_argument("--between-s", type=float, default=8.0)
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--out", default=None, help="report path without suffix (default reports/rollout-bench-<load>)")
    args = p.parse_args(argv)
    result = run(args)
    out = Path(args.out or PROJECT_ROOT / "reports" / (f"rollout-bench-open{args.rate:g}" if args.rate > 0
                                                       else f"rollout-bench-closed{args.concurrency}"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
