"""Several gateways, one Redis truth: two real gateway processes on the session's Triton
share one real ``redis-server``.

* An event acknowledged by gateway A changes the very next Rerank on gateway B (the rules'
  ``exclude_interacted`` drops the clicked item).
* An item changed through A reaches B's item cache within a pub/sub hop (``exclude_unavailable``
  on an item B has cached; the item cache TTL is 600 s, so only the invalidation can do it).
* ForgetUser on A drops the scores B cached for the user (privacy: not only A's).

Loose bounds here; the figures come from ``perf/multi_gateway.py``, which shares the
measurement functions.
"""

from __future__ import annotations

import time

import grpc
import pytest

from perf.multi_gateway import (
    GATEWAY_ENV,
    RULES,
    catalog,
    event_to_effect,
    item_to_effect,
    summary,
)
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.triton.launcher import free_port
from tests.integration.conftest import gateway_process
from tests.prometheus_text import sample, scrape
from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis

pytestmark = pytest.mark.integration

PREFIX = "mg"


@pytest.fixture(scope="module")
def gateways(stack, tmp_path_factory):
    """(stub A, stub B, B's metrics port), both gateways on one redis-server."""
    tmp = tmp_path_factory.mktemp("multi_gw")
    try:
        redis_proc = start_redis(tmp / "redis", appendonly=True)
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    env = dict(GATEWAY_ENV, RERANKD_STORE_URL=f"{redis_proc.url}?key_prefix=mgw:", RERANKD_RULES_PATH=str(rules))
    metrics_b = free_port()
    try:
        with gateway_process(stack.triton, stack.repo, tmp / "a.log", **env) as (_, addr_a), \
                gateway_process(stack.triton, stack.repo, tmp / "b.log", RERANKD_TELEMETRY_METRICS_PORT=str(metrics_b),
                                **env) as (_, addr_b), \
                grpc.insecure_channel(addr_a) as ch_a, grpc.insecure_channel(addr_b) as ch_b:
            a, b = pb_grpc.RerankerStub(ch_a), pb_grpc.RerankerStub(ch_b)
            a.UpsertItems(pb.UpsertItemsRequest(items=catalog(PREFIX)), timeout=30)
            yield a, b, metrics_b
    finally:
        redis_proc.stop()


def test_event_on_a_changes_the_very_next_rerank_on_b(gateways):
    a, b, _ = gateways
    samples = event_to_effect(a, b, 40, prefix=PREFIX, user_prefix="mg-ev")
    s = summary(samples)
    print(f"event to effect across gateways: {s}")
    assert s["max_reranks"] == 1, samples  # never a stale history: the next Rerank on B has it
    assert s["max_ms"] < 5000


def test_item_changed_on_a_reaches_b_within_a_hop(gateways):
    a, b, metrics_b = gateways
    received = sample(scrape(metrics_b), "rerankd_invalidation_received_total")
    assert sample(scrape(metrics_b), "rerankd_invalidation_subscribed") == 1
    s = summary(item_to_effect(a, b, 10, prefix=PREFIX, user="mg-items"))
    print(f"item to effect across gateways: {s}")
    # The item cache's TTL is 600 s: a change seen within 2 s came through the invalidation.
    assert s["max_ms"] < 2000
    assert sample(scrape(metrics_b), "rerankd_invalidation_received_total") >= received + 10


def test_forget_user_on_a_drops_the_scores_cached_on_b(gateways):
    a, b, metrics_b = gateways
    # Candidates never scored before: B's cache has no entry that another user's request stored.
    fresh = catalog("mgf", n=5)
    a.UpsertItems(pb.UpsertItemsRequest(items=fresh), timeout=30)
    ids = [i.item_id for i in fresh]
    # Different histories: users with one user text share its cached scores.
    for user, clicked in (("mg-forget", f"{PREFIX}9"), ("mg-control", f"{PREFIX}8")):
        a.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=clicked,
                                                               event_type="click", timestamp=1.7e9)]), timeout=30)
        # Scored on B from the user's own history: B caches the scores under the user.
        b.Rerank(pb.RerankRequest(user_id=user, candidates=[pb.Candidate(item_id=i) for i in ids]), timeout=30)
    received = sample(scrape(metrics_b), "rerankd_invalidation_received_total")
    reply = a.ForgetUser(pb.ForgetUserRequest(user_id="mg-forget"), timeout=30)
    assert reply.events_removed == 1
    deadline = time.monotonic() + 5
    while sample(scrape(metrics_b), "rerankd_invalidation_received_total") <= received:
        assert time.monotonic() < deadline, "B never heard of the erasure"
        time.sleep(0.02)
    # B already dropped the forgotten user's scores; the control user's are still there.
    assert b.ForgetUser(pb.ForgetUserRequest(user_id="mg-forget"), timeout=30).cached_scores_removed == 0
    # (At least its own five: every entry under its user text goes, stored by whichever user.)
    assert b.ForgetUser(pb.ForgetUserRequest(user_id="mg-control"), timeout=30).cached_scores_removed >= len(ids)
