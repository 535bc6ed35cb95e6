"""Degraded mode: the fallback order, and the pipeline choosing it (``server.core.fallback``).

Stand-in scorers here (fast, failing, slow); the real Triton killed under load is
tests/integration/test_degraded.py.
"""

import asyncio
import time

import numpy as np
import pytest

from contract.blend import Blend
from contract.model_spec import ModelSpec
from contract.tokenize import PairTokenizer
from server.core import fallback
from server.core.breaker import CLOSED, OPEN, CircuitBreaker
from server.core.pipeline import Pipeline, PipelineConfig
from server.core.score_cache import ScoreCache
from server.errors import DeadlineExceeded, InferenceFailed, Unavailable
from server.features.sqlite import SqliteStore
from server.rules import RuleSet, RulesProvider
from server.types import Candidate, Event, Item, RerankRequest, ScoredFrom
from tests.fixtures import TOKENIZER_JSON
from tests.unit.server.core.test_pipeline import (
    LengthScorer,
    Models,
    run,
    served_with_blend,
)


@pytest.fixture(scope="module")
def tokenizer():
    return PairTokenizer.from_file(TOKENIZER_JSON, ModelSpec(max_batch_size=4))


def test_fallback_scores_follow_retrieval_then_the_given_order():
    cands = [Candidate("a", 0.1), Candidate("b"), Candidate("c", 0.9), Candidate("d", 0.1), Candidate("e")]
    scores = fallback.fallback_scores(cands)
    order = [cands[i].item_id for i in np.argsort(-np.array(scores), kind="stable")]
    # retrieval descending, the tie a/d in the given order, then those without one as given
    assert order == ["c", "a", "d", "b", "e"]
    assert sorted(scores, reverse=True) == [1.0, 0.8, 0.6, 0.4, 0.2]  # distinct: no id tie-break
    assert fallback.fallback_scores([Candidate("z"), Candidate("y")]) == [1.0, 0.5]
    assert fallback.fallback_scores([]) == []


def test_unblended_drops_the_blend_once_per_rule_set():
    unblended = fallback.Unblended()
    plain = RuleSet()
    assert unblended(plain) is plain
    blended = RuleSet(blend=Blend(retrieval_weight=0.5))
    first = unblended(blended)
    assert first.blend is None and unblended(blended) is first


# --- the pipeline in degraded mode -----------------------------------------------------------

class FailingScorer(LengthScorer):
    """Fails like TritonScorer does while ``error`` is set; scores by length otherwise."""

    def __init__(self, error=None):
        super().__init__()
        self.error = error
        self.reachable = True

    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        self.calls.append((len(batch), timeout_s))
        if self.error is not None:
            raise self.error
        return batch.arrays["attention_mask"].sum(axis=1).astype(np.float32)


