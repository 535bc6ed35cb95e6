"""The rules stage: a pure function from (rule set, scored candidates, user history) to the
final ordered list with explanations. No I/O, no clock (``now`` is passed in), no gRPC.

Order of operations (fixed, so that a rule set reads the same whatever its key order):

1. filters: already interacted, unavailable, attribute predicates (first match names the rule);
2. scores: blend, then boosts and demotions in file order; every change is an adjustment;
3. order: by final score, ties by ``item_id``; unscored candidates after every scored one;
4. MMR (scored candidates only), then diversity caps;
5. pins, last, at their positions; then the cut to ``top_n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from contract.blend import Blend, blend_columns
from server.rules.config import (
    EMPTY_RULE_SET,
    DiversityCap,
    Mmr,
    RuleSet,
    split_values,
)
from server.rules.model import RuleCandidate, RulesOutcome
from server.types import Event

PIN_RULE = "pins"


class _Entry:
    """Working state of one surviving candidate (cheaper than building RankedItems for all)."""

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


def _sort_key(e: _Entry) -> tuple[float, str]:
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


def _blended(entries: list[_Entry], blend: Blend) -> list[float]:
    """``blend_columns`` for the engine's entries."""
    cs = [e.c for e in entries]
    model = np.array([c.model_score for c in cs], dtype=np.float64)
    scored = np.array([c.scored for c in cs], dtype=bool)
    # None -> NaN in a float array; retrieval scores themselves are finite (validated).
    retr = np.array([c.retrieval_score for c in cs], dtype=np.float64)
    return blend_columns(blend, model, scored, retr).tolist()


def _score(entries: list[_Entry], ruleset: RuleSet) -> None:
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


def _mmr(entries: list[_Entry], mmr: Mmr, window: int) -> list[_Entry]:
    """Greedy MMR over the first ``window`` picks; the rest keep their score order.

    Relevance is the min-max normalized final score; similarity is the mean over
    ``mmr.attributes`` of the Jaccard index of the two items' value sets.
    """
    n = len(entries)
    window = min(window, n)
    if n < 2 or window < 2:
        return entries
    finals = np.array([e.final for e in entries], dtype=np.float64)
    finite = np.isfinite(finals)
    if not finite.all():  # NaN/inf scores count as the least relevant
        finals = np.where(finite, finals, finals[finite].min() if finite.any() else 0.0)
    lo, hi = float(finals.min()), float(finals.max())
    rel = (finals - lo) / (hi - lo) if hi > lo else np.ones(n)
    # Per attribute: each item's distinct values, how many, and an inverted index value ->
    # items (arrays built only for the values of picked items). Raw strings repeat a lot
    # ("Action|Comedy"), so each distinct one is split once.
    per_attr = []
    for attr in mmr.attributes:
        raws = [e.c.attributes.get(attr) or "" for e in entries]
        by_raw: dict[str, list[int]] = {}
        for i, raw in enumerate(raws):
            by_raw.setdefault(raw, []).append(i)
        parsed = {raw: list(dict.fromkeys(split_values(raw))) for raw in by_raw}
        inverted: dict[str, list[int]] = {}
        for raw, idxs in by_raw.items():
            for v in parsed[raw]:
                inverted.setdefault(v, []).extend(idxs)
        rows = [parsed[raw] for raw in raws]
        sizes = np.array([len(vs) for vs in rows], dtype=np.float64)
        per_attr.append((rows, inverted, sizes, {}))
    lam = mmr.lambda_
    relevance = lam * rel
    maxsim = np.zeros(n)
    available = np.ones(n, dtype=bool)
    picked: list[int] = []
    for step in range(window):
        objective = np.where(available, relevance - (1.0 - lam) * maxsim, -np.inf)
        j = int(np.argmax(objective))  # first maximum: ties go to the better-scored item
        picked.append(j)
        available[j] = False
        if step == window - 1:
            break
        sim = np.zeros(n)
        for rows, inverted, sizes, arrays in per_attr:
            vs = rows[j]
            if not vs:
                continue
            inter = np.zeros(n)
            for v in vs:
                idx = arrays.get(v)
                if idx is None:
                    idx = arrays[v] = np.array(inverted[v], dtype=np.intp)
                inter[idx] += 1.0
            sim += inter / (sizes + (len(vs) - inter))  # Jaccard; the union is >= 1 here
        maxsim = np.maximum(maxsim, sim / len(per_attr))
    for pos, j in enumerate(picked):
        if j != pos:
            entries[j].note(mmr.name, f"placed at {pos + 1} of the top {window} for diversity "
                                      f"(score rank {j + 1})")
    return [entries[j] for j in picked] + [e for i, e in enumerate(entries) if available[i]]


def _values(e: _Entry, caps: tuple[DiversityCap, ...]) -> list[list[str]]:
    """The item's distinct values per cap, computed on first use: the greedy usually looks
    at a few dozen items, not the whole list."""
    vals = e.vals
    if vals is None:
        attrs = e.c.attributes
        vals = e.vals = [list(dict.fromkeys(split_values(attrs.get(cap.attribute) or ""))) for cap in caps]
    return vals


