"""Ranking metrics for one held-out relevant item per user (leave-one-out)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def _rank(ranked: Sequence[str], target: str | None) -> int:
    """1-based position of ``target`` in ``ranked``; 0 when absent."""
    if target is None:
        return 0
    for i, item in enumerate(ranked, start=1):
        if item == target:
            return i
    return 0


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def hit_rate(ranked: Sequence[str], target: str | None, k: int) -> float:
    """1.0 when ``target`` is among the first ``k`` items, else 0.0."""
    _check_k(k)
    r = _rank(ranked, target)
    return 1.0 if 0 < r <= k else 0.0


def ndcg(ranked: Sequence[str], target: str | None, k: int) -> float:
    """NDCG@k with one relevant item: 1/log2(rank+1) within the cut-off (ideal DCG is 1)."""
    _check_k(k)
    r = _rank(ranked, target)
    return 1.0 / math.log2(r + 1) if 0 < r <= k else 0.0


def mrr(ranked: Sequence[str], target: str | None, k: int) -> float:
    """Reciprocal rank within the cut-off, else 0.0."""
    _check_k(k)
    r = _rank(ranked, target)
    return 1.0 / r if 0 < r <= k else 0.0


def evaluate(
    rankings: Mapping[str, Sequence[str]],
    targets: Mapping[str, str],
    ks: Iterable[int] = (5, 10, 20),
) -> dict[str, float]:
    """Average HR/NDCG/MRR@k over every user in ``targets``.

    A user with no ranking, or whose target is not ranked within k, counts as a miss;
    users ranked but without a target are ignored. Also returns ``coverage`` (share of
    users whose target is anywhere in their ranking, i.e. among the candidates),
    ``ndcg@10_covered`` (NDCG@10 over those users only: what a reranker can reach given
    the candidates) and ``users``.
    """
    ks = sorted(set(ks))
    users = list(targets)
    n = len(users)
    out: dict[str, float] = {"users": float(n)}
    if n == 0:
        return out
    ranks = [_rank(rankings.get(u, ()), targets[u]) for u in users]
    for k in ks:
        _check_k(k)
        out[f"hr@{k}"] = sum(1.0 for r in ranks if 0 < r <= k) / n
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in ranks if 0 < r <= k) / n
        out[f"mrr@{k}"] = sum(1.0 / r for r in ranks if 0 < r <= k) / n
    covered = [r for r in ranks if r > 0]
    out["coverage"] = len(covered) / n
    out["ndcg@10_covered"] = (
        sum(1.0 / math.log2(r + 1) for r in covered if r <= 10) / len(covered) if covered else 0.0
    )
    return out
