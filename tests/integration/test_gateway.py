"""End to end through the real gateway process and the real Triton server."""

from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from contract.items import Item
from contract.model_spec import Manifest
from contract.render import render_item, render_user
from contract.tokenize import PairTokenizer
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.devstack import grpc_health, wait_until
from tests.integration.conftest import gateway_process, inference_counts, queue_delay

pytestmark = pytest.mark.integration

CATALOG = [
    Item("m1", "Toy Story", attributes={"year": "1995", "genres": "Animation|Children's|Comedy"}),
    Item("m2", "GoldenEye", attributes={"year": "1995", "genres": "Action|Adventure|Thriller"}),
    Item("m3", "Four Rooms", attributes={"year": "1995", "genres": "Thriller"}),
    Item("m4", "Get Shorty", attributes={"year": "1995", "genres": "Action|Comedy|Drama"}),
    Item("m5", "Copycat", attributes={"year": "1995", "genres": "Crime|Drama|Thriller"}),
    Item("m6", "Twelve Monkeys", attributes={"year": "1995", "genres": "Drama|Sci-Fi"}),
    Item("m7", "Babe", attributes={"year": "1995", "genres": "Children's|Comedy|Drama"}),
    Item("m8", "Dead Man Walking", text="A nun comforts a convict on death row.",
         attributes={"year": "1995", "genres": "Drama"}),
]
# Score tolerance between Triton's reply and ONNX Runtime called directly on the same ids:
# same engine, same inputs, but batches merged by the dynamic batcher change float summation order.
SCORE_TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def catalog(stub):
    stub.UpsertItems(pb.UpsertItemsRequest(items=[
        pb.Item(item_id=i.item_id, title=i.title, text=i.text, attributes=i.attributes) for i in CATALOG]))


def _rerank(stub, user, ids, **kw):
    return stub.Rerank(pb.RerankRequest(user_id=user, candidates=[pb.Candidate(item_id=i) for i in ids], **kw),
                       timeout=30)


def _direct_scores(stack, history: list[Item], items: list[Item]) -> np.ndarray:
    folder = stack.repo / "reranker" / "1"
    spec = Manifest.read(folder / "manifest.json").spec
    tok = PairTokenizer.from_file(folder / "tokenizer.json", spec)
    batch = tok.encode(render_user(history), [render_item(i) for i in items])
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["score"], batch.arrays)[0].reshape(-1)


def test_health_not_serving_before_model_load_then_serving(stack):
    assert stack.health_before_load == "NOT_SERVING"
    assert grpc_health(stack.addr) == "SERVING"


def test_ranking_equals_sorting_direct_onnxruntime_scores(stack, stub):
    stub.RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id="u-direct", item_id="m2", event_type="click", timestamp=1000),
        pb.Event(user_id="u-direct", item_id="m5", event_type="view", timestamp=2000),
    ]))
    ids = ["m1", "m3", "m4", "m6", "m7", "m8"]
    resp = _rerank(stub, "u-direct", ids)
    by_id = {i.item_id: i for i in CATALOG}
    expected = _direct_scores(stack, [by_id["m5"], by_id["m2"]], [by_id[i] for i in ids])
    served = {it.item_id: it.score for it in resp.items}
    diffs = [abs(served[i] - float(s)) for i, s in zip(ids, expected)]
    assert max(diffs) < SCORE_TOL, diffs
    expected_order = [i for _, i in sorted(zip(-expected, ids))]
    assert [it.item_id for it in resp.items] == expected_order
    assert [it.rank for it in resp.items] == list(range(1, len(ids) + 1))
    assert resp.model_name == "reranker" and resp.model_version == "1"
    stages = {t.stage for t in resp.timings}
    assert {"features", "tokenize", "infer", "total"} <= stages


