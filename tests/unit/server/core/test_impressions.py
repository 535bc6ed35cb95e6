"""The impression log: bounded queue on the request path, batched writes off it, flush on close.

A list-backed store stands in where the test is about the queue; the real SQLite store takes
the writes in the pipeline test (and Redis/SQLite in tests/unit/server/features/test_store_impressions.py;
end to end: tests/integration/test_online_report.py)."""

import asyncio

import pytest

from server.core.impressions import ImpressionLog
from server.core.pipeline import Pipeline, PipelineConfig
from server.errors import InvalidArgument
from server.features.sqlite import SqliteStore
from server.types import Candidate, Item, RerankRequest, RerankResponse, ScoredItem
from tests.unit.server.core.test_pipeline import LengthScorer, Models, tokenizer  # noqa: F401 (fixture)


class ListStore:
    def __init__(self, fail: bool = False, delay_s: float = 0.0):
        self.batches: list[list] = []
        self.fail = fail
        self.delay_s = delay_s

    async def record_impressions(self, impressions):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("store down")
        self.batches.append(list(impressions))
        return len(impressions)


def reply(rid: str, n: int = 5, degraded: str = "") -> tuple[RerankRequest, RerankResponse]:
    req = RerankRequest("u1", tuple(Candidate(f"i{k}") for k in range(n)), request_id=rid)
    resp = RerankResponse([ScoredItem(f"i{k}", 1.0 - k / 10, k + 1) for k in range(n)], "reranker", "3", {},
                          request_id=rid, degraded_reason=degraded)
    return req, resp


def test_offer_keeps_the_top_k_in_order_with_version_and_degraded_reason():
    async def go():
        store = ListStore()
        log = ImpressionLog(store, top_k=3)
        log.offer(*reply("r1"))
        log.offer(*reply("r2", n=2, degraded="deadline"))
        log.offer(*reply(""))  # no request id: nothing to attribute to
        assert log.queued == 2 and store.batches == []  # nothing written on the request path
        assert await log.flush() == 2
        return store.batches

    [[a, b]] = asyncio.run(go())
    assert (a.request_id, a.user_id, a.model_name, a.model_version, a.item_ids, a.degraded_reason) == \
        ("r1", "u1", "reranker", "3", ("i0", "i1", "i2"), "")
    assert b.item_ids == ("i0", "i1") and b.degraded_reason == "deadline"


def test_a_full_queue_drops_and_counts_instead_of_waiting():
    async def go():
        log = ImpressionLog(ListStore(), queue_size=3)
        for k in range(5):
            log.offer(*reply(f"r{k}"))
        return log

    log = asyncio.run(go())
    assert (log.queued, log.dropped, log.offered) == (3, 2, 5)


def test_the_background_task_writes_batches_and_close_flushes_the_rest():
    async def go():
        store = ListStore()
        log = ImpressionLog(store, batch_size=2, flush_interval_s=30.0)
        log.start()
        for k in range(5):
            log.offer(*reply(f"r{k}"))
        for _ in range(500):  # a full batch wakes the writer at once, long before the interval
            await asyncio.sleep(0.01)
            if sum(map(len, store.batches)) >= 4:
                break
        written_before_close = sum(map(len, store.batches))
        await log.close()
        log.offer(*reply("late"))  # after close: ignored
        return store, log, written_before_close

    store, log, before = asyncio.run(go())
    assert before >= 4
    assert [i.request_id for b in store.batches for i in b] == [f"r{k}" for k in range(5)]
    assert max(map(len, store.batches)) <= 2 and log.written == 5 and log.queued == 0


def test_a_failing_store_loses_the_batch_counts_it_and_keeps_going():
    async def go():
        store = ListStore(fail=True)
        log = ImpressionLog(store)
        log.offer(*reply("r1"))
        await log.flush()
        store.fail = False
        log.offer(*reply("r2"))
        await log.flush()
        return store, log

    store, log = asyncio.run(go())
    assert (log.failed, log.written) == (1, 1) and [b[0].request_id for b in store.batches] == ["r2"]


