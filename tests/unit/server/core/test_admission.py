"""Load shedding: the wait estimate and the admission decisions, on an injected clock.

The pipeline wiring uses the stand-in scorer of ``test_pipeline``; the real path (gateway +
Triton under a flood) is tests/integration/test_shedding.py.
"""

import asyncio

import pytest

from server.core.admission import Admission, WaitEstimate
from server.core.pipeline import Pipeline, PipelineConfig
from server.errors import DeadlineExceeded, Overloaded, Unavailable
from server.features.sqlite import SqliteStore
from server.types import Candidate, RerankRequest
from tests.unit.server.core.test_pipeline import LengthScorer, Models, tokenizer  # noqa: F401 (fixture)


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def feed(est: WaitEstimate, base: float, slope: float, aheads, now: float) -> None:
    for n in aheads:
        est.observe(n, base + slope * n, now)


# -- the estimate ------------------------------------------------------------------------------

def test_no_samples_expect_nothing():
    assert WaitEstimate().expected_s(50, now=0.0) == 0.0


def test_fits_base_and_per_request_ahead():
    est = WaitEstimate(memory_s=2.0)
    feed(est, 0.05, 0.02, list(range(11)) * 20, now=1.0)
    base, slope = est.params(1.0)
    assert base == pytest.approx(0.05, abs=0.002) and slope == pytest.approx(0.02, rel=0.02)
    assert est.expected_s(20, 1.0) == pytest.approx(0.45, rel=0.03)


def test_one_queue_length_predicts_its_mean_and_extrapolates_optimistically():
    est = WaitEstimate()
    for i in range(50):  # all at 4 ahead, with noise
        est.observe(4, 0.2 + (0.01 if i % 2 else -0.01), 1.0)
    assert est.expected_s(4, 1.0) == pytest.approx(0.2, rel=0.02)
    assert est.expected_s(40, 1.0) < 0.2 * 41 / 5  # not the proportional (pessimistic) guess


def test_negative_trend_gives_a_flat_fit():
    est = WaitEstimate()
    for n, s in ((0, 0.3), (5, 0.1), (10, 0.05)):
        est.observe(n, s, 1.0)
    base, slope = est.params(1.0)
    assert slope == 0.0 and base == pytest.approx(0.15)


def test_follows_a_new_regime_within_its_memory():
    est = WaitEstimate(memory_s=0.5)
    feed(est, 0.05, 0.10, list(range(8)) * 10, now=1.0)  # slow spell
    feed(est, 0.05, 0.01, list(range(8)) * 10, now=4.0)  # 6 memories later: fast again
    assert est.params(4.0)[1] == pytest.approx(0.01, rel=0.05)


def test_forgets_after_a_quiet_spell():
    est = WaitEstimate(memory_s=1.0)
    feed(est, 2.0, 0.5, [1, 2, 3], now=1.0)
    assert est.expected_s(3, 1.5) > 3.0
    assert est.expected_s(3, 10.0) == 0.0  # nothing for 9 memories: no evidence left


def test_reading_the_estimate_changes_nothing():
    est = WaitEstimate(memory_s=1.0)
    feed(est, 0.1, 0.05, [0, 2, 4, 6], now=1.0)
    first = est.params(1.7)
    est.params(5.0)  # a scrape at another time (the metrics thread)
    assert est.params(1.7) == first


# -- admission decisions ------------------------------------------------------------------------

def primed(clock: Clock, **kw) -> Admission:
    """An admission whose estimate says 0.1 s + 0.1 s per request ahead."""
    adm = Admission(100, clock=clock, **kw)
    feed(adm.estimate, 0.1, 0.1, list(range(10)) * 5, clock.t)
    return adm


def test_sheds_a_request_whose_deadline_the_queue_cannot_meet():
    clock = Clock()
    adm = primed(clock)
    with adm.slot(1.0), adm.slot(1.0), adm.slot(1.0):  # 3 ahead: expected ~0.4 s
        with adm.slot(1.0):  # fits (0.4 <= 0.9 x 1.0)
            pass
        with pytest.raises(Overloaded, match="load shed.*3 requests ahead") as err:
            with adm.slot(0.3):  # 0.4 s expected > 0.9 x 0.3 s left
                pass
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert adm.shed == 1 and adm.rejected == 0 and adm.in_flight == 3
    assert adm.in_flight == 0


