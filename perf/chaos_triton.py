"""Triton SIGKILLed under steady Rerank load, then restarted on the same ports: does the
gateway keep answering (degraded), and how soon is full service back?

``python -m perf.chaos_triton`` starts a local Triton + gateway (``server.devstack``; score
cache off, so every request needs the model), upserts a synthetic catalogue, runs a closed loop
of Rerank calls (``--callers`` threads, ``--candidates`` items each with retrieval scores,
``--deadline-s`` per call), kills Triton's process group with SIGKILL, waits ``--outage-s``,
starts Triton again on the same ports (the gateway keeps its Triton URL) and keeps the load on
``--after-s`` past Triton's readiness. Writes ``reports/chaos-triton.json`` and ``.md``.

Measured per call (client side): status, latency, degraded flag and reason, and whether a
degraded reply's order is the retrieval order. ``tests/integration/test_degraded.py`` runs the
same ``chaos`` with a shorter outage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from server.api.app import MODEL_HEALTH_NAME as MODEL_HEALTH
from server.devstack import MODEL, local_stack, wait_until
from server.settings import PROJECT_ROOT
from server.triton.install import TritonInstall
from server.triton.launcher import TritonServer, free_port, port_is_free


@dataclass
class Call:
    sent: float  # time.monotonic()
    done: float
    code: str  # gRPC status name
    degraded: bool = False
    reason: str = ""
    fallback_order: bool = True  # a degraded reply lists the candidates by retrieval score


def health(addr: str, service: str = "") -> str:
    """``SERVING`` / ``NOT_SERVING`` / ``SERVICE_UNKNOWN`` of ``service``, ``DOWN`` if no answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError as exc:
            return "SERVICE_UNKNOWN" if exc.code() == grpc.StatusCode.NOT_FOUND else "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def scrape(port: int) -> dict[str, float]:
    """The gateway's degraded-reply counters and breaker openings, from its ``/metrics``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'rerankd_rerank_degraded_total\{.*reason="(\w+)".*\} (\S+)$', line)
        if m:
            out[f"degraded.{m.group(1)}"] = float(m.group(2))
        elif line.startswith("rerankd_breaker_opened_total"):
            out["breaker_opened"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("rerankd_admission_shed_total", "rerankd_admission_rejected_total")):
            out[line.split(" ")[0].split("{")[0].removeprefix("rerankd_")] = float(line.rsplit(" ", 1)[1])
    return out


class Load:
    """Closed-loop Rerank callers on their own threads and channels, recording every call."""

    def __init__(self, addr: str, item_ids: list[str], *, callers: int, candidates: int, deadline_s: float,
                 users: int = 20, seed: int = 0):
        self.addr, self.item_ids = addr, item_ids
        self.callers, self.candidates, self.deadline_s, self.users = callers, candidates, deadline_s, users
        self.calls: list[Call] = []
        self.errors: dict[str, str] = {}  # status -> the first message seen with it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed + k,), daemon=True) for k in range(callers)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.deadline_s + 5)

    def _run(self, seed: int) -> None:
        import grpc

        from server.api.pb import reranker_pb2 as pb
        from server.api.pb import reranker_pb2_grpc as pb_grpc

        rng = random.Random(seed)
        with grpc.insecure_channel(self.addr) as ch:
            stub = pb_grpc.RerankerStub(ch)
            while not self._stop.is_set():
                ids = rng.sample(self.item_ids, self.candidates)
                # Distinct in float32 (the proto's type), so the expected order has no ties;
                # the given order is not the retrieval order.
                retrieval = [x / 1e6 for x in rng.sample(range(1_000_000), len(ids))]
                pairs = list(zip(ids, retrieval))
                req = pb.RerankRequest(user_id=f"u{rng.randrange(self.users)}",
                                       candidates=[pb.Candidate(item_id=i, retrieval_score=r) for i, r in pairs])
                sent = time.monotonic()
                try:
                    resp = stub.Rerank(req, timeout=self.deadline_s)
                except grpc.RpcError as exc:
                    self.calls.append(Call(sent, time.monotonic(), exc.code().name))
                    self.errors.setdefault(exc.code().name, exc.details() or "")
                    continue
                call = Call(sent, time.monotonic(), "OK", resp.degraded, resp.degraded_reason)
                if resp.degraded:
                    expected = [i for i, _ in sorted(pairs, key=lambda p: -p[1])]
                    call.fallback_order = [it.item_id for it in resp.items] == expected
                self.calls.append(call)


def _seed_store(addr: str, item_ids: list[str], users: int) -> None:
    """A synthetic catalogue (MovieLens-like ids and titles) and a short history per user."""
    import grpc

    from server.api.pb import reranker_pb2 as pb
    from server.api.pb import reranker_pb2_grpc as pb_grpc

    rng = random.Random(1)
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        stub.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id=i, title=f"Film number {i} ({1950 + int(i) % 50})",
                    attributes={"genres": rng.choice(["Drama", "Comedy", "Action", "Thriller"])})
            for i in item_ids]), timeout=30)
        now = time.time()
        stub.RecordEvents(pb.RecordEventsRequest(events=[
            pb.Event(user_id=f"u{u}", item_id=rng.choice(item_ids), event_type="click", timestamp=now - k)
            for u in range(users) for k in range(5)]), timeout=30)


def _kill_group(triton: TritonServer) -> None:
    """SIGKILL Triton and its backend stubs (its own process group, see the launcher)."""
    os.killpg(triton.proc.pid, signal.SIGKILL)
    triton.proc.wait(10)


def chaos(install: TritonInstall, repo: Path, work: Path, *, outage_s: float = 15.0, warm_s: float = 5.0,
          after_s: float = 10.0, callers: int = 4, candidates: int = 100, deadline_s: float = 1.0,
          catalogue: int = 300, log=print) -> dict:
    """Run the scenario once; returns the figures (see ``summarize``) plus what health said."""
    work.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port()
    item_ids = [str(i) for i in range(1, catalogue + 1)]
    users = 20
    marks: dict[str, float] = {}
    seen: dict[str, str] = {}
    restarted: TritonServer | None = None
    # The model watcher's default poll interval (devstack's is shorter): recovery time includes it.
    with local_stack(install, repo, work, RERANKD_SERVER_SCORE_CACHE_SIZE="0", RERANKD_TRITON_POLL_INTERVAL_S="1.0",
                     RERANKD_SERVER_MAX_CANDIDATES=str(max(candidates, 300)),
                     RERANKD_TELEMETRY_METRICS_PORT=str(metrics_port),
                     RERANKD_STORE_URL=f"sqlite:///{work / 'store.db'}") as stack:
        try:
            _seed_store(stack.addr, item_ids, users)
            log(f"==> stack up (Triton {stack.triton.grpc_url}, gateway {stack.addr}); load for {warm_s:.0f} s")
            with Load(stack.addr, item_ids, callers=callers, candidates=candidates, deadline_s=deadline_s,
                      users=users) as load:
                time.sleep(warm_s)
                marks["kill"] = time.monotonic()
                _kill_group(stack.triton)
                log(f"==> Triton SIGKILLed; down for {outage_s:.0f} s")
                time.sleep(min(outage_s / 2, 3.0))
                seen["service_during_outage"] = health(stack.addr)
                seen["model_during_outage"] = health(stack.addr, MODEL_HEALTH)
                time.sleep(max(0.0, marks["kill"] + outage_s - time.monotonic()))
                ports = stack.triton.ports
                wait_until(lambda: all(port_is_free(p) for p in (ports.http, ports.grpc, ports.metrics)),
                           30, "Triton's ports free again")
                restarted = TritonServer(install, repo, ports=ports, log_path=work / "triton-restarted.log",
                                         load_models=[MODEL])
                marks["restart"] = time.monotonic()
                restarted.start()
                restarted.wait_ready(300)
                marks["ready"] = time.monotonic()
                log(f"==> Triton restarted, ready after {marks['ready'] - marks['restart']:.1f} s; "
                    f"load for {after_s:.0f} s more")
                time.sleep(after_s)
                marks["end"] = time.monotonic()
            seen["service_after"] = health(stack.addr)
            wait_until(lambda: health(stack.addr, MODEL_HEALTH) == "SERVING", 10, "model health SERVING")
            seen["model_after"] = health(stack.addr, MODEL_HEALTH)
            counters = scrape(metrics_port)
        finally:
            if restarted is not None:
                restarted.stop()
    result = summarize(load.calls, marks, deadline_s)
    result.update(health=seen, gateway_metrics=counters, error_examples=load.errors,
                  setup={"outage_s": outage_s, "warm_s": warm_s, "after_s": after_s, "callers": callers,
                         "candidates": candidates, "deadline_s": deadline_s, "catalogue": catalogue,
                         "score_cache": "off", "repo": str(repo),
                         "triton_restart_to_ready_s": round(marks["ready"] - marks["restart"], 3)})
    return result


def summarize(calls: list[Call], marks: dict[str, float], deadline_s: float) -> dict:
    """Shares, latency against the deadline, and recovery times relative to Triton's readiness."""
    n = len(calls)
    ok = [c for c in calls if c.code == "OK"]
    degraded = [c for c in ok if c.degraded]
    latency = sorted(c.done - c.sent for c in calls)
    codes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for c in calls:
        codes[c.code] = codes.get(c.code, 0) + 1
        if c.degraded:
            reasons[c.reason] = reasons.get(c.reason, 0) + 1
    ready, kill = marks["ready"], marks["kill"]
    # After the restart only the model can end degradation (the score cache is off).
    full_after = [c for c in ok if not c.degraded and c.done > marks["restart"]]
    degraded_after_ready = [c for c in degraded if c.done > ready]
    first_full = min((c.done for c in full_after), default=None)
    # Steady full service: the first model-scored reply after the last degraded one.
    last_degraded = max((c.done for c in degraded), default=kill)
    steady = min((c.done for c in full_after if c.done > last_degraded), default=None)
    timeline = []
    start = min(c.sent for c in calls) if calls else kill
    for k in range(int((marks["end"] - start) // 1) + 1):
        lo, hi = start + k, start + k + 1
        in_bin = [c for c in calls if lo <= c.done < hi]
        timeline.append({"t_s": round(lo - kill, 1), "calls": len(in_bin),
                         "degraded": sum(c.degraded for c in in_bin),
                         "errors": sum(c.code != "OK" for c in in_bin)})
    return {
        "calls": n,
        "ok_share": len(ok) / n if n else 0.0,
        "degraded_share": len(degraded) / n if n else 0.0,
        "degraded": len(degraded),
        "degraded_by_reason": reasons,
        "codes": codes,
        "degraded_not_in_retrieval_order": sum(not c.fallback_order for c in degraded),
        "latency_s": {"p50": _pct(latency, 0.50), "p99": _pct(latency, 0.99), "max": latency[-1] if latency else 0.0},
        "deadline_s": deadline_s,
        "over_deadline": sum(c.done - c.sent > deadline_s for c in calls),
        "kill_to_ready_s": round(ready - kill, 3),
        "first_full_after_ready_s": None if first_full is None else round(first_full - ready, 3),
        "full_service_after_ready_s": None if steady is None else round(steady - ready, 3),
        "degraded_after_ready": len(degraded_after_ready),
        "timeline": timeline,
    }


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def markdown(result: dict) -> str:
    s, lat = result["setup"], result["latency_s"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["degraded_by_reason"].items())) or "none"
    first = result["first_full_after_ready_s"]  # None: no full reply came back
    lines = [
        "# Triton killed under load (`python -m perf.chaos_triton`)",
        "",
        f"{s['callers']} closed-loop callers, {s['candidates']} candidates a call (retrieval scores given), "
        f"deadline {s['deadline_s']} s, score cache off; Triton SIGKILLed after {s['warm_s']:.0f} s, "
        f"restarted {s['outage_s']:.0f} s later on the same ports (ready {s['triton_restart_to_ready_s']} s "
        f"after its start), load kept {s['after_s']:.0f} s past ready. Model repository `{s['repo']}`.",
        "",
        "| figure | value | target |",
        "| --- | --- | --- |",
        f"| Rerank calls | {result['calls']} | |",
        f"| answered OK | {result['ok_share']:.4%} | >= 99.9% |",
        f"| of which degraded (flagged) | {result['degraded']} ({result['degraded_share']:.2%}): {reasons} | |",
        f"| degraded replies not in retrieval order | {result['degraded_not_in_retrieval_order']} | 0 |",
        f"| status codes | {result['codes']} | |",
        f"| an error of each code | {result['error_examples'] or 'none'} | |",
        f"| latency p50 / p99 / max | {lat['p50'] * 1000:.1f} / {lat['p99'] * 1000:.1f} / {lat['max'] * 1000:.1f} ms "
        f"| max < deadline ({s['deadline_s'] * 1000:.0f} ms) |",
        f"| calls past the deadline | {result['over_deadline']} | 0 |",
        f"| Triton ready -> first full (model-scored) reply | {_seconds(first)} | |",
        f"| Triton ready -> steady full service (first full reply after the last degraded one) | "
        f"{_seconds(result['full_service_after_ready_s'])} | <= 5 s |",
        f"| health during the outage: service / `{MODEL_HEALTH}` | {result['health']['service_during_outage']} / "
        f"{result['health']['model_during_outage']} | SERVING / NOT_SERVING |",
        f"| gateway metrics | {result['gateway_metrics']} | |",
        "",
        "Per second (t = seconds from the kill; calls completed in that second):",
        "",
        "| t (s) | calls | degraded | errors |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {b['t_s']} | {b['calls']} | {b['degraded']} | {b['errors']} |" for b in result["timeline"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outage-s", type=float, default=15.0)
    p.add_argument("--warm-s", type=float, default=5.0)
    p.add_argument("--after-s", type=float, default=10.0)
    p.add_argument("--callers", type=int, default=4)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--deadline-s", type=float, default=1.0)
    p.add_argument("--repo", type=Path, default=PROJECT_ROOT / "model_repository",
                   help="model repository Triton serves (default: the project's)")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports")
    args = p.parse_args(argv)
    from server.settings import load_settings
    from server.triton.install import ensure_triton

    install = ensure_triton(load_settings(env={}).triton.install_dir, log=print)
    work = Path(tempfile.mkdtemp(prefix="chaos-triton-"))
    try:
        result = chaos(install, args.repo, work, outage_s=args.outage_s, warm_s=args.warm_s, after_s=args.after_s,
                       callers=args.callers, candidates=args.candidates, deadline_s=args.deadline_s)
    except BaseException:
        print(f"logs kept in {work}")
        raise
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos-triton.json").write_text(json.dumps(result, indent=2))
    (args.out / "chaos-triton.md").write_text(markdown(result))
    print(markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

