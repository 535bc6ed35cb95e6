"""ForgetUser through a real gateway process (session Triton), on SQLite and on a real
redis-server: the user's events, history, idempotency keys and cached scores go, idempotently,
and the raw user id appears nowhere in the gateway's log or traces (its keyed hash does)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.privacy import UserIdHasher
from tests.integration.conftest import gateway_process
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis

pytestmark = pytest.mark.integration

HASH_KEY = "forget-test-key"
ITEMS = [pb.Item(item_id=f"f{i}", title=t) for i, t in enumerate(
    ["Alien", "Aliens", "Babe", "Clueless", "Heat", "Fargo"])]


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory):
    try:
        proc = start_redis(tmp_path_factory.mktemp("redis"))
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    yield proc
    proc.stop()


def _scores(stub, user):
    resp = stub.Rerank(pb.RerankRequest(user_id=user, candidates=[pb.Candidate(item_id=i.item_id) for i in ITEMS]),
                       timeout=30)
    return {i.item_id: i.score for i in resp.items}


def _forget(stub, user):
    resp = stub.ForgetUser(pb.ForgetUserRequest(user_id=user), timeout=30)
    return resp.events_removed, resp.cached_scores_removed


def _scenario(addr: str, user: str) -> None:
    stub = pb_grpc.RerankerStub(grpc.insecure_channel(addr))
    stub.UpsertItems(pb.UpsertItemsRequest(items=ITEMS), timeout=30)
    cold = _scores(stub, f"never-seen-{user}")
    now = time.time()
    events = [pb.Event(user_id=user, item_id=f"f{i}", event_type="click", timestamp=now + i,
                       idempotency_key=f"{user}-click-{i}") for i in range(2)]
    assert stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=30).accepted == 2
    warm = _scores(stub, user)  # fills the score cache under the user's history
    assert warm != cold

    assert _forget(stub, user) == (2, len(ITEMS))
    assert _scores(stub, user) == cold  # no history left: read like any new user
    assert _forget(stub, user) == (0, 0)  # idempotent
    # The idempotency keys went too: the same event is applied anew.
    assert stub.RecordEvents(pb.RecordEventsRequest(events=events[:1]), timeout=30).accepted == 1

    # Errors name the field, not the person; an empty id is INVALID_ARGUMENT.
    with pytest.raises(grpc.RpcError) as err:
        stub.ForgetUser(pb.ForgetUserRequest(user_id=" "), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("user_id:")
    bad = pb.Event(user_id=user, item_id="f0", event_type="no-such-type", timestamp=now)
    with pytest.raises(grpc.RpcError) as err:
        stub.RecordEvents(pb.RecordEventsRequest(events=[bad]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and user not in err.value.details()

    # The command line client, as an operator runs it.
    out = subprocess.run([sys.executable, "-m", "cli", "client", "--addr", addr, "forget", user],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "removed 1 events, 0 cached scores"


def _check_log(log_text: str, user: str) -> None:
    ref = UserIdHasher(HASH_KEY)(user)
    assert user not in log_text
    assert re.search(rf"ForgetUser {re.escape(ref)}: 2 events and {len(ITEMS)} cached scores removed", log_text)
    spans = [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", log_text, flags=re.DOTALL | re.MULTILINE)]
    tagged = {s["name"] for s in spans if s.get("attributes", {}).get("rerank.user") == ref}
    assert {"rerank.v1.Reranker/Rerank", "rerank.v1.Reranker/ForgetUser"} <= tagged


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_forget_user_through_the_gateway(backend, stack, tmp_path, request):
    user = f"person-{backend}-7f3c9a"
    env = {"RERANKD_TELEMETRY_TRACES": "console", "RERANKD_PRIVACY_USER_ID_HASH_KEY": HASH_KEY}
    if backend == "redis":
        proc = request.getfixturevalue("redis_proc")
        env["RERANKD_STORE_URL"] = f"{proc.url}?key_prefix=forget:"
    else:
        env["RERANKD_STORE_URL"] = f"sqlite:///{tmp_path / 'store.db'}"
    log = tmp_path / "gateway.log"
    with gateway_process(stack.triton, stack.repo, log, **env) as (_, addr):
        _scenario(addr, user)
        if backend == "redis":
            import redis

            r = redis.Redis.from_url(proc.url, decode_responses=True)
            names = r.keys("forget:*")
            r.close()
            # The last ForgetUser (the CLI's) left no key naming the user; the catalog stays.
            # (``never-seen-<user>``, another user never forgotten, keeps its impressions.)
            assert [k for k in names if user in k and f"never-seen-{user}" not in k] == []
            assert "forget:item:f0" in names
    _check_log(log.read_text(), user)  # spans are flushed when the gateway stops
