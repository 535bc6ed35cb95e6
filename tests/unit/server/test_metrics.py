"""``server.metrics``: the Prometheus text endpoint, its names, and what it does off or broken."""

from __future__ import annotations

import socket

import pytest

from server.metrics import Metrics
from tests.prometheus_text import sample, scrape


@pytest.fixture
def metrics():
    m = Metrics(True)
    yield m
    m.shutdown()


def test_rpcs_stages_and_sources_are_served_as_prometheus_text(metrics):
    metrics.rpc_done("Rerank", "OK", 0.012)
    metrics.rpc_done("Rerank", "OK", 0.030)
    metrics.rpc_done("Rerank", "INVALID_ARGUMENT", 0.001)
    metrics.rpc_done("Rerank", "RESOURCE_EXHAUSTED", 0.0015)
    metrics.rpc_done("Rerank", "RESOURCE_EXHAUSTED", 0.008)
    metrics.stages({"tokenize": 0.5, "infer": 20.0})
    metrics.stages({"tokenize": 0.25, "infer": 10.0})
    hits = [3]
    metrics.observe("rerankd.score_cache.hits", lambda: hits[0], kind="counter", description="hits")
    metrics.observe("rerankd.model.serving", lambda: [(1.0, {"version": "7"})], description="served")
    port = metrics.serve("127.0.0.1", 0)
    s = scrape(port)
    assert sample(s, "rerankd_requests_total", method="Rerank", code="OK") == 2
    assert sample(s, "rerankd_requests_total", method="Rerank", code="INVALID_ARGUMENT") == 1
    # Only OK replies go into the latency histogram.
    assert sample(s, "rerankd_rerank_duration_seconds_count") == 2
    assert sample(s, "rerankd_rerank_duration_seconds_sum") == pytest.approx(0.042)
    assert sample(s, "rerankd_rerank_duration_seconds_bucket", le="0.02") == 1
    # Refused calls (load shed, in-flight limit) have their own histogram: they must be fast.
    assert sample(s, "rerankd_rerank_refused_duration_seconds_count") == 2
    assert sample(s, "rerankd_rerank_refused_duration_seconds_bucket", le="0.005") == 1
    assert sample(s, "rerankd_stage_time_seconds_total", stage="infer") == pytest.approx(0.030)
    assert sample(s, "rerankd_stage_calls_total", stage="tokenize") == 2
    assert sample(s, "rerankd_score_cache_hits_total") == 3
    assert sample(s, "rerankd_model_serving", version="7") == 1
    hits[0] = 8  # sources are read at each scrape
    assert sample(scrape(port), "rerankd_score_cache_hits_total") == 8


def test_a_broken_source_leaves_the_rest_of_thescrape(metrics):
    metrics.observe("rerankd.broken", lambda: 1 / 0, description="always fails")
    metrics.observe("rerankd.in_flight", lambda: 2, description="fine")
    port = metrics.serve("127.0.0.1", 0)
    s = scrape(port)
    assert sample(s, "rerankd_in_flight") == 2
    assert not any(k.startswith("rerankd_broken") for k in s)


def test_a_port_in_use_leaves_metrics_off_without_raising(metrics):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert metrics.serve("127.0.0.1", busy.getsockname()[1]) is None


def test_off_serves_nothing_but_still_counts():
    m = Metrics(False)
    m.observe("rerankd.in_flight", lambda: 1, description="ignored")
    m.rpc_done("Rerank", "OK", 0.01)
    m.stages({"infer": 3.0})
    assert m.serve("127.0.0.1", 0) is None
    assert m.requests[("Rerank", "OK")] == 1 and m.stage_ms["infer"] == 3.0
    m.shutdown()