class SlowScorer(LengthScorer):
    """Answers after ``delay_s``; stops waiting at ``timeout_s`` as TritonScorer does."""

    def __init__(self, delay_s):
        super().__init__()
        self.delay_s = delay_s

    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        self.calls.append((len(batch), timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.sleep(self.delay_s)
        except TimeoutError:
            raise DeadlineExceeded("Triton did not answer before the deadline") from None
        return batch.arrays["attention_mask"].sum(axis=1).astype(np.float32)


RULES = """
rule_sets:
  default:
    blend: {model_weight: 0.2, retrieval_weight: 0.8, missing_retrieval: 1.0}
  shop:
    exclude_interacted: true
    filters: [{name: no_adult, when: {attribute: rating, equals: X}}]
    pins: [{item_id: p, position: 1}]
"""

CATALOG = [Item("a", "a"), Item("b", "bb bb"), Item("c", "ccc ccc ccc"), Item("d", "dddd dddd dddd dddd"),
           Item("x", "adult", attributes={"rating": "X"}), Item("p", "pinned"), Item("seen", "seen")]


def degraded_pipeline(tokenizer, tmp_path, scorer, *, mode="degrade", breaker=None, cache=0, **cfg):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = SqliteStore(tmp_path / "s.db")
    run(store.upsert_items(CATALOG))
    pipe = Pipeline(PipelineConfig(on_model_failure=mode, **cfg), store, scorer, Models(tokenizer),
                    rules=RulesProvider(rules), score_cache=ScoreCache(cache), breaker=breaker)
    return pipe, store


# Retrieval favours a > b > c; d has none (after them). The model (length) favours d > c > b > a.
CANDS = (Candidate("c", 0.2), Candidate("d"), Candidate("a", 0.9), Candidate("b", 0.5))


def ids(resp):
    return [i.item_id for i in resp.items]


@pytest.mark.parametrize("explain", [False, True])
def test_no_ready_model_answers_the_retrieval_order_flagged(tokenizer, tmp_path, explain):
    scorer = FailingScorer()
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, scorer)
    full = run(pipe.rerank(RerankRequest("u", CANDS)))
    assert not full.degraded and ids(full)[0] == "d"  # the model's order, blended
    pipe.models.current = None
    resp = run(pipe.rerank(RerankRequest("u", CANDS, explain=explain)))
    # The blend (with missing_retrieval 1.0 it would lift d to the top) does not apply.
    assert ids(resp) == ["a", "b", "c", "d"]
    assert resp.degraded and resp.degraded_reason == fallback.MODEL_NOT_READY
    assert (resp.model_name, resp.model_version) == ("reranker", "7")  # the last known
    assert all(i.scored_from is ScoredFrom.UNSPECIFIED and not i.unscored for i in resp.items)
    assert "fallback" in resp.timings_ms and "infer" not in resp.timings_ms
    assert len(scorer.calls) == 1 and pipe.degraded == {fallback.MODEL_NOT_READY: 1}
    if explain:
        assert all(not i.explanation.adjustments for i in resp.items)
    scorer.reachable = False  # the watcher could not reach Triton at all
    assert run(pipe.rerank(RerankRequest("u", CANDS))).degraded_reason == fallback.TRITON_UNAVAILABLE


def test_without_retrieval_scores_the_given_order_and_unknown_items_last(tokenizer, tmp_path):
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, FailingScorer(InferenceFailed("down", unreachable=True)))
    cands = (Candidate("ghost"), Candidate("b"), Candidate("t", text="inline"), Candidate("a"))
    resp = run(pipe.rerank(RerankRequest("u", cands)))
    assert ids(resp) == ["b", "t", "a", "ghost"] and resp.degraded_reason == fallback.TRITON_UNAVAILABLE
    assert [i.unscored for i in resp.items] == [False, False, False, True]
    assert run(pipe.rerank(RerankRequest("u", cands, top_n=2))).items[1].item_id == "t"


def test_business_rules_apply_to_the_fallback_order(tokenizer, tmp_path):
    pipe, store = degraded_pipeline(tokenizer, tmp_path, FailingScorer(InferenceFailed("bad", unreachable=False)))
    run(store.record_events([Event("u", "seen", "click", time.time())]))
    cands = (Candidate("x", 1.0), Candidate("a", 0.9), Candidate("seen", 0.8), Candidate("b", 0.7),
             Candidate("p", 0.1), Candidate("c", 0.5))
    for explain in (False, True):
        resp = run(pipe.rerank(RerankRequest("u", cands, rule_set="shop", top_n=3, explain=explain)))
        assert ids(resp) == ["p", "a", "b"]  # filtered x and seen, p pinned first, cut at 3
        assert resp.degraded_reason == fallback.TRITON_ERROR
    assert {i for i, _ in resp.filtered} == {"x", "seen"}


def test_repeated_failures_open_the_circuit_and_a_probe_closes_it(tokenizer, tmp_path):
    now = [0.0]
    breaker = CircuitBreaker(3, open_s=1.0, clock=lambda: now[0])
    scorer = FailingScorer(InferenceFailed("connection refused", unreachable=True))
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, scorer, breaker=breaker)
    req = RerankRequest("u", CANDS)
    reasons = [run(pipe.rerank(req)).degraded_reason for _ in range(5)]
    assert reasons == [fallback.TRITON_UNAVAILABLE] * 3 + [fallback.CIRCUIT_OPEN] * 2
    assert len(scorer.calls) == 3 and breaker.state == OPEN  # open: Triton is not called
    scorer.error = None  # Triton is back
    now[0] += 1.0
    resp = run(pipe.rerank(req))
    assert not resp.degraded and ids(resp)[0] == "d" and breaker.state == CLOSED
    assert pipe.degraded == {fallback.TRITON_UNAVAILABLE: 3, fallback.CIRCUIT_OPEN: 2}


