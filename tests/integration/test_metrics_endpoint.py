"""The gateway's metrics endpoint on a real gateway process and the session's real Triton."""

from __future__ import annotations

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.triton.launcher import free_port
from tests.integration.conftest import gateway_process
from tests.prometheus_text import sample, scrape

pytestmark = pytest.mark.integration


def test_metrics_count_rpcs_by_code_and_show_cache_hits_and_the_served_version(stack, tmp_path):
    port = free_port()
    with gateway_process(stack.triton, stack.repo, tmp_path / "gw.log",
                         RERANKD_TELEMETRY_METRICS_PORT=str(port)) as (_, addr), \
            grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        stub.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id=f"mx{i}", title=f"metered film {i}") for i in range(4)]))
        req = pb.RerankRequest(user_id="u-metrics", candidates=[pb.Candidate(item_id=f"mx{i}") for i in range(4)])
        stub.Rerank(req, timeout=30)
        stub.Rerank(req, timeout=30)  # same user, same items: scores come from the score cache
        with pytest.raises(grpc.RpcError) as err:
            stub.Rerank(pb.RerankRequest(user_id="u-metrics"), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        s = scrape(port)
    assert sample(s, "rerankd_requests_total", method="Rerank", code="OK") == 2
    assert sample(s, "rerankd_requests_total", method="Rerank", code="INVALID_ARGUMENT") == 1
    assert sample(s, "rerankd_requests_total", method="UpsertItems", code="OK") == 1
    assert sample(s, "rerankd_rerank_duration_seconds_count") == 2
    assert sample(s, "rerankd_stage_calls_total", stage="tokenize") == 2
    assert sample(s, "rerankd_score_cache_hits_total") == 4 and sample(s, "rerankd_score_cache_misses_total") == 4
    assert sample(s, "rerankd_score_cache_hit_ratio") == 0.5
    assert sample(s, "rerankd_item_cache_hits_total") >= 4
    assert sample(s, "rerankd_model_serving", version="1") == 1
    assert sample(s, "rerankd_in_flight") == 0 and sample(s, "rerankd_triton_open_calls") == 0
