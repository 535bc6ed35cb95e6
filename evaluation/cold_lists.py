"""The cold-start protocol's items, lists and metrics (``evaluation.coldstart``): which items
are held out, the cold and mixed lists built around them, and what is measured on them."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.blend import model_order
from evaluation.metrics import ndcg
from interactions.movielens import Interaction, id_sort_key

LIST_SIZE = 50
COLD_IN_MIXED = 5
TOP_K = 10


# -- held-out items ----------------------------------------------------------------------------------
def cold_items(catalogue: Sequence[str], share: float, seed: int = 0) -> frozenset[str]:
    """A seeded random ``share`` of ``catalogue`` (rounded; none for share 0)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"cold holdout share must be in [0, 1), not {share}")
    ids = sorted(set(catalogue), key=id_sort_key)
    n = int(round(share * len(ids)))
    return frozenset(random.Random(f"cold:{seed}").sample(ids, n)) if n else frozenset()


def warm_interactions(interactions: Iterable[Interaction], cold: Iterable[str]) -> list[Interaction]:
    """Interactions with warm items only (what the retriever and teacher may learn from)."""
    cold = set(cold)
    return [x for x in interactions if x.item_id not in cold] if cold else list(interactions)


def held_out_items(manifest) -> frozenset[str]:
    """The items a version was trained without (``rerankd train --cold-holdout``)."""
    return frozenset((manifest.training.get("cold_start") or {}).get("held_out_items") or ())


# -- lists ---------------------------------------------------------------------------------------
@dataclass
class ColdList:
    """One request of the protocol: candidates (retriever order), their retrieval scores,
    which of them are cold, and the user's target."""

    kind: str                 # "cold" or "mixed"
    user: str
    history: list[str]
    candidates: list[str]
    retrieval: list[float]
    cold: frozenset[str]
    target: str

    @property
    def covered(self) -> bool:
        return self.target in self.candidates


def other_cold(rng: random.Random, pool: Sequence[str], exclude: set[str], n: int) -> list[str]:
    """Up to ``n`` items of ``pool`` outside ``exclude``, drawn with ``rng``."""
    choices = [i for i in pool if i not in exclude]
    return rng.sample(choices, min(n, len(choices)))


def build_cold_lists(split, cold: frozenset[str], knn, upto: str = "test", seed: int = 0) -> list[ColdList]:
    """The protocol's cold lists and mixed lists for ``upto`` ('valid' or 'test')."""
    targets = split.test if upto == "test" else split.valid
    pool = sorted(cold, key=id_sort_key)
    out: list[ColdList] = []
    for u in split.users:
        target = targets.get(u)
        if target is None:
            continue
        history = split.history(u, upto)
        seen = set(history) | {target}
        rng = random.Random(f"{seed}:{upto}:{u}")
        if target in cold:
            cands = [target] + other_cold(rng, pool, seen, LIST_SIZE - 1)
            rng.shuffle(cands)
            out.append(ColdList("cold", u, history, cands, [0.0] * len(cands), frozenset(cands), target))
        got = knn.retrieve(history, LIST_SIZE - COLD_IN_MIXED)
        inserted = ([target] if target in cold else [])
        inserted += other_cold(rng, pool, seen, COLD_IN_MIXED - len(inserted))
        floor = min((s for _, s in got), default=0.0)
        out.append(ColdList("mixed", u, history, [i for i, _ in got] + inserted,
                            [s for _, s in got] + [floor] * len(inserted), frozenset(inserted), target))
    return out


# -- metrics -------------------------------------------------------------------------------------
def auc(target_score: float, others: Sequence[float]) -> float:
    """P(target scored above a random other item); ties count half."""
    if not others:
        return float("nan")
    return float(np.mean([1.0 if target_score > o else 0.5 if target_score == o else 0.0 for o in others]))


def top_share(order: Sequence[str], marked: Iterable[str], k: int = TOP_K) -> float:
    """Share of the first ``k`` slots taken by ``marked`` items."""
    marked = set(marked)
    top = order[:k]
    return sum(1 for i in top if i in marked) / max(1, min(k, len(order)))


def order_by(candidates: Sequence[str], scores: Sequence[float], tie_seed: str | None = None) -> list[str]:
    """Score descending. Ties: by item id (as the gateway orders them: ``model_order``), or at
    random with ``tie_seed`` (baselines, whose ties are many)."""
    if tie_seed is None:
        return model_order(candidates, scores)
    rng = random.Random(tie_seed)
    key = {c: rng.random() for c in candidates}
    return [c for _, _, c in sorted(zip((-float(s) for s in scores), (key[c] for c in candidates), candidates))]


def list_metrics(lists: Sequence[ColdList], orders: Mapping[str, Sequence[str]],
                 scores: Mapping[str, Sequence[float]] | None = None) -> dict:
    """NDCG@10 / HR@10 over the lists whose target is among the candidates, the cold items'
    top-10 share, and (with scores) the AUC of cold targets against the other cold items."""
    covered = [el for el in lists if el.covered]
    nd = [ndcg(orders[el.user], el.target, TOP_K) for el in covered]
    hr = [1.0 if el.target in orders[el.user][:TOP_K] else 0.0 for el in covered]
    out = {"lists": len(lists), "covered": len(covered),
           "ndcg@10": float(np.mean(nd)) if nd else float("nan"),
           "hr@10": float(np.mean(hr)) if hr else float("nan"),
           "cold_top10_share": float(np.mean([top_share(orders[el.user], el.cold) for el in lists]))
           if lists else float("nan")}
    if scores is not None:
        aucs = []
        for el in lists:
            if el.target in el.cold and len(el.cold) > 1:
                s = dict(zip(el.candidates, scores[el.user]))
                aucs.append(auc(s[el.target], [s[c] for c in el.cold if c != el.target]))
        out["cold_target_auc"] = float(np.mean(aucs)) if aucs else float("nan")
        out["auc_lists"] = len(aucs)
    return out


def expected_random_ndcg(n: int, k: int = TOP_K) -> float:
    """NDCG@k of a target placed uniformly at random among ``n`` candidates."""
    return sum(1.0 / math.log2(r + 1) for r in range(1, min(k, n) + 1)) / n
