"""The rules stage: a pure function from (rule set, scored candidates, user history) to the
final ordered list with explanations. No I/O, no clock (``now`` is passed in), no gRPC.

Order of operations (fixed, so that a rule set reads the same whatever its key order):

1. filters: already interacted, unavailable, attribute predicates (first match names the rule);
2. scores: blend, then boosts and demotions in file order; every change is an adjustment;
3. order: by final score, ties by ``item_id``; unscored candidates after every scored one;
4. MMR (scored candidates only), then diversity caps (both in ``diversity``);
5. pins, last, at their positions; then the cut to ``top_n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from contract.blend import Blend, blend_columns
from server.rules.diversity import apply_caps, apply_mmr
from server.rules.model import Entry, RuleCandidate, RulesOutcome
from server.rules.ruleset import EMPTY_RULE_SET, RuleSet
from server.types import Event

PIN_RULE = "pins"


def _sort_key(e: Entry) -> tuple[float, str]:
    f = e.final
    # NaN sorts after every number, so the order stays total and deterministic.
    return (-f if f == f else math.inf, e.c.item_id)


def _interacted(ruleset: RuleSet, history: Sequence[Event], now: float) -> set[str]:
    rule = ruleset.exclude_interacted
    if rule is None or not history:
        return set()
    types, window = rule.event_types, rule.window_s
    return {
        ev.item_id for ev in history
        if ev.event_type in types and (window is None or now - ev.timestamp <= window)
    }


def _blended(entries: list[Entry], blend: Blend) -> list[float]:
    """``blend_columns`` for the engine's entries."""
    cs = [e.c for e in entries]
    model = np.array([c.model_score for c in cs], dtype=np.float64)
    scored = np.array([c.scored for c in cs], dtype=bool)
    # None -> NaN in a float array; retrieval scores themselves are finite (validated).
    retr = np.array([c.retrieval_score for c in cs], dtype=np.float64)
    return blend_columns(blend, model, scored, retr).tolist()


def _score(entries: list[Entry], ruleset: RuleSet) -> None:
    """Blend then boosts; each change recorded as ``(rule, delta)``, final = model + sum(deltas)."""
    blend: Blend | None = ruleset.blend
    boosts = ruleset.boosts
    if (blend is None and not boosts) or not entries:
        return
    blended: list[float] | None = None
    if blend is not None:
        blended = _blended(entries, blend)
        bname = blend.name
    for i, e in enumerate(entries):
        c = e.c
        s = c.model_score
        adj = e.adj
        if blended is not None:
            b = blended[i]
            adj.append((bname, b - s))
            s = b
        for bo in boosts:
            if bo.match(c.attributes):
                # Multiplicative boosts scale the magnitude, so a factor above 1 promotes
                # even when scores are negative (raw logits): delta = |s| * (factor - 1).
                d = bo.add if bo.multiply is None else abs(s) * (bo.multiply - 1.0)
                adj.append((bo.name, d))
                s += d
        if adj:
            # The documented identity, computed exactly as a client would check it
            # (sum() of one float is that float: skip building the list).
            e.final = c.model_score + (adj[0][1] if len(adj) == 1 else sum([d for _, d in adj]))


def apply_rules(
    ruleset: RuleSet | None,
    candidates: Sequence[RuleCandidate],
    *,
    history: Sequence[Event] = (),
    now: float,
    top_n: int = 0,
) -> RulesOutcome:
    """Apply ``ruleset`` to ``candidates`` and return at most ``top_n`` items (0: all).

    ``history`` is the user's recent events (for the already-interacted filter), ``now`` the
    request time in Unix seconds. Duplicate item ids keep their first occurrence. Pins only
    place items that are among the candidates. Deterministic: same inputs, same output.
    """
    rs = ruleset or EMPTY_RULE_SET
    top_n = max(top_n, 0)
    pins = {p.item_id: p for p in rs.pins}
    interacted = _interacted(rs, history, now)
    ei, eu, filters = rs.exclude_interacted, rs.exclude_unavailable, rs.filters
    filtered: list[tuple[int, str, str]] = []
    survivors: list[Entry] = []
    seen: set[str] = set()

    # 1. filters
    if ei is None and eu is None and not filters:  # nothing to filter on: only dedupe
        for idx, c in enumerate(candidates):
            if c.item_id not in seen:
                seen.add(c.item_id)
                survivors.append(Entry(c, idx))
    else:
        for idx, c in enumerate(candidates):
            iid = c.item_id
            if iid in seen:
                continue
            seen.add(iid)
            reason = None
            if ei is not None and iid in interacted:
                reason = ei.name
            elif eu is not None:
                v = c.attributes.get(eu.attribute)
                if v is None:
                    if not eu.missing_is_available:
                        reason = eu.name
                elif v.strip().lower() in eu.values:
                    reason = eu.name
            if reason is None and filters:
                for f in filters:
                    if f.match(c.attributes):
                        reason = f.name
                        break
            if reason is not None:
                pin = pins.get(iid)
                if pin is None or not pin.ignore_filters:
                    filtered.append((idx, iid, reason))
                    continue
                e = Entry(c, idx)
                e.note(PIN_RULE, f"kept despite filter {reason!r}: the pin ignores filters")
            else:
                e = Entry(c, idx)
            survivors.append(e)

    # 2. scores
    _score(survivors, rs)

    # 3. order, by tier; pinned items wait aside for step 5
    pinned: dict[str, Entry] = {}
    scored: list[Entry] = []
    unscored: list[Entry] = []
    for e in survivors:
        if e.c.item_id in pins:
            pinned[e.c.item_id] = e
        elif e.c.scored:
            scored.append(e)
        else:
            unscored.append(e)
    scored.sort(key=_sort_key)
    unscored.sort(key=_sort_key)

    # 4. diversity
    if rs.mmr is not None:
        scored = apply_mmr(scored, rs.mmr, rs.mmr.window or top_n or len(scored))
    dropped: list[tuple[Entry, str]] = []
    if rs.diversity:
        caps = rs.diversity
        windows = [float(cap.window or top_n or math.inf) for cap in caps]
        counts: list[dict[str, int]] = [{} for _ in caps]
        scored = apply_caps(scored, caps, windows, 0, counts, dropped)
        unscored = apply_caps(unscored, caps, windows, len(scored), counts, dropped)
        for e, rule in dropped:
            filtered.append((e.idx, e.c.item_id, rule))
    ordered = scored + unscored

    # 5. pins (ascending positions, so an insertion never shifts an earlier pin), then top_n
    for pin in rs.pins:
        e = pinned.get(pin.item_id)
        if e is None:
            continue
        at = min(pin.position - 1, len(ordered))
        ordered.insert(at, e)
        e.note(PIN_RULE, f"pinned at position {at + 1}" + ("" if at + 1 == pin.position else
                                                             f" (asked {pin.position}; the list is shorter)"))
    if top_n > 0:
        del ordered[top_n:]

    filtered.sort()
    return RulesOutcome(ordered, [(iid, rule) for _, iid, rule in filtered], rule_set=rs.name)
