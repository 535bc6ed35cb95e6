"""Offline evaluation of a model version: retriever candidates -> reranked -> HR / NDCG / MRR.

The protocol is ``evaluation.protocol.PROTOCOL`` (also in the README and every report).
Only users whose target is among the candidates can change any metric, so by default
only their lists are scored (``score_all=True`` scores every list; same numbers).

Scoring paths: ``served`` sends every list to a real gateway + Triton stack (started here,
with a store loaded up to the split, so served histories are exactly the split's;
``evaluation.served``); ``in-process`` renders and tokenizes the same way and runs the
version's engine through the Triton backend's own scorer (``evaluation.scoring``). Both use
the version's own renderer options and tokenizer.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.blend import Blend, model_order
from contract.model_spec import Manifest
from evaluation.metrics import evaluate
from evaluation.protocol import (
    KS,
    PROTOCOL,
    UPTO,
    EvalList,
    blend_order,
    build_lists,
    movielens_inputs,
    random_order,
)
from evaluation.report import write_report
from evaluation.retriever import TransitionTeacher
from evaluation.scoring import VersionScorer, score_in_process
from evaluation.served import eval_rules_yaml, score_served_blended, served_stack

ORDERS = ("pop", "retriever", "random", "model", "final")


@dataclass
class EvalReport:
    split: str
    version: str
    paths: dict[str, dict[str, float]] = field(default_factory=dict)  # path -> order -> metrics
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"split": self.split, "version": self.version, "metrics": self.paths, "info": self.info}


def orders_from_scores(lists: Sequence[EvalList], scores: Mapping[str, np.ndarray], rule_set,
                       pop_rank: Mapping[str, list[str]], seed: int = 0) -> dict[str, dict[str, list[str]]]:
    out = {o: {} for o in ORDERS}
    for el in lists:
        out["pop"][el.user] = pop_rank[el.user]
        out["retriever"][el.user] = el.candidates
        out["random"][el.user] = random_order(el.user, el.candidates, seed)
        if el.user in scores:
            s = scores[el.user]
            out["model"][el.user] = model_order(el.candidates, s)
            out["final"][el.user] = blend_order(el.candidates, s, el.retrieval, rule_set)
    return out


def metrics_of(orders: Mapping[str, Mapping[str, list[str]]], targets: Mapping[str, str]) -> dict:
    return {o: evaluate(r, targets, KS) for o, r in orders.items()}


def agreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
              oa: Mapping[str, list[str]], ob: Mapping[str, list[str]]) -> dict:
    users = sorted(set(a) & set(b))
    diff = max((float(np.max(np.abs(a[u].astype(np.float64) - b[u]))) for u in users), default=0.0)
    same = sum(1 for u in users if oa.get(u) == ob.get(u))
    return {"users": len(users), "max_abs_model_score_diff": diff, "identical_final_orders": same}


def run_eval(version_dir: Path, *, split_name: str = "test", paths: Sequence[str] = ("served", "in-process"),
             blend: tuple | None = None, score_all: bool = False, users: int = 0,
             reports_dir: Path | None = None, data_dir: Path | None = None, split=None, items=None,
             work_dir: Path | None = None, seed: int = 0, gru4rec: bool = False, log=print) -> EvalReport:
    """Evaluate the version in ``version_dir`` on ``split_name`` ('valid' or 'test'); with
    ``gru4rec``, a GRU4Rec trained on the same split and ranking every item is the
    reference row users ask about (``evaluation.seqrec``; about 2 minutes)."""
    version_dir = Path(version_dir)
    upto = UPTO[split_name]
    manifest = Manifest.read(version_dir / "manifest.json")
    data_dir, split, items = movielens_inputs(data_dir, split, items)
    catalogue = [i.item_id for i in items]
    item_map = {i.item_id: i for i in items}
    rule_set = blend if blend is not None else manifest.blend
    t0 = time.monotonic()
    lists, pop_rank = build_lists(split, catalogue, upto, users=split.users[:users] if users else None)
    targets = {el.user: el.target for el in lists if el.target is not None}
    to_score = [el for el in lists if score_all or el.covered]
    log(f"eval: {split_name}: {len(lists)} users, {sum(el.covered for el in lists)} with the target among "
        f"the candidates; scoring {len(to_score)} lists of up to 50 ({time.monotonic() - t0:.0f}s)")
    report = EvalReport(split_name, version_dir.name)
    report.info = _info(version_dir, manifest, rule_set, lists, to_score, score_all)
    teacher_order = _teacher_order(split, catalogue, upto, lists)
    scores_by_path: dict[str, dict[str, np.ndarray]] = {}
    finals: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        if path == "in-process":
            scores, final, report.info["in-process"] = _in_process(version_dir, to_score, item_map, log)
        elif path == "served":
            scores, final, report.info["served"] = _served(version_dir, to_score, rule_set, data_dir=data_dir,
                                                           split=split, upto=upto, work_dir=work_dir, log=log,
                                                           items=items)
        else:
            raise ValueError(f"unknown path {path!r}")
        orders = orders_from_scores(lists, scores, rule_set, pop_rank, seed)
        if final is not None:  # the gateway's own blended orders
            orders["final"] = {u: final[u] for u in orders["final"]}
        orders["teacher"] = teacher_order
        scores_by_path[path] = scores
        finals[path] = orders["final"]
        report.paths[path] = metrics_of(orders, targets)
        log(f"eval: {path}: " + ", ".join(f"{o} NDCG@10 {m['ndcg@10']:.4f}" for o, m in report.paths[path].items()))
    if "served" in scores_by_path and "in-process" in scores_by_path:
        report.info["agreement"] = agreement(scores_by_path["served"], scores_by_path["in-process"],
                                             finals["served"], finals["in-process"])
        report.info["agreement"]["max_metric_diff"] = max(
            abs(report.paths["served"][o][k] - report.paths["in-process"][o][k])
            for o in ORDERS for k in report.paths["served"][o])
    if gru4rec:
        report.info["gru4rec"] = _gru4rec(split, catalogue, upto, log)
    if reports_dir is not None:
        report.info["files"] = [str(p) for p in write_report(report, reports_dir)]
    return report


def _info(version_dir: Path, manifest: Manifest, rule_set: Blend | None, lists: Sequence[EvalList],
          to_score: Sequence[EvalList], score_all: bool) -> dict:
    """The report's description of the run (protocol, model, blend, coverage)."""
    return {
        "protocol": PROTOCOL,
        "model": str(version_dir), "manifest_training": manifest.training, "render": manifest.render,
        "blend": ({**rule_set.to_dict(), "formula": rule_set.describe(), "run_by": "contract.blend"}
                  if rule_set is not None else {"formula": "model score alone"}),
        "users": len(lists), "scored_lists": len(to_score), "score_all": score_all,
        "coverage": sum(el.covered for el in lists) / max(1, len(lists)),
    }


