"""Traces through a real gateway: the caller's W3C traceparent is joined, stages are spans."""

from __future__ import annotations

import json
import re

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from tests.integration.conftest import gateway_process

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def test_rerank_spans_join_the_callers_trace(stack, tmp_path):
    log = tmp_path / "gw.log"
    with gateway_process(stack.triton, stack.repo, log, RERANKD_TELEMETRY_TRACES="console",
                         RERANKD_STORE_URL=f"sqlite:///{tmp_path / 's.db'}") as (_, addr):
        stub = pb_grpc.RerankerStub(grpc.insecure_channel(addr))
        stub.Rerank(pb.RerankRequest(user_id="traced", candidates=[pb.Candidate(item_id="x", text="a film")]),
                    metadata=[("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")], timeout=30)
    # The gateway flushes its spans on shutdown; the console exporter wrote them as JSON.
    text = log.read_text()
    spans = [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", text, flags=re.S | re.M)]
    ours = [s for s in spans if s["context"]["trace_id"] == f"0x{TRACE_ID}"]
    names = {s["name"] for s in ours}
    assert "rerank.v1.Reranker/Rerank" in names
    assert {"rerank.features", "rerank.tokenize", "rerank.infer", "rerank.rules"} <= names
    rpc = next(s for s in ours if s["name"] == "rerank.v1.Reranker/Rerank")
    assert rpc["parent_id"] == f"0x{CALLER_SPAN}" and rpc["kind"] == "SpanKind.SERVER"
    stage = next(s for s in ours if s["name"] == "rerank.infer")
    assert stage["parent_id"] == rpc["context"]["span_id"]
