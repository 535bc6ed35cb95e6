"""The request pipeline: validate -> features -> render + tokenize -> infer -> rules.

Transport-free: takes and returns ``server.types`` objects and raises ``server.errors``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.calibration import apply_text_offset
from contract.render import Renderer
from server.core.admission import Admission
from server.core.score_cache import ScoreCache
from server.core.validate import validate_events, validate_items, validate_rerank
from server.errors import DeadlineExceeded
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


class Scorer(Protocol):
    async def score(self, batch, spec, version: str, timeout_s: float | None = None,
                    headers: dict[str, str] | None = None) -> np.ndarray: ...


class ModelSource(Protocol):
    def require(self): ...


@dataclass(frozen=True)
class PipelineConfig:
    max_candidates: int = 1000
    max_events_per_call: int = 1000
    max_items_per_call: int = 1000
    history_len: int = 20
    history_in_text: int = 10
    default_timeout_s: float = 10.0
    event_weights: dict[str, float] = field(default_factory=dict)


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


class Pipeline:
    """One object per gateway; safe for concurrent requests on one event loop."""

    def __init__(self, config: PipelineConfig, store, scorer: Scorer, models: ModelSource,
                 admission: Admission | None = None, items=None, score_cache: ScoreCache | None = None,
                 rules: RulesProvider | None = None, telemetry: Telemetry | None = None):
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
        self._renderers: dict[tuple[str, str], tuple[object, Renderer]] = {}

    def _renderer(self, model) -> Renderer:
        """The served version's renderer, built once per loaded model (it memoizes item texts
        and which items have tokens)."""
        key = (model.name, model.version)
        hit = self._renderers.get(key)
        if hit is None or hit[0] is not model:
            if len(self._renderers) > 8:  # versions come and go; keep the few in use
                self._renderers.clear()
            hit = self._renderers[key] = (model, Renderer.for_model(model.manifest, model.tokenizer))
        return hit[1]

    async def rerank(self, req: RerankRequest) -> RerankResponse:
        with self.admission.slot():
            return await self._rerank(req)

    async def _rerank(self, req: RerankRequest) -> RerankResponse:
        watch = _Stopwatch()
        cfg = self.config
        validate_rerank(req, max_candidates=cfg.max_candidates)
        # Resolve the rule set before any work: an unknown name or a forbidden override fails fast.
        ruleset = self.rules.get(req.rule_set)
        if req.rule_overrides:
            ruleset = apply_overrides(ruleset, req.rule_overrides)
        model = self.models.require()
        if ruleset.blend is None:
            ruleset = self._with_model_blend(ruleset, model.manifest)
        budget_s = req.timeout_s if req.timeout_s is not None else cfg.default_timeout_s
        watch.mark("validate")

        events = await self.store.recent_events(req.user_id, cfg.history_len)
        weights = cfg.event_weights
        history_ids = _unique([e.item_id for e in events if weights.get(e.event_type, 1.0) > 0])
        if not history_ids:  # cold start: the caller's session items stand in for history
            history_ids = _unique(req.context.session_item_ids)
        # The served version's own render options (item-ID tokens, history length): its manifest.
        renderer = self._renderer(model)
        n_history = renderer.history_items(cfg.history_in_text)
        history_ids = history_ids[:n_history]
        items = await self.items.get_items(_unique(history_ids + [c.item_id for c in req.candidates]))
        watch.mark("features")

        user_text = renderer.user([items[i] for i in history_ids if i in items], req.context.text,
                                  max_items=n_history)
        # Policy for items not in the catalog: scored from the candidate's inline text if it
        # has one; otherwise not scored, flagged ``unscored`` and placed after all scored items.
        # ``sources``, by candidate index, says how the model reads each one; decided from the
        # item id as the renderer decides, so it matches what is rendered below.
        scoreable: list[tuple[int, Item]] = []
        sources = [ScoredFrom.UNSPECIFIED] * len(req.candidates)
        source = renderer.scored_from
        for idx, c in enumerate(req.candidates):
            item = items.get(c.item_id) or (Item(c.item_id, title=c.text) if c.text.strip() else None)
            if item is not None:
                scoreable.append((idx, item))
                sources[idx] = source(item.item_id)
        item_texts = renderer.items([it for _, it in scoreable])
        scores = self.score_cache.lookup(model.version, user_text, item_texts)
        todo = [k for k, s in enumerate(scores) if s is None]
        every = len(todo) == len(scores)  # no cache hit: skip the per-item index juggling
        todo_texts = item_texts if every else [item_texts[k] for k in todo]
        batch = model.tokenizer.encode(user_text, todo_texts) if todo else None
        watch.mark("tokenize")

        if batch is not None:
            remaining = budget_s - watch.elapsed_s()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed before inference")
            fresh = await self.scorer.score(batch, model.spec, model.version, timeout_s=remaining,
                                            headers=self.telemetry.headers())
            self.score_cache.store(model.version, user_text, todo_texts, fresh)
            if every:
                scores = fresh.tolist()
            else:
                for k, s in zip(todo, fresh.tolist()):
                    scores[k] = s
        offset = model.manifest.text_offset if model.manifest is not None else 0.0
        if offset:  # cold items onto the warm items' scale (the cache keeps raw scores)
            apply_text_offset(scores, [sources[idx] is ScoredFrom.TEXT for idx, _ in scoreable], offset)
        watch.mark("infer")

        ranked = filtered = None
        if not req.explain and orders_by_score_only(ruleset):  # the default: blend and sort
            ranked = self._rank_columns(ruleset, req, scoreable, scores, sources)
        if ranked is None:
            if len(scoreable) == len(req.candidates):  # the usual case: every candidate scored
                rule_cands = [RuleCandidate.of(c, item, s, f)
                              for c, (_, item), s, f in zip(req.candidates, scoreable, scores, sources)]
            else:
                scored_at = {idx: (item, scores[k]) for k, (idx, item) in enumerate(scoreable)}
                rule_cands = [RuleCandidate.of(c, *scored_at.get(idx, (None, None)), sources[idx])
                              for idx, c in enumerate(req.candidates)]
            outcome = apply_rules(ruleset, rule_cands, history=events, now=time.time(), top_n=req.top_n)
            ranked, filtered = outcome.to_scored_items(explain=req.explain), outcome.filtered
        watch.mark("rules")
        watch.stages["total"] = watch.elapsed_s() * 1000.0
        self.telemetry.record_stages(watch.spans)
        return RerankResponse(items=ranked, model_name=model.name, model_version=model.version,
                              timings_ms=watch.stages, request_id=req.request_id,
                              filtered=filtered if req.explain and filtered else [])

    @staticmethod
    def _rank_columns(ruleset: RuleSet, req: RerankRequest, scoreable: list[tuple[int, Item]],
                      scores: list, sources: list[ScoredFrom]) -> list | None:
        """``rank_by_score`` over the request's columns (None: the engine must decide)."""
        n = len(req.candidates)
        if len(scoreable) == n:
            model, scored = np.asarray(scores, dtype=np.float64), np.ones(n, dtype=bool)
        else:
            model, scored = np.zeros(n), np.zeros(n, dtype=bool)
            for k, (idx, _) in enumerate(scoreable):
                model[idx], scored[idx] = scores[k], True
        # None -> NaN: "no retrieval score" (retrieval scores themselves are finite, validated).
        retrieval = np.array([c.retrieval_score for c in req.candidates], dtype=np.float64)
        return rank_by_score(ruleset, [c.item_id for c in req.candidates], model, scored, retrieval,
                             req.top_n, sources)

    @staticmethod
    def _with_model_blend(ruleset: RuleSet, manifest) -> RuleSet:
        """A rule set without a blend of its own gets the one the model version recommends
        (chosen on validation by ``rerankd train``, recorded in its manifest), so the served
        order is the evaluated final order by default."""
        if manifest is None or manifest.blend is None or ruleset.blend is not None:
            return ruleset
        return dataclasses.replace(ruleset, blend=manifest.blend)

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        validate_events(events, now=time.time(), max_events=self.config.max_events_per_call)
        return await self.store.record_events(events)

    async def upsert_items(self, items: Sequence[Item], delete_ids: Sequence[str]) -> tuple[int, int]:
        validate_items(items, delete_ids, max_items=self.config.max_items_per_call)
        upserted = await self.store.upsert_items(items)
        deleted = await self.store.delete_items(delete_ids)
        if self.items is not self.store:
            self.items.invalidate([i.item_id for i in items] + list(delete_ids))
        return upserted, deleted
