"""Cold start: the cold-start evaluation of a version trained with held-out items.

The protocol is ``PROTOCOL`` (also in the README and every report). Its items, lists and
metrics are ``evaluation.cold_lists``, its baselines ``evaluation.baselines``, its report
``evaluation.cold_report``; the text offset a trained model gets on validation is chosen by
``evaluation.text_offset``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from contract.items import Item
from contract.model_spec import Manifest
from evaluation.baselines import ContentBaseline, genre_scores
from evaluation.cold_lists import (
    LIST_SIZE,
    ColdList,
    build_cold_lists,
    expected_random_ndcg,
    held_out_items,
    list_metrics,
    order_by,
    warm_interactions,
)
from evaluation.cold_report import ColdReport, write_cold_report
from evaluation.protocol import UPTO, EvalList, movielens_inputs
from evaluation.retriever import ItemKNNRetriever
from evaluation.scoring import VersionScorer, score_in_process
from evaluation.served import score_served, served_stack

PROTOCOL = """\
- A seeded random share of the catalogue (10%: ``rerankd train --cold-holdout 0.1``) is held
  out of training entirely: never a target, never a negative, never an ID token, and no
  interaction of it reaches the retriever or the distillation teacher. Where such an item
  occurs in a history it is rendered as text, as every item created after training is.
- Split and histories as in the main protocol (leave-one-out; test target = last item).
- Cold lists: every user whose target is cold ranks it among 49 other cold items (seeded
  random, none from the user's history). NDCG@10, HR@10.
- Mixed lists: for every user, the retriever's top-45 (ItemKNN fit on warm interactions: it
  never retrieves a cold item) plus 5 cold items (the target when it is cold, the rest seeded
  random, none from the history), which carry the list's lowest retrieval score.
  NDCG@10 over the users whose target is in the list; the AUC of a cold target against the
  list's other cold items; the share of top-10 slots the cold items take. The same lists
  scored by a model trained with those items warm (their tokens, the production model) give
  the share the same items take when warm.
