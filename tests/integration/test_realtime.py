"""Real-time personalization through real gateway processes: both store backends,
several gateways sharing one redis-server, SIGKILL durability, the bulk item loader."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.features.sqlite import SqliteStore
from server.settings import PROJECT_ROOT
from tests.integration.conftest import gateway_process
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis

pytestmark = pytest.mark.integration

ITEMS = [pb.Item(item_id=f"r{i}", title=t, attributes={"genres": g}) for i, (t, g) in enumerate([
    ("Alien", "Horror|Sci-Fi"), ("Aliens", "Action|Sci-Fi"), ("Babe", "Children's|Comedy"),
    ("Clueless", "Comedy|Romance"), ("Heat", "Action|Crime"), ("Fargo", "Crime|Drama")])]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    try:
        proc = start_redis(tmp_path_factory.mktemp("redis"))
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module")
def redis_gateways(stack, redis_url, tmp_path_factory):
    """Two gateway processes sharing one redis-server (and the session's Triton)."""
    logs = tmp_path_factory.mktemp("redis_gw")
    env = dict(RERANKD_STORE_URL=f"{redis_url}?key_prefix=it:")
    with gateway_process(stack.triton, stack.repo, logs / "a.log", **env) as (_, a), \
            gateway_process(stack.triton, stack.repo, logs / "b.log", **env) as (_, b):
        yield a, b


def _stub(addr):
    return pb_grpc.RerankerStub(grpc.insecure_channel(addr))


def _scores(stub, user):
    resp = stub.Rerank(pb.RerankRequest(user_id=user, candidates=[pb.Candidate(item_id=f"r{i}") for i in range(6)]),
                       timeout=30)
    assert not any(i.unscored for i in resp.items)
    return {i.item_id: i.score for i in resp.items}


def _event(user, item, ts, key=""):
    return pb.Event(user_id=user, item_id=item, event_type="click", timestamp=ts, idempotency_key=key)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_event_changes_the_next_ranking_on_each_backend(backend, stack, request):
    addr = stack.addr if backend == "sqlite" else request.getfixturevalue("redis_gateways")[0]
    stub = _stub(addr)
    stub.UpsertItems(pb.UpsertItemsRequest(items=ITEMS))
    user = f"rt-{backend}"
    before = _scores(stub, user)
    ack = stub.RecordEvents(pb.RecordEventsRequest(events=[_event(user, "r0", time.time(), f"{user}-1")]))
    assert ack.accepted == 1
    after = _scores(stub, user)
    assert before != after
    # A replayed idempotency key is acknowledged as a duplicate and changes nothing.
    dup = stub.RecordEvents(pb.RecordEventsRequest(events=[_event(user, "r1", time.time(), f"{user}-1")]))
    assert (dup.accepted, dup.duplicates) == (0, 1)
    assert _scores(stub, user) == after


def test_read_your_writes_across_gateways_sharing_redis(redis_gateways):
    a, b = (_stub(x) for x in redis_gateways)
    a.UpsertItems(pb.UpsertItemsRequest(items=ITEMS))
    user = "rt-shared"
    on_b_before = _scores(b, user)
    a.RecordEvents(pb.RecordEventsRequest(events=[_event(user, "r4", time.time())]))
    # The very next request, on the other gateway, sees the event.
    assert _scores(b, user) != on_b_before
    assert _scores(b, user) == _scores(a, user)


def test_concurrent_writers_lose_no_events(redis_gateways, redis_url):
    from server.features.redis import RedisStore

    stubs = [_stub(x) for x in redis_gateways]

    def write(k):
        stub = stubs[k % 2]
        events = [_event(f"rt-conc-{k % 5}", f"r{j % 6}", 1000.0 + k * 10 + j, f"conc-{k}-{j}") for j in range(10)]
        return stub.RecordEvents(pb.RecordEventsRequest(events=events)).accepted

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        accepted = sum(pool.map(write, range(40)))
    assert accepted == 400

    async def count():
        store = RedisStore(f"{redis_url}?key_prefix=it:", history_len=1000)
        try:
            return [len(await store.recent_events(f"rt-conc-{u}", 1000)) for u in range(5)]
        finally:
            await store.close()

    # history_len in the gateway bounds each user's window to its default (20).
    assert asyncio.run(count()) == [20] * 5


def test_acknowledged_events_survive_sigkill_of_the_gateway(stack, tmp_path):
    db = tmp_path / "durable.db"
    with gateway_process(stack.triton, stack.repo, tmp_path / "gw.log",
                         RERANKD_STORE_URL=f"sqlite:///{db}") as (proc, addr):
        stub = _stub(addr)
        acked = 0
        for k in range(20):
            acked += stub.RecordEvents(pb.RecordEventsRequest(
                events=[_event("rt-durable", f"r{k % 6}", 2000.0 + k, f"d-{k}")])).accepted
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    async def read():
        store = SqliteStore(db, history_len=100)
        try:
            return await store.recent_events("rt-durable", 100)
        finally:
            await store.close()

    assert acked == 20 and len(asyncio.run(read())) == 20


def test_bulk_loader_csv_through_the_api(stack, tmp_path):
    path = tmp_path / "catalog.csv"
    rows = ["item_id,title,text,genres,price"] + [f"bulk{i},Film {i},About film {i},Drama,{i}.99" for i in range(1200)]
    path.write_text("\n".join(rows) + "\n")
    out = subprocess.run([sys.executable, "-m", "cli", "client", "--addr", stack.addr, "load-items", str(path),
                          "--batch", "500"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "upserted 1200 items" in out.stdout and "1200/1200" in out.stdout
    resp = _stub(stack.addr).Rerank(pb.RerankRequest(
        user_id="rt-bulk", candidates=[pb.Candidate(item_id=f"bulk{i}") for i in (0, 599, 1199)]), timeout=30)
    assert not any(i.unscored for i in resp.items)


def test_perf_event_to_effect_measures_changed_rankings_through_grpc(stack, stub):
    """``perf.loadgen.event_to_effect`` (the perf suite's real-time figure) on the real gateway."""
    from perf.loadgen import event_to_effect

    stub.UpsertItems(pb.UpsertItemsRequest(items=ITEMS))
    msgs = [pb.RerankRequest(user_id="overwritten", candidates=[pb.Candidate(item_id=i.item_id) for i in ITEMS])]
    got = event_to_effect(stack.addr, msgs, 3)
    assert got["samples"] == 3 and got["changed"] == 3, got  # every click changed the next ranking
    assert 0 < got["record_p50_ms"] < got["effect_p50_ms"] <= got["effect_p99_ms"], got
