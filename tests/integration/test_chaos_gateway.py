"""Chaos: the gateway SIGKILLed right after acknowledging events, on each store backend.

Writer threads stream RecordEvents (each event with its own idempotency key) to a real
gateway process; the moment the writers' acknowledgements reach a target, the thread that
received the last one SIGKILLs the gateway, with other writes still in flight. Then a new
gateway on the same store must see every acknowledged event: replaying them all is answered
"all duplicates", and the store itself holds each one. SQLite is durable before the ack
(WAL, ``synchronous=FULL``, committed before the reply); Redis runs as rerankd requires
(AOF, ``appendfsync always``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.features import open_store
from tests.integration.conftest import gateway_process
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis

pytestmark = pytest.mark.integration

USERS = [f"gk-u{i}" for i in range(5)]
WRITERS = 4
BATCH = 3
TARGET_ACKS = 40  # RecordEvents calls acknowledged before the kill


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    try:
        proc = start_redis(tmp_path_factory.mktemp("redis"), appendonly=True)
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    yield proc.url
    proc.stop()


def _write_until_killed(addr: str, proc) -> tuple[dict[str, pb.Event], list[str]]:
    """Stream batches from ``WRITERS`` threads; SIGKILL ``proc`` as soon as the acks reach
    ``TARGET_ACKS``. Returns the acknowledged events by key, and the codes of failed calls."""
    acked: dict[str, pb.Event] = {}
    errors: list[str] = []
    lock = threading.Lock()
    calls = [0]

    def writer(w: int) -> None:
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.RerankerStub(ch)
            for n in range(100_000):
                events = [pb.Event(user_id=USERS[(n + j) % len(USERS)], item_id=f"i{(w * 7 + n + j) % 50}",
                                   event_type="click", timestamp=time.time(), idempotency_key=f"w{w}-{n}-{j}")
                          for j in range(BATCH)]
                try:
                    resp = stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=10)
                except grpc.RpcError as exc:
                    with lock:
                        errors.append(exc.code().name)
                    return
                with lock:
                    if resp.accepted != BATCH:  # fresh keys: all must be applied
                        errors.append(f"accepted {resp.accepted} of {BATCH}")
                        return
                    acked.update((e.idempotency_key, e) for e in events)
                    calls[0] += 1
                    if calls[0] == TARGET_ACKS:
                        os.kill(proc.pid, signal.SIGKILL)  # right after this acknowledgement

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return acked, errors


async def _stored_keys(url: str) -> set[str]:
    store = open_store(url, history_len=1_000_000)
    try:
        return {e.idempotency_key for u in USERS for e in await store.recent_events(u, -1)}
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_events_acknowledged_before_a_sigkill_are_all_durable(backend, stack, tmp_path, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?key_prefix=gk-{tmp_path.name}:"
    # A history window larger than the run: the Redis store trims each user's events to it.
    env = dict(RERANKD_STORE_URL=url, RERANKD_STORE_HISTORY_LEN="1000000")

    with gateway_process(stack.triton, stack.repo, tmp_path / "first.log", **env) as (proc, addr):
        acked, errors = _write_until_killed(addr, proc)
        assert proc.wait(10) == -signal.SIGKILL
    assert len(acked) >= TARGET_ACKS * BATCH
    # Calls in flight at the kill, and the next ones, fail as the connection does.
    assert set(errors) == {"UNAVAILABLE"}, errors
    assert len(errors) == WRITERS

    with gateway_process(stack.triton, stack.repo, tmp_path / "second.log", **env) as (_, addr):
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.RerankerStub(ch)
            events = list(acked.values())
            accepted = duplicates = 0
            for start in range(0, len(events), 200):
                resp = stub.RecordEvents(pb.RecordEventsRequest(events=events[start:start + 200]), timeout=30)
                accepted, duplicates = accepted + resp.accepted, duplicates + resp.duplicates
    # The new gateway knows every acknowledged key: the replay applies nothing.
    assert (accepted, duplicates) == (0, len(events))
    missing = set(acked) - asyncio.run(_stored_keys(url))
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events lost: {sorted(missing)[:10]}"
