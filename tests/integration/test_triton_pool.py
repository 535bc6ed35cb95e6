"""Two real Tritons behind one gateway (``triton.url = "a,b"``, ``server.triton.pool``): under
steady Rerank load both take calls; one is SIGKILLed (its whole process group, no restart).
No Rerank may fail, degraded replies (if any) only right around the kill, and from then on
every model-scored reply comes from the survivor."""

from __future__ import annotations

import os
import signal
import time

from perf.chaos_triton import Load, _seed_store
from server.devstack import MODEL, gateway_process
from server.triton.launcher import TritonPorts, TritonServer, free_port
from tests.integration.conftest import MAX_CANDIDATES, triton_install
from tests.prometheus_text import sample, scrape


def answered(samples, url: str) -> float:
    return sample(samples, "rerankd_triton_endpoint_answered_total", endpoint=url)


def test_sigkilled_triton_is_skipped_and_the_survivor_takes_the_load(stack, model_repo, tmp_path):
    survivor = stack.triton  # the session's Triton
    victim = TritonServer(triton_install(), model_repo, ports=TritonPorts.free(), log_path=tmp_path / "victim.log",
                          load_models=[MODEL])
    victim.start()
    metrics_port = free_port()
    item_ids = [str(i) for i in range(1, 201)]
    try:
        victim.wait_ready(300)
        with gateway_process(f"{victim.grpc_url},{survivor.grpc_url}", model_repo, tmp_path / "gateway.log",
                             RERANKD_SERVER_MAX_CANDIDATES=MAX_CANDIDATES,
                             RERANKD_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
                             RERANKD_SERVER_SCORE_CACHE_SIZE="0",  # every Rerank needs the model
                             RERANKD_TELEMETRY_METRICS_PORT=str(metrics_port)) as (_, addr):
            _seed_store(addr, item_ids, users=10)
            # Light load: two Tritons and the gateway share the machine's cores.
            with Load(addr, item_ids, callers=3, candidates=50, deadline_s=2.0, users=10) as load:
                time.sleep(3.0)
                before = scrape(metrics_port)
                kill = time.monotonic()
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait(10)
                time.sleep(1.5)  # in-flight calls to the victim fail over; it is marked down
                settled = time.monotonic()
                mid = scrape(metrics_port)
                time.sleep(4.0)
                end = time.monotonic()
                after = scrape(metrics_port)
    finally:
        victim.stop()

    calls = load.calls
    codes = {c.code for c in calls}
    degraded = [c for c in calls if c.degraded]
    summary = {"calls": len(calls), "codes": codes, "errors": load.errors, "degraded": len(degraded),
               "degraded_at_s": [round(c.done - kill, 3) for c in degraded],
               "reasons": sorted({c.reason for c in degraded}),
               "answered_before": (answered(before, victim.grpc_url), answered(before, survivor.grpc_url)),
               "answered_mid": (answered(mid, victim.grpc_url), answered(mid, survivor.grpc_url)),
               "answered_after": (answered(after, victim.grpc_url), answered(after, survivor.grpc_url)),
               "failed_over": sample(after, "rerankd_triton_retries_total")}
    print(summary)  # pytest -s
    assert len(calls) > 50, summary
    # Not one failed Rerank.
    assert codes == {"OK"}, summary
    # Before the kill, both endpoints took calls (least outstanding calls spreads them).
    assert answered(before, victim.grpc_url) > 0 and answered(before, survivor.grpc_url) > 0, summary
    # Degraded (the last resort) at most a few replies, and only around the kill.
    assert len(degraded) <= 0.02 * len(calls), summary
    assert all(kill - 0.5 <= c.done <= kill + 1.5 for c in degraded), summary
    # From then on the victim answered nothing and the survivor every model-scored reply.
    assert answered(after, victim.grpc_url) == answered(mid, victim.grpc_url), summary
    scored_after = [c for c in calls if not c.degraded and c.sent >= settled and c.done <= end]
    assert len(scored_after) > 20, summary
    assert answered(after, survivor.grpc_url) - answered(mid, survivor.grpc_url) >= len(scored_after), summary
    assert sample(after, "rerankd_triton_endpoint_up", endpoint=victim.grpc_url) == 0.0, summary
    assert sample(after, "rerankd_triton_endpoint_up", endpoint=survivor.grpc_url) == 1.0, summary