def test_no_time_left_for_the_model_is_not_shed():
    clock = Clock()
    adm = primed(clock)
    with adm.slot(1.0), adm.slot(-0.01):  # it will fail or degrade without calling Triton
        assert adm.in_flight == 2
    assert adm.shed == 0


def test_nothing_ahead_is_always_admitted():
    clock = Clock()
    adm = primed(clock)
    with adm.slot(0.001):  # the estimate says 0.1 s, but there is no queue to shed
        assert adm.in_flight == 1
    assert adm.shed == 0


def test_no_deadline_or_shedding_off_never_sheds():
    clock = Clock()
    adm = primed(clock)
    with adm.slot(None), adm.slot(None), adm.slot(None):
        assert adm.in_flight == 3
    off = Admission(2, shed=False, clock=clock)
    with off.slot(0.0001):
        with off.slot(0.0001) as s:
            s.scored = True
        with pytest.raises(Overloaded, match="limit of 2"):  # the in-flight limit still holds
            with off.slot(0.0001), off.slot(0.0001):
                pass
    assert off.expected_ms() == 0.0 and off.shed == 0 and off.rejected == 1


def test_abandoned_inference_calls_count_as_work_ahead():
    clock = Clock()
    backlog = [0]
    adm = Admission(100, backlog=lambda: backlog[0], clock=clock)
    feed(adm.estimate, 0.1, 0.1, list(range(10)) * 5, clock.t)
    backlog[0] = 5  # nothing of ours in flight, but Triton still runs 5 abandoned calls
    with pytest.raises(Overloaded, match="5 requests ahead"):
        with adm.slot(0.5):
            pass
    assert adm.expected_ms() == pytest.approx(600, rel=0.05)


def test_recovers_after_a_burst():
    clock = Clock()
    adm = Admission(100, clock=clock, memory_s=1.0)
    slots = [adm.slot(0.5) for _ in range(8)]  # a burst, admitted while nothing is known
    clock.t += 2.0  # the burst turned out slow: 2 s each
    for s in slots:
        s.scored = True
        s.__exit__(None, None, None)
    with adm.slot(0.5):  # nothing ahead: admitted (and a fresh sample)
        with pytest.raises(Overloaded):
            with adm.slot(0.5):  # one ahead: the burst's estimate refuses
                pass
        clock.t += 10.0  # quiet: the burst is forgotten
        with adm.slot(0.5):
            assert adm.in_flight == 2


@pytest.mark.parametrize("outcome, took, counts", [
    ("scored", 0.2, True),  # model-scored reply
    ("late", 0.6, True),  # answered by the fallback for want of time: a (lower-bound) sample
    ("late", 0.01, False),  # ... but it never tried: its budget was too small from the start
    (DeadlineExceeded("late"), 0.6, True),  # ran out of time in the pipeline (counted as 1.2 s)
    (DeadlineExceeded("late"), 0.01, False),
    (asyncio.CancelledError(), 0.95, True),  # the caller's deadline passed while it waited
    (asyncio.CancelledError(), 0.1, False),  # the caller went away early
    (Unavailable("triton down"), 0.9, False),  # a failure, however slow, is not a service time
    ("fallback", 0.01, False),  # a fast fallback (Triton down): nothing about the queue
])
def test_which_outcomes_teach_the_estimate(outcome, took, counts):
    clock = Clock()
    adm = Admission(100, clock=clock)
    s = adm.slot(1.0)
    clock.t += took
    if isinstance(outcome, BaseException):
        s.__exit__(type(outcome), outcome, None)
    else:
        s.scored, s.late = outcome == "scored", outcome == "late"
        s.__exit__(None, None, None)
    assert adm.estimate.samples == (1 if counts else 0) and adm.in_flight == 0
    if counts:  # a request that ran out of time counts as twice its time (see _Slot)
        assert adm.estimate.expected_s(0, clock.t) == pytest.approx(took if outcome == "scored" else 2 * took)