def test_dynamic_batching_merges_concurrent_requests(stack, stub):
    def one(k):  # distinct texts per request, so the gateway's score cache cannot answer
        cands = [pb.Candidate(item_id=f"b{k}-{j}", text=f"film {k} part {j}") for j in range(3)]
        return stub.Rerank(pb.RerankRequest(user_id=f"u-batch-{k % 4}", candidates=cands), timeout=30)

    # The served default has no queue delay (an idle instance starts at once), so how much
    # gets merged depends on timing; a 20 ms window makes the merging itself deterministic.
    with queue_delay(stack.triton, 20_000) as client:
        one(-1)  # served by the reloaded instance: the old one (and its statistics) is gone
        # Triton may answer before it counts the call: wait for its 3 rows to be counted.
        wait_until(lambda: inference_counts(client)[0] >= 3, 5.0, "Triton to count the first call")
        inf0, exe0 = inference_counts(client)
        with cf.ThreadPoolExecutor(32) as pool:
            replies = list(pool.map(one, range(96)))
        assert [r.degraded_reason for r in replies if r.degraded_reason] == []  # every one reached the model
        # As for the first call: Triton may answer a call before it counts it.
        try:
            wait_until(lambda: inference_counts(client)[0] - inf0 >= 96 * 3, 10.0, "Triton to count every call")
        except TimeoutError:
            pass  # the assertion below says by how much
        inf1, exe1 = inference_counts(client)
    inferences, executions = inf1 - inf0, exe1 - exe0
    print(f"dynamic batching: {inferences} inferences in {executions} executions")
    assert inferences == 96 * 3  # Triton counts rows
    assert executions < 96 / 2  # far fewer engine calls than requests: callers were batched together


def test_callers_short_deadlines_are_deadline_exceeded_and_triton_keeps_serving(stack, stub):
    codes = []
    for k in range(160):  # distinct texts: every request reaches Triton (no score cache hit)
        cands = [pb.Candidate(item_id=f"d{k}-{j}", text=f"late film {k} part {j}") for j in range(40)]
        try:
            resp = stub.Rerank(pb.RerankRequest(user_id="u-deadline", candidates=cands),
                               timeout=(0.001, 0.003, 0.006, 0.012)[k % 4])
            # Degraded mode (the default) answers a call the model cannot serve in time with
            # the fallback order, when that reply can still make the deadline.
            codes.append("LATE" if resp.degraded_reason == "deadline" else grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    # RESOURCE_EXHAUSTED: load shedding refuses a call that abandoned calls still in Triton
    # would make late (server.core.admission).
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED, "LATE",
                          grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    late = codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) + codes.count("LATE")
    print("deadline exceeded:", codes.count(grpc.StatusCode.DEADLINE_EXCEEDED), "fallback for want of time:",
          codes.count("LATE"), "of", len(codes))
    assert late >= 10  # the calls did run out of time
    assert stack.triton.proc.poll() is None, f"Triton exited: see {stack.triton.log_path}"
    assert len(_rerank(stub, "u-deadline", ["m1", "m2"]).items) == 2


def test_inference_abandoned_at_callers_deadlines_holds_admission_slots(stack, tmp_path):
    """Calls that outlive their callers' deadlines still run in Triton (never cancelled): they
    count against the gateway's in-flight limit until Triton answers them."""
    # Load shedding off: it would refuse the second call (its deadline cannot be met) before
    # the limit does, and the limit is what this test is about (shedding: test_shedding.py).
    # Fail mode: degraded mode would answer the late calls with the fallback order
    # (test_degraded.py); their inference calls would still be abandoned in Triton.
    with gateway_process(stack.triton, stack.repo, tmp_path / "gw.log", RERANKD_SERVER_MAX_IN_FLIGHT="2",
                         RERANKD_SERVER_SCORE_CACHE_SIZE="0", RERANKD_SERVER_LOAD_SHEDDING="false",
                         RERANKD_RESILIENCE_ON_MODEL_FAILURE="fail") as (_, addr), \
            grpc.insecure_channel(addr) as ch, queue_delay(stack.triton, 1_500_000):
        stub = pb_grpc.RerankerStub(ch)
        codes = []
        for k in range(3):  # each waits in Triton's 1.5 s batching window past its 0.3 s deadline
            try:
                _rerank_timeout(stub, f"u-abandon-{k}", 0.3)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
                detail = e.details()
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED], codes
        assert "2 abandoned inference calls" in detail, detail
        deadline = time.monotonic() + 10  # once Triton answers them, the slots are free again
        while True:
            try:
                assert len(_rerank_timeout(stub, "u-abandon-after", 5.0).items) == 2
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, e
                time.sleep(0.05)