def test_cached_scores_serve_in_full_while_the_circuit_is_open(tokenizer, tmp_path):
    breaker = CircuitBreaker(1, open_s=60.0)
    scorer = FailingScorer()
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, scorer, breaker=breaker, cache=100)
    warm = run(pipe.rerank(RerankRequest("u", CANDS)))
    scorer.error = InferenceFailed("gone", unreachable=True)
    new = RerankRequest("u", CANDS + (Candidate("b2", text="new"),))
    assert run(pipe.rerank(new)).degraded_reason == fallback.TRITON_UNAVAILABLE and breaker.state == OPEN
    again = run(pipe.rerank(RerankRequest("u", CANDS)))
    assert not again.degraded and ids(again) == ids(warm)
    assert run(pipe.rerank(new)).degraded_reason == fallback.CIRCUIT_OPEN


def test_a_slow_model_degrades_before_the_deadline(tokenizer, tmp_path):
    scorer = SlowScorer(delay_s=5.0)
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, scorer, deadline_reserve_s=0.05)
    t0 = time.perf_counter()
    resp = run(pipe.rerank(RerankRequest("u", CANDS, timeout_s=0.3)))
    elapsed = time.perf_counter() - t0
    assert resp.degraded_reason == fallback.DEADLINE and ids(resp) == ["a", "b", "c", "d"]
    assert elapsed < 0.3
    assert scorer.calls[0][1] <= 0.3 - 0.05  # the reserve held back from inference
    # Less time left than the reserve: the model is not asked at all.
    resp = run(pipe.rerank(RerankRequest("u", CANDS, timeout_s=0.04)))
    assert resp.degraded_reason == fallback.DEADLINE and len(scorer.calls) == 1
    # No time left at all: nobody waits for a reply.
    with pytest.raises(DeadlineExceeded):
        run(pipe.rerank(RerankRequest("u", CANDS, timeout_s=0.0)))


def test_fail_mode_keeps_the_error_statuses_and_ignores_the_breaker(tokenizer, tmp_path):
    breaker = CircuitBreaker(1, open_s=60.0)
    scorer = FailingScorer(InferenceFailed("down", unreachable=True))
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, scorer, mode="fail", breaker=breaker,
                                deadline_reserve_s=0.3)
    for _ in range(3):
        with pytest.raises(Unavailable):
            run(pipe.rerank(RerankRequest("u", CANDS)))
    assert len(scorer.calls) == 3 and breaker.state == CLOSED
    pipe.scorer = SlowScorer(delay_s=5.0)
    with pytest.raises(DeadlineExceeded):
        run(pipe.rerank(RerankRequest("u", CANDS, timeout_s=0.5)))
    assert pipe.scorer.calls[0][1] > 0.3  # the whole remaining budget: no reserve held back
    pipe.models.current = None
    with pytest.raises(Unavailable):
        run(pipe.rerank(RerankRequest("u", CANDS)))
    assert not pipe.degraded


def test_a_cancelled_probe_lets_the_next_request_probe(tokenizer, tmp_path):
    breaker = CircuitBreaker(1, open_s=0.0)
    breaker.failure()
    scorer = SlowScorer(delay_s=5.0)
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, scorer, breaker=breaker)

    async def go():
        probe = asyncio.create_task(pipe.rerank(RerankRequest("u", CANDS)))
        await asyncio.sleep(0.05)
        assert len(scorer.calls) == 1
        blocked = await pipe.rerank(RerankRequest("u", CANDS))  # the probe is in flight
        probe.cancel()  # its caller hung up
        with pytest.raises(asyncio.CancelledError):
            await probe
        scorer.delay_s = 0.0
        return blocked, await pipe.rerank(RerankRequest("u", CANDS))

    blocked, after = run(go())
    assert blocked.degraded_reason == fallback.CIRCUIT_OPEN
    assert not after.degraded and breaker.state == CLOSED


def test_a_versions_model_blend_is_dropped_too(tokenizer, tmp_path):
    pipe, _ = degraded_pipeline(tokenizer, tmp_path, FailingScorer(InferenceFailed("x", unreachable=True)))
    pipe.rules = RulesProvider(None)
    pipe.models.current = served_with_blend(tokenizer, "8", Blend(name="model_blend", retrieval_weight=0.5,
                                                                  missing_retrieval=5.0))
    resp = run(pipe.rerank(RerankRequest("u", CANDS, explain=True)))
    assert ids(resp) == ["a", "b", "c", "d"] and resp.model_version == "8"
    assert all(i.explanation.final_score == i.model_score for i in resp.items)


def test_on_model_failure_is_checked():
    with pytest.raises(ValueError):
        PipelineConfig(on_model_failure="retry")