def test_close_waits_for_a_write_in_progress():
    async def go():
        store = ListStore(delay_s=0.2)
        log = ImpressionLog(store, flush_interval_s=0.01)
        log.start()
        log.offer(*reply("r1"))
        await asyncio.sleep(0.05)  # the writer is inside record_impressions now
        await log.close()
        return store

    assert [b[0].request_id for b in asyncio.run(go()).batches] == ["r1"]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        ImpressionLog(ListStore(), top_k=0)


def test_the_pipeline_logs_what_each_ok_reply_showed(tokenizer, tmp_path):  # noqa: F811
    async def go():
        store = SqliteStore(tmp_path / "s.db")
        log = ImpressionLog(store, top_k=2)
        pipe = Pipeline(PipelineConfig(), store, LengthScorer(), Models(tokenizer), impressions=log)
        await store.upsert_items([Item("a", "short"), Item("b", "a much longer title here"), Item("c", "short")])
        resp = await pipe.rerank(RerankRequest("u", (Candidate("c"), Candidate("a"), Candidate("b")),
                                               request_id="rid-1"))
        with pytest.raises(InvalidArgument):  # a refused request shows nothing
            await pipe.rerank(RerankRequest("u", (), request_id="rid-2"))
        await log.close()
        rows = await store.export_impressions()
        await store.close()
        return resp, rows

    resp, rows = asyncio.run(go())
    [row] = rows
    assert row.request_id == "rid-1" and row.model_version == "7"
    assert row.item_ids == tuple(i.item_id for i in resp.items[:2]) == ("b", "a")


def test_forget_drops_the_users_queued_impressions_and_waits_for_a_write_in_progress():
    async def go():
        store = ListStore(delay_s=0.2)
        log = ImpressionLog(store, flush_interval_s=0.01)
        log.start()
        log.offer(*reply("r1"))  # u1, taken by the writer
        for _ in range(200):  # until the writer holds it (its write takes 0.2 s)
            if not log.queued:
                break
            await asyncio.sleep(0.005)
        log.offer(*reply("r2"))  # u1, still queued
        other_req, other_resp = reply("r3")
        log.offer(RerankRequest("u2", other_req.candidates, request_id="r3"), other_resp)
        dropped = await log.forget("u1")
        written_when_forget_returned = [i.request_id for b in store.batches for i in b]
        await log.close()
        return dropped, written_when_forget_returned, [i.request_id for b in store.batches for i in b]

    dropped, at_return, final = asyncio.run(go())
    assert dropped == 1 and at_return == ["r1"] and final == ["r1", "r3"]


def test_forget_user_through_the_pipeline_leaves_no_impression_of_the_user(tokenizer, tmp_path):  # noqa: F811
    async def go():
        store = SqliteStore(tmp_path / "s.db")
        log = ImpressionLog(store, flush_interval_s=30.0)  # still queued when ForgetUser comes
        pipe = Pipeline(PipelineConfig(), store, LengthScorer(), Models(tokenizer), impressions=log)
        await store.upsert_items([Item("a", "x"), Item("b", "y")])
        for user, rid in (("u1", "r1"), ("u2", "r2")):
            await pipe.rerank(RerankRequest(user, (Candidate("a"), Candidate("b")), request_id=rid))
        await store.record_impressions([(await _written_copy(log, "u1"))])  # and one already stored
        await pipe.forget_user("u1")
        await log.close()
        rows = await store.export_impressions()
        await store.close()
        return rows

    assert [r.user_id for r in asyncio.run(go())] == ["u2"]


async def _written_copy(log: ImpressionLog, user: str):
    """A stored impression of ``user`` (as an earlier flush would have written it)."""
    import dataclasses

    queued = next(i for i in log._queue if i.user_id == user)
    return dataclasses.replace(queued, request_id=queued.request_id + "-earlier")
