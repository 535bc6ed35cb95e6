"""Online evaluation end to end: MovieLens test interactions replayed as clicks against two
served models, then ``rerankd report online`` checked against numbers computed here from the
replies.

The session Triton serves one exported version of the tiny model, so the second arm is the
same version under a second model name (``reranker_b``: a copy of ``reranker``'s version 1,
loaded into the same Triton). Two gateway processes, one per model name, each pinned to
version 1 (``RERANKD_TRITON_MODEL_NAME`` / ``RERANKD_TRITON_MODEL_VERSION``), share one SQLite
store holding the catalogue and the replayed users' histories. Each user's request carries
the retriever's candidates (ItemKNN top-50, ``evaluation.protocol.build_lists``) with the
test item in them; the user then clicks the test item with the reply's request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import grpc
import pytest

from evaluation.online import wilson
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.features.sqlite import SqliteStore
from server.types import Event
from tests.integration.conftest import gateway_process
from tests.integration.test_redis_cluster import cluster  # noqa: F401 (a fixture: a real 3-node cluster)

pytestmark = pytest.mark.integration

USERS = 30
K = 10
LOG_TOP_K = 20
SECOND = "reranker_b"


@pytest.fixture(scope="module")
def second_model(stack):
    """``reranker``'s version 1 again, as the model ``reranker_b`` in the session's Triton."""
    import tritonclient.grpc as tc

    src, dst = stack.repo / "reranker", stack.repo / SECOND
    shutil.copytree(src, dst)
    config = dst / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "reranker"', f'name: "{SECOND}"', 1))
    manifest = dst / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["spec"]["name"] = SECOND  # the gateway asks Triton for the spec's model name
    manifest.write_text(json.dumps(data))
    client = tc.InferenceServerClient(stack.triton.grpc_url)
    client.load_model(SECOND)
    try:
        yield SECOND
    finally:
        client.unload_model(SECOND)
        client.close()
        shutil.rmtree(dst, ignore_errors=True)


def _replay_lists(movielens_folder):
    from evaluation.protocol import build_lists
    from interactions.movielens import leave_one_out, load_interactions, load_items

    split = leave_one_out(load_interactions(movielens_folder))
    items = load_items(movielens_folder)
    users = [u for u in split.users if u in split.test][:USERS]
    lists, _ = build_lists(split, [i.item_id for i in items], "test", users=users)
    for el in lists:
        if not el.covered:  # the test item must be among the candidates: it takes the last place
            el.candidates[-1] = el.target
    return split, items, lists


async def _load_store(db, split, items, users) -> None:
    store = SqliteStore(db)
    try:
        await store.upsert_items(items)
        chosen = set(users)
        await store.record_events([Event(x.user_id, x.item_id, "rating", float(x.timestamp), x.rating)
                                   for x in split.interactions("test") if x.user_id in chosen])
    finally:
        await store.close()


def test_report_online_matches_the_replayed_replies(stack, second_model, movielens_folder, tmp_path):
    split, items, lists = _replay_lists(movielens_folder)
    db = tmp_path / "store.db"
    asyncio.run(_load_store(db, split, items, [el.user for el in lists]))
    env = {"RERANKD_STORE_URL": f"sqlite:///{db}", "RERANKD_TRITON_MODEL_VERSION": "1",
           "RERANKD_ONLINE_LOG_TOP_K": str(LOG_TOP_K)}
    expected: dict[str, list[int]] = {"reranker:1": [], f"{SECOND}:1": []}  # arm -> rank of each test item
    replies: dict[str, list[str]] = {}
    with contextlib.ExitStack() as es:
        _, addr_a = es.enter_context(gateway_process(stack.triton, stack.repo, tmp_path / "a.log", **env))
        _, addr_b = es.enter_context(gateway_process(stack.triton, stack.repo, tmp_path / "b.log",
                                                     RERANKD_TRITON_MODEL_NAME=SECOND, **env))
        stubs = {arm: pb_grpc.RerankerStub(es.enter_context(grpc.insecure_channel(addr)))
                 for arm, addr in zip(expected, (addr_a, addr_b))}
        for n, el in enumerate(lists):
            arm = list(expected)[n % 2]
            stub = stubs[arm]
            resp = stub.Rerank(pb.RerankRequest(user_id=el.user, candidates=[
                pb.Candidate(item_id=c, retrieval_score=r) for c, r in zip(el.candidates, el.retrieval)]), timeout=60)
            assert f"{resp.model_name}:{resp.model_version}" == arm and not resp.degraded
            ranked = [it.item_id for it in resp.items]
            replies[resp.request_id] = ranked
            expected[arm].append(ranked.index(el.target) + 1)
            click = pb.Event(user_id=el.user, item_id=el.target, event_type="click", timestamp=time.time(),
                             request_id=resp.request_id)
            assert stub.RecordEvents(pb.RecordEventsRequest(events=[click, click]), timeout=30).accepted == 2
        # Not attributed: an unknown request id, and another user naming someone's request id.
        first_rid = next(iter(replies))
        stubs["reranker:1"].RecordEvents(pb.RecordEventsRequest(events=[
            pb.Event(user_id=lists[0].user, item_id=lists[0].target, event_type="click", request_id="no-such-request"),
            pb.Event(user_id="someone-else", item_id=lists[0].target, event_type="click", request_id=first_rid)]),
            timeout=30)
        with pytest.raises(grpc.RpcError) as err:  # a request id that is not one
            stubs["reranker:1"].RecordEvents(pb.RecordEventsRequest(events=[pb.Event(
                user_id="u", item_id="1", event_type="click", request_id="bad\nid")]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "events[0].request_id" in err.value.details()
    # The gateways have stopped (each wrote what was still queued). Each reply's first
    # LOG_TOP_K items were logged, in order, under its request id.
    async def logged():
        store = SqliteStore(db)
        try:
            return await store.export_impressions()
        finally:
            await store.close()

    shown = {i.request_id: i for i in asyncio.run(logged())}
    assert set(shown) == set(replies)
    for rid, ranked in replies.items():
        assert list(shown[rid].item_ids) == ranked[:LOG_TOP_K]

    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "cli", "report", "online", "--store", f"sqlite:///{db}",
                          "--k", str(K), "--out", str(out)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, RERANKD_CONFIG="", RERANKD_ONLINE_LOG_TOP_K=str(LOG_TOP_K)))
    assert run.returncode == 0, run.stderr
    rep = json.loads((out / "online.json").read_text())
    arms = {a["arm"]: a for a in rep["arms"]}
    assert set(arms) == set(expected)
    for arm, ranks in expected.items():
        a = arms[arm]
        n = len(ranks)
        hits = sum(r <= K for r in ranks)
        rr = [1 / r if r <= LOG_TOP_K else 0.0 for r in ranks]  # beyond the logged list: 0
        assert a["requests"] == n == USERS // 2
        assert a["clicks"] == n and a["clicks_beyond_list"] == sum(r > LOG_TOP_K for r in ranks)
        assert a["events"].get("click", 0) == sum(r <= LOG_TOP_K for r in ranks)
        assert a["clicked_requests"] == hits and a["ctr"] == pytest.approx(hits / n, abs=1e-12)
        assert a["mrr"] == pytest.approx(sum(rr) / n, abs=1e-12)
        assert a["ctr_low"] <= a["ctr"] <= a["ctr_high"] and a["mrr_low"] <= a["mrr"] <= a["mrr_high"]
        assert (a["ctr_low"], a["ctr_high"]) == pytest.approx(wilson(hits, n))
    [diff] = rep["differences"]
    assert diff["baseline"] == "reranker:1" and diff["arm"] == f"{SECOND}:1"
    assert diff["ctr_diff"] == pytest.approx(arms[f"{SECOND}:1"]["ctr"] - arms["reranker:1"]["ctr"])
    assert rep["events"]["no_impression"] == 1 and rep["events"]["other_user"] == 1
    assert rep["events"]["repeats"] == USERS  # each click was sent twice
    assert (out / "online.md").is_file() and (out / "online.png").stat().st_size > 1000
    assert f"CTR@{K}" in run.stdout


def test_impressions_and_attributed_events_on_a_redis_cluster(cluster):  # noqa: F811
    """The Redis layout's keys span slots (a request id's, a day's, a user's): pipelines
    follow the cluster's slots; the report reads back what was written, forget erases it."""
    import uuid

    from server.features.redis import RedisStore
    from server.types import Impression

    url, _ = cluster

    async def go():
        store = RedisStore(url, key_prefix=f"online:{uuid.uuid4().hex[:8]}:")
        try:
            now = time.time()
            shown = [Impression(f"r{i}", f"user-{i % 5}", "reranker", "1", ("a", "b"), now - i) for i in range(20)]
            await store.record_impressions(shown)
            await store.record_events([Event(f"user-{i % 5}", "b", "click", now, None, "", f"r{i}") for i in range(20)])
            got = await store.export_impressions()
            events = await store.export_attributed_events()
            await store.forget_user("user-0")
            after = await store.export_impressions()
            return shown, got, events, after
        finally:
            await store.close()

    shown, got, events, after = asyncio.run(go())
    assert sorted(got, key=lambda i: i.request_id) == sorted(shown, key=lambda i: i.request_id)
    assert sorted(e.request_id for e in events) == sorted(i.request_id for i in shown)
    assert {i.user_id for i in after} == {f"user-{k}" for k in range(1, 5)} and len(after) == 16