def _rerank_timeout(stub, user, timeout_s):
    cands = [pb.Candidate(item_id=f"{user}-{j}", text=f"held film {user} {j}") for j in range(2)]
    return stub.Rerank(pb.RerankRequest(user_id=user, candidates=cands), timeout=timeout_s)


def test_events_change_the_very_next_ranking(stub):
    before = _rerank(stub, "u-live", ["m1", "m2", "m3", "m4"])
    stub.RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id="u-live", item_id="m6", event_type="purchase", timestamp=time.time())]))
    after = _rerank(stub, "u-live", ["m1", "m2", "m3", "m4"])
    s0 = {i.item_id: i.score for i in before.items}
    s1 = {i.item_id: i.score for i in after.items}
    assert any(abs(s0[k] - s1[k]) > 1e-6 for k in s0), "history change did not reach the model input"


def test_top_n_cuts_the_reply(stub):
    resp = _rerank(stub, "u-top", ["m1", "m2", "m3", "m4", "m5"], top_n=2)
    assert len(resp.items) == 2 and [i.rank for i in resp.items] == [1, 2]


def test_unknown_items_inline_text_scored_else_unscored_and_last(stub):
    req = pb.RerankRequest(user_id="u-unknown", candidates=[
        pb.Candidate(item_id="ghost"),
        pb.Candidate(item_id="m1"),
        pb.Candidate(item_id="fresh", text="Brand new space opera | genres: Sci-Fi"),
    ])
    resp = stub.Rerank(req, timeout=30)
    assert [i.item_id for i in resp.items][-1] == "ghost"
    flags = {i.item_id: i.unscored for i in resp.items}
    assert flags == {"ghost": True, "m1": False, "fresh": False}


@pytest.mark.parametrize("request_kwargs, field", [
    (dict(user_id="", candidates=[pb.Candidate(item_id="m1")]), "user_id"),
    (dict(user_id="u", candidates=[]), "candidates"),
    (dict(user_id="u", candidates=[pb.Candidate(item_id=f"x{i}") for i in range(301)]), "candidates"),
    (dict(user_id="u", candidates=[pb.Candidate(item_id="m1"), pb.Candidate(item_id="m1")]),
     "candidates[1].item_id"),
    (dict(user_id="u", candidates=[pb.Candidate(item_id="m1"), pb.Candidate(item_id="")]),
     "candidates[1].item_id"),
    (dict(user_id="u", candidates=[pb.Candidate(item_id="m1")], top_n=-1), "top_n"),
])
def test_bad_rerank_input_is_invalid_argument_naming_the_field(stub, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Rerank(pb.RerankRequest(**request_kwargs), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_bad_event_batch_rejected_whole_with_index(stub):
    events = [pb.Event(user_id="u-bad", item_id="m1", event_type="click", timestamp=1.0),
              pb.Event(user_id="u-bad", item_id="m2", event_type="teleport", timestamp=1.0)]
    with pytest.raises(grpc.RpcError) as err:
        stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].event_type" in err.value.details()
    # All or nothing: the valid first event was not written either.
    before = _rerank(stub, "u-bad", ["m3", "m4"])
    cold = _rerank(stub, "u-never-seen", ["m3", "m4"])
    assert [i.score for i in before.items] == pytest.approx([i.score for i in cold.items], abs=SCORE_TOL)


def test_upsert_then_delete_item(stub):
    stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="tmp1", title="Temporary")]))
    assert not _rerank(stub, "u-del", ["tmp1"]).items[0].unscored
    resp = stub.UpsertItems(pb.UpsertItemsRequest(delete_item_ids=["tmp1"]))
    assert resp.deleted == 1
    assert _rerank(stub, "u-del", ["tmp1"]).items[0].unscored


def test_long_candidate_list_is_split_over_max_batch(stack, stub):
    ids = [f"m{1 + k % 8}" for k in range(8)] + [f"cold{k}" for k in range(142)]
    cands = [pb.Candidate(item_id=i, text=f"Film number {k}") for k, i in enumerate(ids[8:])]
    cands = [pb.Candidate(item_id=i) for i in ids[:8]] + cands
    resp = stub.Rerank(pb.RerankRequest(user_id="u-long", candidates=cands), timeout=60)
    assert len(resp.items) == 150 and not any(i.unscored for i in resp.items)
    scores = [i.score for i in resp.items]
    assert scores == sorted(scores, reverse=True)
