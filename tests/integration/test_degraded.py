"""Chaos: the session's tiny model on a Triton of this test's own, SIGKILLed under steady Rerank
load and restarted on the same ports (``perf.chaos_triton``, shorter outage). The gateway must
answer every call OK within its deadline, degraded (flagged, retrieval order) while Triton is
gone, and at full service again within 5 s of Triton being ready."""

from __future__ import annotations

from perf.chaos_triton import chaos
from server.core.fallback import REASONS
from tests.integration.conftest import triton_install


def test_triton_sigkilled_under_load_degrades_then_recovers(model_repo, tmp_path):
    result = chaos(triton_install(), model_repo, tmp_path / "chaos", outage_s=5.0, warm_s=3.0, after_s=5.0,
                   callers=3, candidates=100, deadline_s=1.0, log=lambda *a: None)
    summary = {k: v for k, v in result.items() if k != "timeline"}
    print(summary)  # the figures (pytest -s)

    assert result["calls"] > 100, summary
    assert result["ok_share"] >= 0.999, summary
    # Degraded while Triton was gone, each reply flagged with a known reason, in retrieval order.
    assert result["degraded"] > 0 and set(result["degraded_by_reason"]) <= set(REASONS), summary
    assert result["degraded_not_in_retrieval_order"] == 0, summary
    # Nothing hung: every call answered before its deadline.
    assert result["over_deadline"] == 0 and result["latency_s"]["max"] < 1.0, summary
    # Full service back within 5 s of Triton ready.
    assert result["first_full_after_ready_s"] is not None and result["first_full_after_ready_s"] <= 5.0, summary
    assert result["full_service_after_ready_s"] is not None and result["full_service_after_ready_s"] <= 5.0, summary
    # Health: the service kept serving (degraded); full service (the model) was reported down, then up.
    assert result["health"] == {"service_during_outage": "SERVING", "model_during_outage": "NOT_SERVING",
                                "service_after": "SERVING", "model_after": "SERVING"}, summary
    # The gateway counted the degraded replies by reason (at least those the callers received).
    counted = result["gateway_metrics"]
    for reason, n in result["degraded_by_reason"].items():
        assert counted[f"degraded.{reason}"] >= n, (reason, counted)