def test_unscored_reply_is_no_sample():
    clock = Clock()
    adm = Admission(100, clock=clock)
    with adm.slot(1.0):  # e.g. a degraded (fallback) reply: the pipeline leaves scored False
        clock.t += 0.001
    assert adm.estimate.samples == 0


# -- pipeline wiring ----------------------------------------------------------------------------

def make_pipe(tokenizer, tmp_path, adm: Admission, **cfg) -> tuple[Pipeline, LengthScorer]:  # noqa: F811
    scorer = LengthScorer()
    return Pipeline(PipelineConfig(**cfg), SqliteStore(tmp_path / "s.db"), scorer, Models(tokenizer),
                    admission=adm), scorer


def test_pipeline_sheds_by_the_callers_budget_before_any_work(tokenizer, tmp_path):  # noqa: F811
    clock = Clock()
    adm = primed(clock)
    pipe, scorer = make_pipe(tokenizer, tmp_path, adm, on_model_failure="fail")
    req = RerankRequest("u", (Candidate("t", text="x"),), timeout_s=0.15)
    with adm.slot(None):  # one ahead: expected 0.2 s > 0.9 x 0.15 s
        with pytest.raises(Overloaded, match="load shed"):
            asyncio.run(pipe.rerank(req))
    assert scorer.calls == [] and adm.in_flight == 0
    # Degraded mode (the default): the fallback order answers at once instead.
    pipe, scorer = make_pipe(tokenizer, tmp_path, adm)
    with adm.slot(None):
        resp = asyncio.run(pipe.rerank(req))
    assert resp.degraded_reason == "overloaded" and scorer.calls == [] and adm.in_flight == 0


def test_pipeline_without_caller_deadline_uses_the_default_timeout(tokenizer, tmp_path):  # noqa: F811
    clock = Clock()
    adm = primed(clock)
    pipe, scorer = make_pipe(tokenizer, tmp_path, adm, default_timeout_s=0.15, on_model_failure="fail")
    with adm.slot(None):
        with pytest.raises(Overloaded, match="the 150 ms it has"):
            asyncio.run(pipe.rerank(RerankRequest("u", (Candidate("t", text="x"),))))
    pipe.config = PipelineConfig(default_timeout_s=10.0, on_model_failure="fail")
    with adm.slot(None):
        asyncio.run(pipe.rerank(RerankRequest("u", (Candidate("t", text="x"),))))
    assert len(scorer.calls) == 1


def test_pipeline_feeds_the_estimate_with_scored_replies(tokenizer, tmp_path):  # noqa: F811
    adm = Admission(100)
    pipe, _ = make_pipe(tokenizer, tmp_path, adm)
    asyncio.run(pipe.rerank(RerankRequest("u", (Candidate("t", text="x"),), timeout_s=5.0)))
    assert adm.estimate.samples == 1 and adm.in_flight == 0


class FailingScorer:
    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        raise Unavailable("triton down")


class SlowScorer:
    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        await asyncio.sleep(timeout_s + 0.01)
        raise DeadlineExceeded("Triton did not answer before the deadline")


@pytest.mark.parametrize("scorer, reason, counts", [
    (FailingScorer(), "triton", False),  # a fast fallback teaches nothing
    (SlowScorer(), "deadline", True),  # a fallback for want of time: the model's time >= budget
])
def test_pipeline_degraded_replies_and_the_estimate(tokenizer, tmp_path, scorer, reason, counts):  # noqa: F811
    adm = Admission(100)
    pipe = Pipeline(PipelineConfig(), SqliteStore(tmp_path / "s.db"), scorer, Models(tokenizer), admission=adm)
    resp = asyncio.run(pipe.rerank(RerankRequest("u", (Candidate("t", text="x"),), timeout_s=0.2)))
    assert resp.degraded and reason in resp.degraded_reason
    assert adm.estimate.samples == (1 if counts else 0)