def _blocking(
    e: _Entry, caps: tuple[DiversityCap, ...], counts: list[dict[str, int]], active: list[int],
    strict_only: bool = False,
) -> int:
    """Index of the first active cap (only strict ones if ``strict_only``) ``e`` would break, or -1."""
    vals = _values(e, caps)
    for k in active:
        cap = caps[k]
        if strict_only and not cap.strict:
            continue
        cnt, limit = counts[k], cap.max_per_value
        for v in vals[k]:  # type: ignore[index]
            if cnt.get(v, 0) >= limit:
                return k
    return -1


def _describe(cap: DiversityCap, window: float) -> str:
    where = "the whole list" if math.isinf(window) else f"the top {int(window)}"
    return f"at most {cap.max_per_value} per {cap.attribute} value in {where}"


def _apply_caps(
    entries: list[_Entry],
    caps: tuple[DiversityCap, ...],
    windows: list[float],
    start: int,
    counts: list[dict[str, int]],
    dropped: list[tuple[_Entry, str]],
) -> list[_Entry]:
    """Greedy: each position takes the best remaining item that keeps every cap active at that
    position. Items passed over keep their relative order and come back once their caps'
    windows end. When no item fits, the best remaining item that breaks only non-strict caps
    is taken (a cap is exceeded only when unavoidable); if every remaining item breaks a strict
    cap, this tier ends there and the rest is dropped (reported as filtered by that cap).

    ``start`` is how many items earlier tiers placed; ``counts`` carries over between tiers.
    Within one window segment a passed-over item never becomes eligible again (counts only
    grow), so a segment is a single linear scan.
    """
    out: list[_Entry] = []
    pos = start
    remaining = entries
    ncaps = range(len(caps))
    while remaining:
        active = [k for k in ncaps if windows[k] > pos]
        if not active:
            out.extend(remaining)
            break
        seg_end = min(windows[k] for k in active)
        any_strict = any(caps[k].strict for k in active)
        deferred: list[_Entry] = []
        i, n, d = 0, len(remaining), 0
        exhausted = False
        while pos < seg_end:
            e = None
            while i < n:
                cand = remaining[i]
                i += 1
                k = _blocking(cand, caps, counts, active)
                if k < 0:
                    e = cand
                    break
                name = caps[k].name
                if cand.notes is None or all(r != name for r, _ in cand.notes):
                    cand.note(name, "moved down: " + _describe(caps[k], windows[k]))
                deferred.append(cand)
            if e is None:
                if d >= len(deferred):
                    break  # tier exhausted
                if not any_strict:
                    e = deferred[d]
                    d += 1
                else:
                    j = next(
                        (j for j in range(d, len(deferred))
                         if _blocking(deferred[j], caps, counts, active, strict_only=True) < 0),
                        -1,
                    )
                    if j < 0:
                        for x in deferred[d:]:
                            k = _blocking(x, caps, counts, active, strict_only=True)
                            dropped.append((x, caps[k].name))
                        exhausted = True
                        break
                    e = deferred.pop(j)
                k = _blocking(e, caps, counts, active)
                e.note(caps[k].name, "cap exceeded: every other remaining candidate breaks a cap too")
            out.append(e)
            vals = _values(e, caps)
            for k in ncaps:
                if windows[k] > pos:
                    cnt = counts[k]
                    for v in vals[k]:  # type: ignore[index]
                        cnt[v] = cnt.get(v, 0) + 1
            pos += 1
        if exhausted:
            break
        remaining = deferred[d:] + remaining[i:]
        if pos < seg_end:  # tier exhausted inside the segment
            out.extend(remaining)
            break
    return out


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
    survivors: list[_Entry] = []
    seen: set[str] = set()

    # 1. filters
    if ei is None and eu is None and not filters:  # nothing to filter on: only dedupe
        for idx, c in enumerate(candidates):
            if c.item_id not in seen:
                seen.add(c.item_id)
                survivors.append(_Entry(c, idx))
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
                e = _Entry(c, idx)
                e.note(PIN_RULE, f"kept despite filter {reason!r}: the pin ignores filters")
            else:
                e = _Entry(c, idx)
            survivors.append(e)

    # 2. scores
    _score(survivors, rs)

    # 3. order, by tier; pinned items wait aside for step 5
    pinned: dict[str, _Entry] = {}
    scored: list[_Entry] = []
    unscored: list[_Entry] = []
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
        scored = _mmr(scored, rs.mmr, rs.mmr.window or top_n or len(scored))
    dropped: list[tuple[_Entry, str]] = []
    if rs.diversity:
        caps = rs.diversity
        windows = [float(cap.window or top_n or math.inf) for cap in caps]
        counts: list[dict[str, int]] = [{} for _ in caps]
        scored = _apply_caps(scored, caps, windows, 0, counts, dropped)
        unscored = _apply_caps(unscored, caps, windows, len(scored), counts, dropped)
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
