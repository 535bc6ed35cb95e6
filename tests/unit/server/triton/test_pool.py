"""TritonPool's balancing and health logic over fake scorers (the real channels, two real
Tritons and a SIGKILL: tests/integration/test_triton_pool.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.errors import DeadlineExceeded, InferenceFailed, InvalidArgument
from server.triton.client import TritonScorer
from server.triton.pool import TritonPool, endpoint_stats, open_scorer, parse_urls


class FakeScorer:
    """A Triton endpoint: answers after ``delay_s``, or fails as unreachable while ``dead``."""

    def __init__(self, url: str, versions=("1",), delay_s: float = 0.0):
        self.url = url
        self.versions = list(versions)
        self.delay_s = delay_s
        self.dead = False
        self.error: InferenceFailed | None = None  # an error Triton answers with
        self.reachable = True
        self.open_calls = 0
        self.max_open = 0
        self.abandoned_calls = 0
        self.answered_calls = 0
        self.scored: list[str] = []  # versions of the calls it answered
        self.probes = 0
        self.closed = False

    async def ready_versions(self, model_name: str, timeout_s: float = 2.0) -> list[str]:
        self.probes += 1
        self.reachable = not self.dead
        return [] if self.dead else list(self.versions)

    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        self.open_calls += 1
        self.max_open = max(self.max_open, self.open_calls)
        try:
            await asyncio.sleep(self.delay_s)
            if self.dead:
                raise InferenceFailed("inference failed: UNAVAILABLE: connection refused", unreachable=True)
            if self.error is not None:
                raise self.error
            self.answered_calls += 1
            self.scored.append(version)
            return np.full(len(batch), float(self.url[-1]), np.float32)
        finally:
            self.open_calls -= 1

    async def close(self, drain_s: float = 10.0) -> None:
        self.closed = True


def pool_of(*scorers, probe_interval_s=0.01):
    return TritonPool(list(scorers), model_name="reranker", probe_interval_s=probe_interval_s)


BATCH = [0, 1, 2]


def test_parse_urls_and_one_url_is_a_plain_scorer():
    assert parse_urls(" a:1, b:2 ,") == ["a:1", "b:2"]
    with pytest.raises(InvalidArgument, match="triton.url"):
        parse_urls(" , ")
    with pytest.raises(InvalidArgument, match="twice"):
        parse_urls("a:1,a:1")

    async def main():  # grpc.aio channels are made on a running loop
        one = open_scorer("127.0.0.1:1", None, "reranker")
        pool = open_scorer("127.0.0.1:1,127.0.0.1:2", None, "reranker")
        try:
            assert isinstance(one, TritonScorer)
            assert isinstance(pool, TritonPool) and [e.url for e in pool.endpoints] == ["127.0.0.1:1", "127.0.0.1:2"]
        finally:
            await one.close()
            await pool.close()

    asyncio.run(main())


def test_least_outstanding_calls_spreads_concurrent_calls():
    a, b = FakeScorer("a1", delay_s=0.05), FakeScorer("b2", delay_s=0.05)
    pool = pool_of(a, b)

    async def main():
        return await asyncio.gather(*(pool.score(BATCH, None, "1") for _ in range(10)))

    asyncio.run(main())
    # Each new call saw the other endpoint with fewer open calls: an even split.
    assert (a.answered_calls, b.answered_calls) == (5, 5)


def test_a_busy_endpoint_gets_fewer_calls():
    slow, fast = FakeScorer("s1", delay_s=0.2), FakeScorer("f2", delay_s=0.01)
    pool = pool_of(slow, fast)

    async def caller(n):
        for _ in range(n):
            await pool.score(BATCH, None, "1")

    async def main():
        await asyncio.gather(*(caller(10) for _ in range(2)))

    asyncio.run(main())
    # A call goes to the slow endpoint only when it has nothing open there: the fast one
    # answers the rest.
    assert slow.max_open == 1 and fast.answered_calls >= 2 * slow.answered_calls


def test_sequential_calls_alternate_between_idle_endpoints():
    a, b = FakeScorer("a1"), FakeScorer("b2")
    pool = pool_of(a, b)

    async def main():
        for _ in range(6):
            await pool.score(BATCH, None, "1")

    asyncio.run(main())
    assert (a.answered_calls, b.answered_calls) == (3, 3)


def test_unreachable_endpoint_is_retried_elsewhere_skipped_then_probed_back():
    a, b = FakeScorer("a1"), FakeScorer("b2")
    pool = pool_of(a, b)
    a.dead = True

    async def main():
        got = [await pool.score(BATCH, None, "1") for _ in range(4)]
        assert all((g == 2.0).all() for g in got)  # every call answered by b
        assert not pool.endpoints[0].up and pool.retries == 1  # one failed try on a, then skipped
        assert b.answered_calls == 4 and a.answered_calls == 0
        a.dead = False  # a restarted Triton: the background probe finds it
        for _ in range(50):
            await asyncio.sleep(0.01)
            if pool.endpoints[0].up:
                break
        assert pool.endpoints[0].up and a.probes >= 1
        for _ in range(4):
            await pool.score(BATCH, None, "1")
        assert a.answered_calls == 2
        await pool.close()

    asyncio.run(main())
    assert a.closed and b.closed


def test_all_endpoints_dead_raises_unreachable_for_degraded_mode():
    a, b = FakeScorer("a1"), FakeScorer("b2")
    a.dead = b.dead = True
    pool = pool_of(a, b)

    async def main():
        with pytest.raises(InferenceFailed) as first:
            await pool.score(BATCH, None, "1")
        assert first.value.unreachable
        with pytest.raises(InferenceFailed, match="none reachable") as later:  # both skipped now
            await pool.score(BATCH, None, "1")
        assert later.value.unreachable
        assert await pool.ready_versions("reranker") == [] and not pool.reachable
        await pool.close()

    asyncio.run(main())


def test_an_error_triton_answered_is_not_retried_and_keeps_the_endpoint_up():
    a, b = FakeScorer("a1"), FakeScorer("b2")
    a.error = b.error = InferenceFailed("inference failed: INTERNAL: boom", unreachable=False)
    pool = pool_of(a, b)

    async def main():
        with pytest.raises(InferenceFailed, match="boom"):
            await pool.score(BATCH, None, "1")

    asyncio.run(main())
    assert all(ep.up for ep in pool.endpoints) and pool.retries == 0


def test_no_retry_when_the_budget_is_spent():
    a, b = FakeScorer("a1", delay_s=0.05), FakeScorer("b2")
    a.dead = True
    pool = pool_of(a, b)
    pool._turn = iter([0] * 10)  # a first

    async def main():
        with pytest.raises(InferenceFailed):
            await pool.score(BATCH, None, "1", timeout_s=0.02)

    asyncio.run(main())
    assert b.answered_calls == 0 and pool.retries == 0


def test_deadline_from_the_endpoint_is_not_a_reason_to_mark_it_down():
    a = FakeScorer("a1")
    pool = pool_of(a, FakeScorer("b2"))

    async def slow(*args, **kwargs):
        raise DeadlineExceeded("Triton did not answer before the deadline")

    a.score = slow
    pool._turn = iter([0] * 10)

    async def main():
        with pytest.raises(DeadlineExceeded):
            await pool.score(BATCH, None, "1", timeout_s=0.1)

    asyncio.run(main())
    assert pool.endpoints[0].up


def test_versions_are_the_union_and_calls_go_where_the_version_is_ready():
    old, new = FakeScorer("o1", versions=["1"]), FakeScorer("n2", versions=["1", "2"])
    pool = pool_of(old, new)

    async def main():
        assert await pool.ready_versions("reranker") == ["1", "2"]
        for _ in range(4):
            await pool.score(BATCH, None, "2")
        for _ in range(4):
            await pool.score(BATCH, None, "1")

    asyncio.run(main())
    assert old.scored == ["1", "1"] and new.scored == ["2"] * 4 + ["1", "1"]


def test_reachable_but_not_ready_is_down_until_a_version_is_ready():
    a, b = FakeScorer("a1", versions=[]), FakeScorer("b2")
    pool = pool_of(a, b)

    async def main():
        assert await pool.ready_versions("reranker") == ["1"]
        assert not pool.endpoints[0].up and pool.reachable
        a.versions = ["1"]
        for _ in range(50):
            await asyncio.sleep(0.01)
            if pool.endpoints[0].up:
                break
        assert pool.endpoints[0].up
        await pool.close()

    asyncio.run(main())


def test_counts_sum_over_endpoints_and_stats_name_each():
    a, b = FakeScorer("a1"), FakeScorer("b2")
    a.open_calls, b.open_calls, a.abandoned_calls, b.abandoned_calls = 2, 3, 1, 1
    pool = pool_of(a, b)
    assert pool.open_calls == 5 and pool.abandoned_calls == 2
    assert [(s.url, s.up, s.open_calls) for s in endpoint_stats(pool)] == [("a1", True, 2), ("b2", True, 3)]
    single = endpoint_stats(a)
    assert [(s.url, s.up, s.open_calls) for s in single] == [("a1", True, 2)]
