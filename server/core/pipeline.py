"""The request pipeline: resolve -> gather features -> score (render, tokenize, infer) -> rank.

Transport-free: takes and returns ``server.types`` objects and raises ``server.errors``.

Degraded mode (``PipelineConfig.on_model_failure = "degrade"``): when the model cannot score a
request (no ready version, Triton down or failing, the circuit breaker open, or no answer
within the request's budget), ``_score`` hands ``_rank`` the fallback column instead
(``server.core.fallback``) and the reply carries the reason. With ``"fail"`` those cases raise
as before and the breaker is not consulted.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.calibration import apply_text_offset
from contract.render import Renderer
from server.core import fallback
from server.core.admission import Admission
from server.core.breaker import CircuitBreaker
from server.core.impressions import ImpressionLog
from server.core.score_cache import ScoreCache
from server.core.stages import Features, Plan, Ranking, Scores
from server.core.validate import (
    validate_events,
    validate_forget,
    validate_items,
    validate_rerank,
)
from server.errors import DeadlineExceeded, InferenceFailed, LoadShed, Unavailable
from server.rules import (
    RuleCandidate,
    RuleSet,
    RulesProvider,
    apply_overrides,
    apply_rules,
)
from server.rules.columnar import orders_by_score_only, rank_by_score
from server.telemetry import Telemetry
from server.types import (
    Event,
    Item,
    RecordResult,
    RerankRequest,
    RerankResponse,
    ScoredFrom,
)


class InferenceClient(Protocol):
    """Scores encoded pairs on a served model version (``server.triton.client.TritonScorer``).

    Optionally ``reachable``: False while Triton cannot be reached (a degraded reply without a
    ready model then says ``triton_unavailable`` instead of ``model_not_ready``)."""

    async def score(self, batch, spec, version: str, timeout_s: float | None = None,
                    headers: dict[str, str] | None = None) -> np.ndarray: ...


class ModelSource(Protocol):
    def require(self, user_id: str = ""): ...


# The version a Rerank was resolved to, for the caller's per-version metrics even when the
# request then fails (set by ``_resolve`` in the request's own task).
SERVED_VERSION: ContextVar[str] = ContextVar("served_version", default="")


@dataclass(frozen=True)
class PipelineConfig:
    max_candidates: int = 1000
    max_events_per_call: int = 1000
    max_items_per_call: int = 1000
    history_len: int = 20
    history_in_text: int = 10
    default_timeout_s: float = 10.0
    event_weights: dict[str, float] = field(default_factory=dict)
    # When the model cannot score: "degrade" (fallback order, reply flagged) or "fail" (error status).
    on_model_failure: str = "degrade"
    # Degrade only: inference stops waiting this long before the deadline (fallback + reply).
    deadline_reserve_s: float = 0.05

    def __post_init__(self) -> None:
        if self.on_model_failure not in ("degrade", "fail"):
            raise ValueError(f"on_model_failure must be 'degrade' or 'fail', not {self.on_model_failure!r}")


class _Stopwatch:
    def __init__(self):
        self.start = self._last = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.spans: dict[str, tuple[float, float]] = {}

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = (now - self._last) * 1000.0
        self.spans[stage] = (self._last, now)
        self._last = now

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


class _Version:
    """What the pipeline derives from one loaded model version, once: its renderer (which
    memoizes item texts and which items have tokens) and its default blend per rule set."""

    __slots__ = ("model", "renderer", "blend", "_rulesets")
    max_rulesets = 256  # overridden rule sets come and go (``apply_overrides`` caches 256)

    def __init__(self, model):
        self.model = model
        self.renderer = Renderer.for_model(model.manifest, model.tokenizer)
        manifest = model.manifest
        self.blend = manifest.blend if manifest is not None else None
        self._rulesets: dict[int, tuple[RuleSet, RuleSet]] = {}

    def with_blend(self, ruleset: RuleSet) -> RuleSet:
        """A rule set without a blend of its own gets the one the model version recommends
        (chosen on validation by ``rerankd train``, recorded in its manifest), so the served
        order is the evaluated final order by default. Resolved once per rule set object."""
        if self.blend is None or ruleset.blend is not None:
            return ruleset
        hit = self._rulesets.get(id(ruleset))
        if hit is None or hit[0] is not ruleset:  # the id of a rule set since collected
            if len(self._rulesets) >= self.max_rulesets:
                self._rulesets.clear()
            hit = self._rulesets[id(ruleset)] = (ruleset, dataclasses.replace(ruleset, blend=self.blend))
        return hit[1]


class Pipeline:
    """One object per gateway; safe for concurrent requests on one event loop.

    A Rerank runs four stages, each timed into ``RerankResponse.timings_ms``:
    ``_resolve`` (rule set, model version, deadline) -> ``_gather`` (history, items) ->
    ``_score`` (score cache, render + tokenize, infer) -> ``_rank`` (blend, rules, order).
    """

    def __init__(self, config: PipelineConfig, store, scorer: InferenceClient, models: ModelSource,
                 admission: Admission | None = None, items=None, score_cache: ScoreCache | None = None,
                 rules: RulesProvider | None = None, telemetry: Telemetry | None = None,
                 breaker: CircuitBreaker | None = None, impressions: ImpressionLog | None = None):
        self.config = config
        self.telemetry = telemetry or Telemetry("none")
        # Business rules (server.rules); without a file: the empty default set (model order).
        self.rules = rules or RulesProvider(None)
        self.score_cache = score_cache if score_cache is not None else ScoreCache(0)
        self.store = store
        # Item lookups go through a cache when given one (``server.features.cache.ItemCache``).
        # Not `items or store`: an empty ItemCache is falsy (it has __len__) and would be skipped.
        self.items = items if items is not None else store
        self.scorer = scorer
        self.models = models
        self.admission = admission or Admission(256)
        self._versions: dict[tuple[str, str], _Version] = {}
        self._degrade = config.on_model_failure == "degrade"
        self.breaker = breaker or CircuitBreaker()
        self._unblended = fallback.Unblended()
        self.degraded: Counter[str] = Counter()  # reason -> degraded replies (read by metrics)
        self._last_model = ("", "")  # (name, version) last served: named in degraded replies
        # Online evaluation: what each OK reply showed, queued for the store (None: not logged).
        self.impressions = impressions

    def _version(self, model) -> _Version:
        """The pipeline's state for the served version, built once per loaded model."""
        key = (model.name, model.version)
        hit = self._versions.get(key)
        if hit is None or hit.model is not model:
            if len(self._versions) > 8:  # versions come and go; keep the few in use
                self._versions.clear()
            hit = self._versions[key] = _Version(model)
        return hit

    async def rerank(self, req: RerankRequest) -> RerankResponse:
        # Without a caller deadline the default timeout bounds the queueing too.
        budget_s = req.timeout_s if req.timeout_s is not None else self.config.default_timeout_s
        if self._degrade:  # the model gets the budget less the fallback's reserve
            budget_s -= self.config.deadline_reserve_s
        try:
            slot = self.admission.slot(budget_s)
        except LoadShed:
            if not self._degrade:
                raise
            # The queue would make the model late: the fallback answers now, without a slot
            # (it never reaches Triton), as for any model too slow for the request's budget.
            return await self._rerank(req, degraded=fallback.OVERLOADED)
        with slot:
            resp = await self._rerank(req)
            # Model-scored replies teach the wait estimate, and so do fallbacks for want of time
            # (the model's time was at least the budget); a fast fallback (Triton down) does not.
            slot.scored = not resp.degraded
            slot.late = resp.degraded_reason == fallback.DEADLINE
            return resp

    async def _rerank(self, req: RerankRequest, degraded: str = "") -> RerankResponse:
        watch = _Stopwatch()
        plan = self._resolve(req, watch)
        if degraded and not plan.degraded:  # decided before the model is asked (load shed)
            plan = dataclasses.replace(plan, degraded=degraded)
        features = await self._gather(req, plan, watch)
        scores = await self._score(req, plan, features, watch)
        ranking = self._rank(req, plan, features, scores, watch)
        watch.stages["total"] = watch.elapsed_s() * 1000.0
        self.telemetry.record_stages(watch.spans)
        model = plan.model
        name, version = (model.name, model.version) if model is not None else self._last_model
        if scores.degraded:
            self.degraded[scores.degraded] += 1
        resp = RerankResponse(items=ranking.items, model_name=name, model_version=version,
                              timings_ms=watch.stages, request_id=req.request_id,
                              filtered=ranking.filtered if req.explain else [],
                              degraded_reason=scores.degraded)
        if self.impressions is not None:
            self.impressions.offer(req, resp)
        return resp

    def _resolve(self, req: RerankRequest, watch: _Stopwatch) -> Plan:
        """Validate, then fix the rule set and model version before any work: an unknown rule
        set or a forbidden override fails fast, and so does no ready model unless degraded
        mode plans the fallback. Timed as ``validate``."""
        validate_rerank(req, max_candidates=self.config.max_candidates)
        ruleset = self.rules.get(req.rule_set)
        if req.rule_overrides:
            ruleset = apply_overrides(ruleset, req.rule_overrides)
        budget_s = req.timeout_s if req.timeout_s is not None else self.config.default_timeout_s
        try:
            # The user's version: the canary candidate for the users it routes there.
            model = self.models.require(req.user_id)
        except Unavailable:
            if not self._degrade:
                raise
            reachable = getattr(self.scorer, "reachable", True)
            plan = Plan(None, ruleset, None, budget_s,
                        fallback.MODEL_NOT_READY if reachable else fallback.TRITON_UNAVAILABLE)
        else:
            version = self._version(model)
            self._last_model = (model.name, model.version)
            SERVED_VERSION.set(model.version)
            plan = Plan(model, version.with_blend(ruleset), version.renderer, budget_s)
        watch.mark("validate")
        return plan

    async def _gather(self, req: RerankRequest, plan: Plan, watch: _Stopwatch) -> Features:
        """The user's history (cold start: the caller's session items) and the item each
        candidate is read from. Timed as ``features``."""
        cfg = self.config
        events = await self.store.recent_events(req.user_id, cfg.history_len)
        weights = cfg.event_weights
        history_ids = _unique([e.item_id for e in events if weights.get(e.event_type, 1.0) > 0])
        if not history_ids:  # cold start: the caller's session items stand in for history
            history_ids = _unique(req.context.session_item_ids)
        # The served version's own render options (item-ID tokens, history length): its manifest.
        renderer = plan.renderer  # None when degraded before any I/O: nothing is rendered
        history_ids = history_ids[:renderer.history_items(cfg.history_in_text) if renderer else cfg.history_in_text]
        found = await self.items.get_items(_unique(history_ids + [c.item_id for c in req.candidates]))
        history = [found[i] for i in history_ids if i in found]
        # Policy for items not in the catalog: scored from the candidate's inline text if it
        # has one; otherwise not scored, flagged ``unscored`` and placed after all scored items.
        items: list[Item] = []
        positions: list[int] = []
        get = found.get
        for idx, c in enumerate(req.candidates):
            item = get(c.item_id) or (Item(c.item_id, title=c.text) if c.text.strip() else None)
            if item is not None:
                items.append(item)
                positions.append(idx)
        watch.mark("features")
        return Features(events, history, items, None if len(items) == len(req.candidates) else positions)

    async def _score(self, req: RerankRequest, plan: Plan, features: Features, watch: _Stopwatch) -> Scores:
        """The model score of each scoreable candidate: from the score cache, else rendered,
        tokenized (timed as ``tokenize``) and inferred (timed as ``infer``). In degraded mode,
        when the model cannot answer: the fallback column (``_fallback``)."""
        if plan.degraded:
            return self._fallback(req, features, plan.degraded, watch)
        model, renderer = plan.model, plan.renderer
        user_text = renderer.user(features.history, req.context.text,
                                  max_items=renderer.history_items(self.config.history_in_text))
        # How the model reads each scored item, decided from the item id as the renderer
        # decides, so it matches what is rendered below.
        source = renderer.scored_from
        read_from = [source(item.item_id) for item in features.items]
        item_texts = renderer.items(features.items)
        scores = self.score_cache.lookup(model.version, user_text, item_texts)
        todo = [k for k, s in enumerate(scores) if s is None]
        every = len(todo) == len(scores)  # no cache hit: skip the per-item index juggling
        todo_texts = item_texts if every else [item_texts[k] for k in todo]
        if not todo:
            watch.mark("tokenize")
        else:
            # Only pairs the cache lacks need the model: a request the cache answers is served
            # in full even while the circuit is open.
            if self._degrade and not self.breaker.allow():
                return self._fallback(req, features, fallback.CIRCUIT_OPEN, watch)
            try:
                batch = model.tokenizer.encode(user_text, todo_texts)
                watch.mark("tokenize")
                fresh, reason = await self._infer(batch, plan, watch)
            except BaseException:  # no verdict on Triton: the caller went away, or a bug
                if self._degrade:
                    self.breaker.release()
                raise
            if reason:
                return self._fallback(req, features, reason, watch)
            # Owned (dropped by ForgetUser) only when the user's own events shaped the user text:
            # a text without them (a new user, the caller's session items) holds nothing of the
            # user's, and noting every such user under it would grow without bound.
            self.score_cache.store(model.version, user_text, todo_texts, fresh,
                                   owner=req.user_id if features.events else None)
            if every:
                scores = fresh.tolist()
            else:
                for k, s in zip(todo, fresh.tolist()):
                    scores[k] = s
        offset = model.manifest.text_offset if model.manifest is not None else 0.0
        if offset:  # cold items onto the warm items' scale (the cache keeps raw scores)
            apply_text_offset(scores, [f is ScoredFrom.TEXT for f in read_from], offset)
        positions = features.positions
        if positions is None:
            scored_from = read_from
        else:
            scored_from = [ScoredFrom.UNSPECIFIED] * len(req.candidates)
            for idx, f in zip(positions, read_from):
                scored_from[idx] = f
        watch.mark("infer")
        return Scores(scores, scored_from)

    async def _infer(self, batch, plan: Plan, watch: _Stopwatch) -> tuple[np.ndarray | None, str]:
        """The model's scores for ``batch`` and "", or (degraded mode) None and the reason the
        model could not give them, each outcome reported to the circuit breaker. Degraded mode
        stops waiting ``deadline_reserve_s`` before the deadline, so the fallback still makes it."""
        remaining = plan.budget_s - watch.elapsed_s()
        if remaining <= 0:  # the caller has gone: no reply reaches it, degraded or not
            raise DeadlineExceeded("deadline passed before inference")
        model, headers = plan.model, self.telemetry.headers()
        if not self._degrade:
            return await self.scorer.score(batch, model.spec, model.version, timeout_s=remaining,
                                           headers=headers), ""
        budget = remaining - self.config.deadline_reserve_s
        if budget <= 0:  # too little time left to ask the model: no verdict on Triton
            self.breaker.release()
            return None, fallback.DEADLINE
        try:
            fresh = await self.scorer.score(batch, model.spec, model.version, timeout_s=budget, headers=headers)
        except DeadlineExceeded:
            reason = fallback.DEADLINE
        except InferenceFailed as exc:
            reason = fallback.TRITON_UNAVAILABLE if exc.unreachable else fallback.TRITON_ERROR
        except Unavailable:
            reason = fallback.TRITON_UNAVAILABLE
        else:
            self.breaker.success()
            return fresh, ""
        self.breaker.failure()
        return None, reason

    def _fallback(self, req: RerankRequest, features: Features, reason: str, watch: _Stopwatch) -> Scores:
        """The fallback column in place of the model's (``server.core.fallback``). The model
        read nothing, so every ``scored_from`` is unspecified. Timed as ``fallback``."""
        per_candidate = fallback.fallback_scores(req.candidates)
        positions = features.positions
        column = per_candidate if positions is None else [per_candidate[i] for i in positions]
        watch.mark("fallback")
        return Scores(column, [ScoredFrom.UNSPECIFIED] * len(req.candidates), reason)

    def _rank(self, req: RerankRequest, plan: Plan, features: Features, scores: Scores,
              watch: _Stopwatch) -> Ranking:
        """Blend, apply the rules and order. A rule set that can only blend and sort (the
        default) ranks the request's columns; any other goes through the rules engine, one
        ``RuleCandidate`` per candidate. Timed as ``rules``."""
        # Degraded: the fallback order, then the rules, without a blend (see server.core.fallback).
        ruleset = self._unblended(plan.ruleset) if scores.degraded else plan.ruleset
        ranked = None
        if not req.explain and orders_by_score_only(ruleset):  # the default: blend and sort
            ranked = self._rank_columns(ruleset, req, features.positions, scores)
        if ranked is not None:
            ranking = Ranking(ranked, [])
        else:
            ranking = self._rank_rules(ruleset, req, features, scores)
        watch.mark("rules")
        return ranking

    @staticmethod
    def _rank_columns(ruleset: RuleSet, req: RerankRequest, positions: list[int] | None,
                      scores: Scores) -> list | None:
        """``rank_by_score`` over the request's columns (None: the engine must decide)."""
        n = len(req.candidates)
        if positions is None:
            model, scored = np.asarray(scores.model, dtype=np.float64), np.ones(n, dtype=bool)
        else:
            model, scored = np.zeros(n), np.zeros(n, dtype=bool)
            if positions:
                model[positions] = scores.model
                scored[positions] = True
        # None -> NaN: "no retrieval score" (retrieval scores themselves are finite, validated).
        retrieval = np.array([c.retrieval_score for c in req.candidates], dtype=np.float64)
        return rank_by_score(ruleset, [c.item_id for c in req.candidates], model, scored, retrieval,
                             req.top_n, scores.scored_from)

    @staticmethod
    def _rank_rules(ruleset: RuleSet, req: RerankRequest, features: Features, scores: Scores) -> Ranking:
        """The rules engine's order (filters, boosts, diversity, pins, explanations)."""
        sources = scores.scored_from
        if features.positions is None:  # the usual case: every candidate scored
            rule_cands = [RuleCandidate.of(c, item, s, f)
                          for c, item, s, f in zip(req.candidates, features.items, scores.model, sources)]
        else:
            scored_at = dict(zip(features.positions, zip(features.items, scores.model)))
            rule_cands = [RuleCandidate.of(c, *scored_at.get(idx, (None, None)), sources[idx])
                          for idx, c in enumerate(req.candidates)]
        outcome = apply_rules(ruleset, rule_cands, history=features.events, now=time.time(), top_n=req.top_n)
        return Ranking(outcome.to_scored_items(explain=req.explain), outcome.filtered or [])

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        validate_events(events, now=time.time(), max_events=self.config.max_events_per_call)
        return await self.store.record_events(events)

    async def forget_user(self, user_id: str) -> tuple[int, int]:
        """Erase the user's events from the store, then the scores this gateway cached under
        the user's texts (see ``ScoreCache.forget``; with a Redis store the other gateways
        drop theirs when the store announces the erasure: ``server.features.invalidation``).
        Returns (events removed, cached scores removed); a repeat returns (0, 0). A Rerank of
        the user already in flight may cache scores again afterwards; a repeat drops them."""
        validate_forget(user_id)
        if self.impressions is not None:  # queued impressions first: none may land after the erasure
            await self.impressions.forget(user_id)
        events = await self.store.forget_user(user_id)
        return events, self.score_cache.forget(user_id)

    async def upsert_items(self, items: Sequence[Item], delete_ids: Sequence[str]) -> tuple[int, int]:
        validate_items(items, delete_ids, max_items=self.config.max_items_per_call)
        upserted = await self.store.upsert_items(items)
        deleted = await self.store.delete_items(delete_ids)
        if self.items is not self.store:
            self.items.invalidate([i.item_id for i in items] + list(delete_ids))
        return upserted, deleted
