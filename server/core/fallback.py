"""The order a Rerank falls back to when the model cannot score it (degraded mode).

The fallback order is the caller's ``retrieval_score`` order (higher first; candidates sent
without one after those with one) and otherwise the order the candidates were given. It
becomes a score column in (0, 1] (first 1.0, then down in steps of 1/n) that stands in for
the model column, so the rules stage ranks as usual: filters, boosts, diversity, pins and
``top_n`` apply to it. The scores are distinct, so no tie-break by item id reorders them.

The rule set's blend is dropped for degraded replies (``unblended``): blending the fallback
column with the retrieval scores again would count retrieval twice, and a candidate without
a retrieval score would take the blend's ``missing_retrieval`` value, out of the fallback order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from server.rules import RuleSet
from server.types import Candidate

# Why a reply is degraded (``RerankResponse.degraded_reason``; the metric's label).
TRITON_UNAVAILABLE = "triton_unavailable"  # Triton cannot be reached
CIRCUIT_OPEN = "circuit_open"  # the breaker holds calls back after repeated failures
MODEL_NOT_READY = "model_not_ready"  # Triton answers, but no version of the model is READY
DEADLINE = "deadline"  # the model did not answer within the request's budget
TRITON_ERROR = "triton_error"  # Triton answered the inference call with an error
OVERLOADED = "overloaded"  # load shedding: the queue would make the model miss the deadline
REASONS = (TRITON_UNAVAILABLE, CIRCUIT_OPEN, MODEL_NOT_READY, DEADLINE, TRITON_ERROR, OVERLOADED)


def fallback_scores(candidates: Sequence[Candidate]) -> list[float]:
    """Per candidate, in request order, its fallback score: ``(n - p) / n`` at fallback
    position ``p`` (retrieval score descending, ties and candidates without one in the
    given order, those last)."""
    n = len(candidates)
    if n == 0:
        return []
    retrieval = np.array([np.nan if c.retrieval_score is None else c.retrieval_score for c in candidates],
                         dtype=np.float64)
    missing = np.isnan(retrieval)
    # lexsort: last key first; position breaks ties, so the sort is the given order within them.
    order = np.lexsort((np.arange(n), -np.where(missing, 0.0, retrieval), missing))
    scores = np.empty(n, dtype=np.float64)
    scores[order] = (n - np.arange(n)) / n
    return scores.tolist()


class Unblended:
    """Rule sets without their blend, one copy per rule set object (as ``_Version.with_blend``)."""

    max_entries = 256

    def __init__(self):
        self._copies: dict[int, tuple[RuleSet, RuleSet]] = {}

    def __call__(self, ruleset: RuleSet) -> RuleSet:
        if ruleset.blend is None:
            return ruleset
        hit = self._copies.get(id(ruleset))
        if hit is None or hit[0] is not ruleset:  # the id of a rule set since collected
            if len(self._copies) >= self.max_entries:
                self._copies.clear()
            hit = self._copies[id(ruleset)] = (ruleset, dataclasses.replace(ruleset, blend=None))
        return hit[1]