def _teacher_order(split, catalogue: Sequence[str], upto: str, lists: Sequence[EvalList]) -> dict[str, list[str]]:
    """A reference order, not a served one: the count-based teacher that training distils,
    fit on what is known before the target (as the retriever is)."""
    teacher = TransitionTeacher(split, catalogue, upto=upto)
    return {el.user: model_order(el.candidates, teacher.scores(el.history, el.candidates)) for el in lists}


def _in_process(version_dir: Path, to_score: Sequence[EvalList], item_map: Mapping,
                log) -> tuple[dict[str, np.ndarray], None, dict]:
    """(model scores by user, no final orders, path info) from the in-process path."""
    t1 = time.monotonic()
    scores = score_in_process(VersionScorer(version_dir), to_score, item_map, log=log)
    return scores, None, {"seconds": round(time.monotonic() - t1, 1)}


def _served(version_dir: Path, to_score: Sequence[EvalList], rule_set: Blend | None, *, data_dir: Path | None,
            split, upto: str, work_dir: Path | None, log,
            items=None) -> tuple[dict[str, np.ndarray], dict | None, dict]:
    """(model scores by user, the gateway's final orders when it blended, path info) from a
    served stack started for this evaluation."""
    tmp = Path(tempfile.mkdtemp(prefix="eval-", dir=work_dir)) if work_dir else Path(
        tempfile.mkdtemp(prefix="rerankd-eval-"))
    try:
        with served_stack(version_dir, data_dir, split, upto, tmp, rules_yaml=eval_rules_yaml(rule_set),
                          items=items, log=log) as addr:
            res = score_served_blended(addr, to_score, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "seconds": round(res.seconds, 1), "served_version": res.version,
        "final_order_from": "gateway (rules stage blend)" if res.blended_by_gateway else
        "served model scores, blended here with contract.blend (gateway applied no blend)",
        "pairs_per_second": round(sum(len(el.candidates) for el in to_score) / res.seconds, 1)}
    return res.model_scores, (res.final if res.blended_by_gateway else None), info


def _gru4rec(split, catalogue: Sequence[str], upto: str, log) -> dict:
    # evaluation.seqrec needs torch (the export extra); the rest of the evaluation does not.
    from evaluation.seqrec import reference_metrics

    t1 = time.monotonic()
    out = reference_metrics(split, catalogue, upto)
    log(f"eval: GRU4Rec (all items) NDCG@10 {out['ndcg@10']:.4f} ({time.monotonic() - t1:.0f}s)")
    return out
