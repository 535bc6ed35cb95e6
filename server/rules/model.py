"""What the rules stage reads and returns, and the engine's per-candidate working state (``Entry``).
Plain typed objects: no gRPC, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from server.types import Candidate, Explanation, Item, ScoredFrom, ScoredItem


@dataclass(slots=True)
class RuleCandidate:
    """One candidate as the rules see it (read-only by convention: not frozen, because
    frozen dataclasses cost 3x as much to build and the gateway builds one per candidate).

    ``attributes`` are the catalog attributes (multi-valued ones pipe-separated,
    ``"Action|Comedy"``); ``scored`` is False when the model could not score the item
    (not in the catalog and no text): such items always go after every scored one.
    ``scored_from`` says how the model read the item; the rules only pass it on.
    """

    item_id: str
    model_score: float
    retrieval_score: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    scored: bool = True
    scored_from: ScoredFrom = ScoredFrom.UNSPECIFIED

    @classmethod
    def of(cls, candidate: Candidate, item: Item | None, model_score: float | None,
           scored_from: ScoredFrom = ScoredFrom.UNSPECIFIED) -> RuleCandidate:
        """From the pipeline's pieces: ``model_score`` None means the model did not score it
        (and ``scored_from`` is then ignored: unspecified)."""
        # Positional: keyword arguments cost 2x here, and the gateway builds one per candidate.
        if model_score is None:
            return cls(candidate.item_id, 0.0, candidate.retrieval_score,
                       item.attributes if item is not None else {}, False)
        return cls(candidate.item_id, float(model_score), candidate.retrieval_score,
                   item.attributes if item is not None else {}, True, scored_from)


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
    scored_from: ScoredFrom = ScoredFrom.UNSPECIFIED

    def explanation(self) -> dict:
        """The explanation as plain data (what ``explain`` returns for this item)."""
        return {
            "model_score": self.model_score,
            "retrieval_score": self.retrieval_score,
            "adjustments": [{"rule": r, "delta": d} for r, d in self.adjustments],
            "final_score": self.final_score,
            "position": self.position,
            "scored": self.scored,
            "scored_from": self.scored_from.value,
            "notes": [{"rule": r, "note": n} for r, n in self.notes],
        }


class Entry:
    """The engine's working state of one surviving candidate (cheaper than building
    RankedItems for all): ``final`` score, ``adj`` adjustments, ``notes``, and ``vals``, the
    per-cap attribute values the diversity caps compute on first use."""

    __slots__ = ("c", "idx", "final", "adj", "notes", "vals")

    def __init__(self, c: RuleCandidate, idx: int):
        self.c = c
        self.idx = idx
        self.final = c.model_score
        self.adj: list[tuple[str, float]] = []
        self.notes: list[tuple[str, str]] | None = None
        self.vals: list[list[str]] | None = None

    def note(self, rule: str, text: str) -> None:
        if self.notes is None:
            self.notes = []
        self.notes.append((rule, text))


class RulesOutcome:
    """Returned items in order, and the items removed, each with the rule that removed it
    (in candidate order). Items cut only by ``top_n`` are in neither list.

    Built by the engine from its ordered working entries (each with ``c``: the
    ``RuleCandidate``, ``final``, ``adj`` and ``notes``); the ``RankedItem`` list is made on
    first use, so the serving path, which needs only ``to_scored_items``, skips it.
    """

    __slots__ = ("_ordered", "_items", "filtered", "rule_set")

    def __init__(self, ordered: list, filtered: list[tuple[str, str]], rule_set: str = ""):
        self._ordered = ordered
        self._items: list[RankedItem] | None = None
        self.filtered = filtered
        self.rule_set = rule_set

    @property
    def items(self) -> list[RankedItem]:
        if self._items is None:
            self._items = [
                RankedItem(item_id=e.c.item_id, final_score=e.final, model_score=e.c.model_score,
                           retrieval_score=e.c.retrieval_score, adjustments=e.adj, position=pos,
                           scored=e.c.scored, notes=e.notes or [], scored_from=e.c.scored_from)
                for pos, e in enumerate(self._ordered, 1)
            ]
        return self._items

    def __eq__(self, other) -> bool:
        if not isinstance(other, RulesOutcome):
            return NotImplemented
        return (self.items, self.filtered, self.rule_set) == (other.items, other.filtered, other.rule_set)

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"RulesOutcome(items={self.items!r}, filtered={self.filtered!r}, rule_set={self.rule_set!r})"

    def to_scored_items(self, *, explain: bool = False) -> list[ScoredItem]:
        """The response items; with ``explain``, each carries its typed explanation."""
        if explain:
            return [
                ScoredItem(item_id=it.item_id, score=it.final_score, rank=it.position,
                           model_score=it.model_score, unscored=not it.scored, scored_from=it.scored_from,
                           explanation=Explanation(it.model_score, it.retrieval_score, tuple(it.adjustments),
                                                   it.final_score, tuple(it.notes), it.scored_from))
                for it in self.items
            ]
        # Positional (item_id, score, rank, model_score, unscored, scored_from): keywords cost 2x.
        return [ScoredItem(e.c.item_id, e.final, pos, e.c.model_score, not e.c.scored, e.c.scored_from)
                for pos, e in enumerate(self._ordered, 1)]
