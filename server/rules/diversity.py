"""Step 4 of the rules stage: MMR re-ordering and diversity caps over the engine's working
entries (``model.Entry``). Pure, like the engine that calls them.
"""

from __future__ import annotations

import math

import numpy as np

from server.rules.model import Entry
from server.rules.predicates import split_values
from server.rules.ruleset import DiversityCap, Mmr


def apply_mmr(entries: list[Entry], mmr: Mmr, window: int) -> list[Entry]:
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


def _values(e: Entry, caps: tuple[DiversityCap, ...]) -> list[list[str]]:
    """The item's distinct values per cap, computed on first use: the greedy usually looks
    at a few dozen items, not the whole list."""
    vals = e.vals
    if vals is None:
        attrs = e.c.attributes
        vals = e.vals = [list(dict.fromkeys(split_values(attrs.get(cap.attribute) or ""))) for cap in caps]
    return vals


def _blocking(
    e: Entry, caps: tuple[DiversityCap, ...], counts: list[dict[str, int]], active: list[int],
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


def apply_caps(
    entries: list[Entry],
    caps: tuple[DiversityCap, ...],
    windows: list[float],
    start: int,
    counts: list[dict[str, int]],
    dropped: list[tuple[Entry, str]],
) -> list[Entry]:
    """Greedy: each position takes the best remaining item that keeps every cap active at that
    position. Items passed over keep their relative order and come back once their caps'
    windows end. When no item fits, the best remaining item that breaks only non-strict caps
    is taken (a cap is exceeded only when unavoidable); if every remaining item breaks a strict
    cap, this tier ends there and the rest is dropped (reported as filtered by that cap).

    ``start`` is how many items earlier tiers placed; ``counts`` carries over between tiers.
    Within one window segment a passed-over item never becomes eligible again (counts only
    grow), so a segment is a single linear scan.
    """
    out: list[Entry] = []
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
        deferred: list[Entry] = []
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
