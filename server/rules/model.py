"""What the rules stage reads and returns. Plain typed objects: no gRPC, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from server.types import Candidate, Explanation, Item, ScoredItem


@dataclass(slots=True)
class RuleCandidate:
    """One candidate as the rules see it (read-only by convention: not frozen, because
    frozen dataclasses cost 3x as much to build and the gateway builds one per candidate).

    ``attributes`` are the catalog attributes (multi-valued ones pipe-separated,
    ``"Action|Comedy"``); ``scored`` is False when the model could not score the item
    (not in the catalog and no text): such items always go after every scored one.
    """

    item_id: str
    model_score: float
    retrieval_score: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    scored: bool = True

    @classmethod
    def of(cls, candidate: Candidate, item: Item | None, model_score: float | None) -> RuleCandidate:
        """From the pipeline's pieces: ``model_score`` None means the model did not score it."""
        return cls(
            item_id=candidate.item_id,
            model_score=0.0 if model_score is None else float(model_score),
            retrieval_score=candidate.retrieval_score,
            attributes=item.attributes if item is not None else {},
            scored=model_score is not None,
        )


@dataclass(slots=True)
class RankedItem:
    """One returned item with its explanation.

    Invariant (exact, in float64): ``final_score == model_score + sum(d for _, d in adjustments)``.
    ``adjustments`` lists every score change as ``(rule_name, delta)`` in the order the rules
    ran (a blend is the delta from the raw model score to the blended score; a multiplicative
    boost is expressed as its additive delta). ``notes`` records moves that did not change the
    score (diversity deferrals, MMR picks, pins) as ``(rule_name, text)``. ``position`` is 1-based.
    """

    item_id: str
    final_score: float
    model_score: float
    retrieval_score: float | None
    adjustments: list[tuple[str, float]]
    position: int
    scored: bool = True
    notes: list[tuple[str, str]] = field(default_factory=list)

    def explanation(self) -> dict:
        """The explanation as plain data (what ``explain`` returns for this item)."""
        return {
            "model_score": self.model_score,
            "retrieval_score": self.retrieval_score,
            "adjustments": [{"rule": r, "delta": d} for r, d in self.adjustments],
            "final_score": self.final_score,
            "position": self.position,
            "scored": self.scored,
            "notes": [{"rule": r, "note": n} for r, n in self.notes],
        }


@dataclass(slots=True)
class RulesOutcome:
    """Returned items in order, and the items removed, each with the rule that removed it
    (in candidate order). Items cut only by ``top_n`` are in neither list."""

    items: list[RankedItem]
    filtered: list[tuple[str, str]]
    rule_set: str = ""

    def to_scored_items(self, *, explain: bool = False) -> list[ScoredItem]:
        """The response items; with ``explain``, each carries its typed explanation."""
        return [
            ScoredItem(
                item_id=it.item_id,
                score=it.final_score,
                rank=it.position,
                model_score=it.model_score,
                unscored=not it.scored,
                explanation=Explanation(it.model_score, it.retrieval_score, tuple(it.adjustments),
                                        it.final_score, tuple(it.notes)) if explain else None,
            )
            for it in self.items
        ]
