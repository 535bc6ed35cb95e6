"""What grpc.health says in degrade and fail mode (``Gateway._set_health``), and the degraded /
breaker metrics' readings. Nothing is served: the gateway object only. The real outage:
tests/integration/test_degraded.py."""

import asyncio
from types import SimpleNamespace

from grpc_health.v1 import health_pb2

from server.api.app import MODEL_HEALTH_NAME, SERVICE_NAME, Gateway
from server.settings import load_settings

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def statuses(mode: str, tmp_path, steps):
    """Health of ("", service, model) after each step (a callable on the gateway)."""

    async def go():
        gw = Gateway(load_settings(env={"RERANKD_STORE_URL": f"sqlite:///{tmp_path / 's.db'}",
                                        "RERANKD_RESILIENCE_ON_MODEL_FAILURE": mode,
                                        "RERANKD_RESILIENCE_BREAKER_FAILURES": "1"}))
        seen = []
        try:
            for step in steps:
                step(gw)
                await gw._set_health()
                got = []
                for name in ("", SERVICE_NAME, MODEL_HEALTH_NAME):
                    resp = await gw.health.Check(health_pb2.HealthCheckRequest(service=name), None)
                    got.append(resp.status)
                seen.append(tuple(got))
        finally:
            await gw.store.close()
        return seen

    return asyncio.run(go())


MODEL = SimpleNamespace(name="reranker", version="1")


def no_model(gw):
    gw.models.current = None


def model(gw):
    gw.models.current = MODEL


def breaker_opens(gw):
    gw.pipeline.breaker.failure()


def test_degrade_mode_serves_through_outages_and_reports_full_service_apart(tmp_path):
    seen = statuses("degrade", tmp_path, [no_model, model, no_model, model, breaker_opens])
    assert seen == [
        (NOT_SERVING, NOT_SERVING, NOT_SERVING),  # start-up: no version ready yet
        (SERVING, SERVING, SERVING),
        (SERVING, SERVING, NOT_SERVING),  # Triton gone: degraded replies, still serving
        (SERVING, SERVING, SERVING),
        (SERVING, SERVING, NOT_SERVING),  # circuit open
    ]


def test_metrics_read_degraded_replies_by_reason_and_the_breaker_state(tmp_path):
    from prometheus_client import generate_latest

    text = []

    def scrape(gw):
        gw.pipeline.degraded["circuit_open"] += 2
        text.append(generate_latest(gw.metrics.registry).decode())

    statuses("degrade", tmp_path, [breaker_opens, scrape])
    lines = set(text[0].splitlines())
    assert 'rerankd_rerank_degraded_total{reason="circuit_open"} 2.0' in lines
    assert 'rerankd_rerank_degraded_total{reason="deadline"} 0.0' in lines  # every reason, from 0
    assert 'rerankd_breaker_state{state="open"} 1.0' in lines
    assert 'rerankd_breaker_state{state="closed"} 0.0' in lines
    assert "rerankd_breaker_opened_total 1.0" in lines


def test_fail_mode_follows_model_readiness(tmp_path):
    seen = statuses("fail", tmp_path, [no_model, model, no_model])
    assert [s[:2] for s in seen] == [(NOT_SERVING,) * 2, (SERVING,) * 2, (NOT_SERVING,) * 2]


def test_a_bad_mode_is_refused_naming_the_setting(tmp_path):
    import pytest

    from server.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as err:
        statuses("retry", tmp_path, [])
    assert err.value.field == "resilience.on_model_failure"