- Orders compared on the same lists: the model (served: gateway + Triton, the store loaded
  up to the split), a random order (seeded), a content baseline (cosine between the packaged
  all-MiniLM-L6-v2 sentence embedding of the candidate's text and the mean embedding of the
  user's 10 most recent history items' texts), genre overlap with those 10 items. Baseline
  ties are broken at random (seeded), never by item id (low MovieLens ids are the popular
  films)."""


def run_cold_eval(version_dir: Path, warm_dir: Path | None, *, split_name: str = "test",
                  path: str = "served", data_dir: Path | None = None, reports_dir: Path | None = None,
                  work_dir: Path | None = None, seed: int = 0, split=None, items: Sequence[Item] | None = None,
                  log=print) -> ColdReport:
    """The cold-start protocol for ``version_dir`` (trained with a holdout); ``warm_dir`` is a
    version trained on every item (the same lists scored with the items warm), or None.
    ``split`` / ``items`` default to MovieLens-100K's (tests pass a slice)."""
    version_dir = Path(version_dir)
    manifest, cold = _held_out(version_dir, warm_dir)
    upto = UPTO[split_name]
    data_dir, split, item_list = movielens_inputs(data_dir, split, items)
    items = {i.item_id: i for i in item_list}
    t0 = time.monotonic()
    by_kind = _lists_by_kind(split, cold, items, upto, seed)
    log(f"coldstart: {len(cold)} held-out items; {len(by_kind.get('cold', []))} cold lists, "
        f"{len(by_kind.get('mixed', []))} mixed lists ({time.monotonic() - t0:.0f}s)")
    report = ColdReport(split_name, version_dir.name, Path(warm_dir).name if warm_dir else "")
    report.info = {"protocol": PROTOCOL, "model": str(version_dir), "warm_model": str(warm_dir or ""),
                   "held_out_items": len(cold), "catalogue": len(items), "path": path, "seed": seed,
                   "expected_random_ndcg@10": expected_random_ndcg(LIST_SIZE),
                   "training": {k: manifest.training.get(k) for k in ("steps", "pairs", "train_seconds", "config")}}
    runs = [("model", version_dir)] + ([("warm_reference", Path(warm_dir))] if warm_dir else [])
    work = Path(tempfile.mkdtemp(prefix="coldstart-", dir=work_dir))
    try:
        answers = {name: _score(vdir, by_kind, path, data_dir=data_dir, split=split, upto=upto, items=items,
                                work=work / name, log=log) for name, vdir in runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    content = ContentBaseline(items)
    for kind, kl in by_kind.items():
        orders, scores = _orders(kind, kl, runs, answers, content, items, seed, report.info)
        report.metrics[kind] = {o: list_metrics(kl, r, scores.get(o)) for o, r in orders.items()}
        log(f"coldstart: {kind} lists: " + ", ".join(
            f"{o} NDCG@10 {m['ndcg@10']:.4f}" for o, m in report.metrics[kind].items()))
    if reports_dir is not None:
        report.info["files"] = [str(p) for p in write_cold_report(report, Path(reports_dir))]
    return report


def _held_out(version_dir: Path, warm_dir: Path | None) -> tuple[Manifest, frozenset[str]]:
    """The version's manifest and held-out items; fails unless it holds items out and the
    warm reference holds none of them out."""
    manifest = Manifest.read(version_dir / "manifest.json")
    cold = held_out_items(manifest)
    if not cold:
        raise ValueError(f"{version_dir} was trained without held-out items: train one with "
                         "`rerankd train --cold-holdout 0.1` for the cold-start protocol")
    if warm_dir is not None and held_out_items(Manifest.read(Path(warm_dir) / "manifest.json")) & cold:
        raise ValueError(f"{warm_dir} holds out some of the same items: it cannot be the warm reference")
    return manifest, cold


def _lists_by_kind(split, cold: frozenset[str], items: Mapping[str, Item], upto: str,
                   seed: int) -> dict[str, list[ColdList]]:
    """The protocol's lists by kind ('cold', 'mixed'; a kind without lists is left out), around
    a retriever fit on the warm interactions known before ``upto``'s target."""
    knn = ItemKNNRetriever().fit(warm_interactions(split.interactions(upto), cold),
                                 items=[i for i in items if i not in cold])
    lists = build_cold_lists(split, cold, knn, upto, seed)
    return {k: kl for k in ("cold", "mixed") if (kl := [el for el in lists if el.kind == k])}


def _eval_lists(lists: Sequence[ColdList]) -> list[EvalList]:
    return [EvalList(el.user, el.history, el.candidates, el.retrieval, el.target) for el in lists]


@dataclass
class _Scored:
    """One version's answers for one kind of list, by user."""

    scores: dict
    final: dict          # the gateway's final orders (its blend), when it blended
    text_scored: dict    # the candidates the gateway said it read from text alone
    seconds: float


def _score(version_dir: Path, by_kind: Mapping[str, Sequence[ColdList]], path: str, *, data_dir: Path, split,
           upto: str, items: Mapping[str, Item], work: Path, log) -> dict[str, _Scored]:
    """Every kind of list scored by one version: one served stack (or in-process scorer) for all."""
    out = {}
    if path == "in-process":
        scorer = VersionScorer(version_dir)
        for kind, kl in by_kind.items():
            t0 = time.monotonic()
            out[kind] = _Scored(score_in_process(scorer, _eval_lists(kl), items, log=log), {}, {},
                                time.monotonic() - t0)
        return out
    with served_stack(version_dir, data_dir, split, upto, work, items=list(items.values()), log=log) as addr:
        for kind, kl in by_kind.items():
            res = score_served(addr, _eval_lists(kl), log=log)
            out[kind] = _Scored(res.model_scores, res.final if res.blended_by_gateway else {},
                                res.text_scored, res.seconds)
    return out


def _orders(kind: str, kl: Sequence[ColdList], runs: Sequence[tuple[str, Path]], answers: Mapping[str, dict],
            content: ContentBaseline, items: Mapping[str, Item], seed: int,
            info: dict) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, Sequence[float]]]]:
    """(orders, scores) of one kind of list, by order name: the versions' (and the gateway's
    final orders), the retriever's (mixed lists), random, and the baselines'. What the
    gateway said it read from text, and how long it took, go into ``info``."""
    orders: dict[str, dict[str, list[str]]] = {}
    scores: dict[str, dict[str, Sequence[float]]] = {}
    for name, _ in runs:
        got = answers[name][kind]
        scores[name] = got.scores
        orders[name] = {el.user: order_by(el.candidates, got.scores[el.user]) for el in kl}
        if got.final and kind == "mixed":
            orders["final" if name == "model" else "warm_reference_final"] = got.final
        if got.text_scored:
            info[f"{kind}_{name}_text_scored"] = _text_check(kl, got.text_scored, name == "model")
        info[f"{kind}_{name}_seconds"] = round(got.seconds, 1)
    if kind == "mixed":
        orders["retriever"] = {el.user: el.candidates for el in kl}
    orders["random"] = {el.user: order_by(el.candidates, [0.0] * len(el.candidates), f"{seed}:{el.user}")
                        for el in kl}
    scores["content"] = {el.user: content.scores(el.history, el.candidates) for el in kl}
    scores["genre"] = {el.user: genre_scores(el.history, el.candidates, items) for el in kl}
    for name in ("content", "genre"):
        orders[name] = {el.user: order_by(el.candidates, scores[name][el.user], f"{seed}:{el.user}")
                        for el in kl}
    return orders, scores


def _text_check(lists: Sequence[ColdList], text_scored: Mapping[str, set[str]], cold_model: bool) -> dict:
    """How many cold / warm candidates the gateway said it scored from text alone."""
    cold_n = cold_text = warm_text = 0
    for el in lists:
        got = text_scored.get(el.user, set())
        cold_n += len(el.cold)
        cold_text += len(el.cold & got)
        warm_text += len(got - el.cold)
    return {"cold_candidates": cold_n, "cold_scored_from_text": cold_text,
            "warm_candidates_scored_from_text": warm_text, "expect_cold_as_text": cold_model}
