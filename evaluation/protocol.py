"""The leave-one-out protocol's lists and orders: the retriever's candidate lists, the seeded
random order, the retrieval blend (the gateway's formula) and its choice on validation.

``PROTOCOL`` is the protocol as stated in the README and every report. Training validates
with the same lists (``validation_candidates``) and the same blend choice
(``blend_from_scores``)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.blend import Blend, model_order
from contract.blend import blend_order as contract_blend_order
from contract.items import Item
from evaluation.metrics import evaluate
from evaluation.retriever import ItemKNNRetriever, PopRetriever
from interactions.movielens import (
    fetch_movielens,
    leave_one_out,
    load_interactions,
    load_items,
)

PROTOCOL = """\
- Leave-one-out split by timestamp per user, ties by the file's row order (``interactions.movielens``);
  validation target = second-last item (history = train), test target = last item
  (history = train + validation item). All 943 users, no rating threshold.
- Candidates: ItemKNN over co-occurrence of the user's 3 most recent items (Pop fills the
  rest), the user's history masked, top-50; the retriever is fit on what is known before
  the target (validation: train; test: train + validation).
- Metrics: HR, NDCG, MRR at 5, 10, 20 over *all* users (a target missing from the
  candidates is a miss), plus NDCG@10 over the users whose target is among the candidates.
- Orders compared: Pop (its own top-50), the retriever's order, a random order of the same
  candidates (seeded), the model alone, and the final order = retrieval blend through the
  rules engine (``server.rules``): ``w_model * norm(model) + w_retrieval * minmax(retrieval)``
  with the weights and the model score's normalization (minmax per list, or the raw logit)
  chosen on validation only. For reference, the transition-count teacher that training
  distils (``evaluation.retriever.TransitionTeacher``) ranks the same candidates."""

KS = (5, 10, 20)


@dataclass
class EvalList:
    """One user's request: known history (newest first), candidates best first, scores."""

    user: str
    history: list[str]
    candidates: list[str]
    retrieval: list[float]
    target: str | None = None

    @property
    def covered(self) -> bool:
        return self.target is not None and self.target in self.candidates


def build_lists(split, catalogue: Sequence[str], upto: str, k: int = 50,
                users: Sequence[str] | None = None) -> tuple[list[EvalList], dict[str, list[str]]]:
    """ItemKNN candidates for every user (fit on what is known before ``upto``'s target),
    and Pop's own top-``k`` rankings."""
    known = split.interactions(upto)
    knn = ItemKNNRetriever().fit(known, items=catalogue)
    pop = PopRetriever().fit(known, catalogue)
    targets = split.valid if upto == "valid" else split.test
    lists, pop_rank = [], {}
    for u in (users if users is not None else split.users):
        h = split.history(u, upto)
        got = knn.retrieve(h, k)
        lists.append(EvalList(u, h, [i for i, _ in got], [s for _, s in got], targets.get(u)))
        pop_rank[u] = [i for i, _ in pop.retrieve(h, k)]
    return lists, pop_rank


def validation_candidates(data, k: int = 50, users: int | None = None) -> list[tuple]:
    """For training: (user, history, candidates, retrieval) of the validation users whose
    target is among the train-fit retriever's top-``k`` (the only ones that move a metric)."""
    split = data.split
    out = []
    for u in split.users[:users] if users else split.users:
        if u not in split.valid:
            continue
        h = split.history(u, "valid")
        got = data.knn.retrieve(h, k)
        cands = [i for i, _ in got]
        if split.valid[u] in cands:
            out.append((u, h, cands, [s for _, s in got]))
    return out


# -- orders -------------------------------------------------------------------------------------
def random_order(user: str, candidates: Sequence[str], seed: int = 0) -> list[str]:
    out = list(candidates)
    random.Random(f"{seed}:{user}").shuffle(out)
    return out


def blend_order(candidates: Sequence[str], model_scores: Sequence[float], retrieval: Sequence[float],
                blend: Blend | None) -> list[str]:
    """Final order by the gateway's formula (``contract.blend``). Scores are taken as float32
    values, as they travel on the wire (model scores from Triton, retrieval scores in the proto)."""
    model = np.asarray(model_scores, dtype=np.float32).astype(np.float64)
    retr = np.asarray(retrieval, dtype=np.float32).astype(np.float64)
    return contract_blend_order(list(candidates), model, retr, blend)


# -- the blend, chosen on validation ----------------------------------------------------------------
def blend_grid(retrieval_weights: Iterable[float]) -> list[Blend]:
    """Candidates for the blend: per-request minmax of both scores with weights summing to 1,
    and the raw model logit (``none``) against minmax retrieval at a few scales."""
    out = [Blend(model_weight=round(1.0 - w, 6), retrieval_weight=float(w)) for w in retrieval_weights]
    out += [Blend(model_weight=wm, retrieval_weight=1.0, model_normalize="none") for wm in (0.02, 0.05, 0.1, 0.2, 0.5)]
    return out


def blend_from_scores(valid_lists: Sequence[tuple], scores: Sequence[np.ndarray], targets: Mapping[str, str],
                      grid: Iterable[float]) -> dict:
    """Validation metrics of the retriever, the model alone and a random order, and the best
    blend of ``blend_grid(grid)`` by NDCG@10 (ties: the first), with every grid row."""
    users = [u for u, *_ in valid_lists]
    tgt = {u: targets[u] for u in targets}
    retr = {u: c for u, _, c, _ in valid_lists}
    model = {u: model_order(c, s) for (u, _, c, _), s in zip(valid_lists, scores)}
    out = {"users": len(tgt), "scored_users": len(users),
           "retriever": evaluate(retr, tgt, KS), "model": evaluate(model, tgt, KS),
           "random": evaluate({u: random_order(u, c) for u, _, c, _ in valid_lists}, tgt, KS)}
    grid_rows = []
    best = None
    for spec in blend_grid(grid):
        ranks = {u: blend_order(c, s, r, spec) for (u, _, c, r), s in zip(valid_lists, scores)}
        m = evaluate(ranks, tgt, KS)
        grid_rows.append({**spec.to_dict(), "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]})
        if best is None or m["ndcg@10"] > best[1]["ndcg@10"] + 1e-12:
            best = (spec, m)
    spec, m = best
    out["blend"] = {**spec.to_dict(), "metrics": m}
    out["grid"] = grid_rows
    return out


# -- inputs -----------------------------------------------------------------------------------------
UPTO = {"valid": "valid", "validation": "valid", "test": "test"}  # split name -> what is known


def movielens_inputs(data_dir: Path | None = None, split=None,
                     items: Sequence[Item] | None = None) -> tuple[Path | None, object, list[Item]]:
    """(data folder, leave-one-out split, items): MovieLens-100K's, except what is given
    (tests pass a slice; another source passes its split and items, and no folder)."""
    if data_dir is None and (split is None or items is None):
        data_dir = fetch_movielens()
    if split is None:
        split = leave_one_out(load_interactions(data_dir))
    if items is None:
        items = load_items(data_dir)
    return (Path(data_dir) if data_dir is not None else None), split, list(items)
