"""Offline evaluation of a model version: retriever candidates -> reranked -> HR / NDCG / MRR.

Protocol (``PROTOCOL``; also in the README and every report):

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
  distils (``evaluation.retriever.TransitionTeacher``) ranks the same candidates.

Only users whose target is among the candidates can change any metric, so by default
only their lists are scored (``score_all=True`` scores every list; same numbers).

Scoring paths: ``served`` sends every list to a real gateway + Triton stack (started here,
with a store loaded up to the split, so served histories are exactly the split's);
``in-process`` renders and tokenizes the same way and runs the version's ``model.onnx``
with ONNX Runtime. Both use the version's own renderer options and tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.blend import Blend, model_order
from contract.blend import blend_order as contract_blend_order
from evaluation.metrics import evaluate

KS = (5, 10, 20)
PROTOCOL = __doc__.split("every report):", 1)[1].split("\n\nOnly users", 1)[0].strip()
ORDERS = ("pop", "retriever", "random", "model", "final")
EVAL_RULE_SET = "rerankd_eval_blend"
_BACKEND_SRC = Path(__file__).resolve().parents[1] / "model_repository" / "reranker" / "model.py"


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
    from evaluation.retriever import ItemKNNRetriever, PopRetriever

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


def blend_grid(retrieval_weights: Iterable[float]) -> list[Blend]:
    """Candidates for the blend: per-request minmax of both scores with weights summing to 1,
    and the raw model logit (``none``) against minmax retrieval at a few scales."""
    out = [Blend(model_weight=round(1.0 - w, 6), retrieval_weight=float(w)) for w in retrieval_weights]
    out += [Blend(model_weight=wm, retrieval_weight=1.0, model_normalize="none") for wm in (0.02, 0.05, 0.1, 0.2, 0.5)]
    return out


def blend_from_scores(valid_lists: Sequence[tuple], scores: Sequence[np.ndarray], targets: Mapping[str, str],
                      grid: Iterable[float]) -> dict:
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


def score_lists(lists: Sequence[tuple[Sequence[str], Sequence[str]]], encode: Callable, scorer: Callable,
                lists_per_call: int = 5) -> list[np.ndarray]:
    """Scores of each (history, candidates) list, in order."""
    out: list[np.ndarray] = []
    for s in range(0, len(lists), lists_per_call):
        chunk = lists[s:s + lists_per_call]
        arrays = encode(chunk)
        scores = scorer(arrays)
        start = 0
        for _, c in chunk:
            out.append(np.asarray(scores[start:start + len(c)], dtype=np.float32))
            start += len(c)
    return out


# -- in-process scoring of an exported version --------------------------------------------------
class VersionScorer:
    """A model version scored in this process exactly as the gateway and Triton would: the
    version's renderer options and tokenizer (padded to its sequence buckets), and its engine
    run through the Triton backend's own ``load_scorer`` (``model_repository/reranker/model.py``)
    with the parameters the export served it with."""

    def __init__(self, version_dir: Path, threads: int = 2):
        from contract.model_spec import Manifest
        from contract.render import Renderer
        from contract.tokenize import PairTokenizer
        from export.engines import load_backend
        from export.write_repo import DEFAULT_PARAMETERS

        self.dir = Path(version_dir)
        self.manifest = Manifest.read(self.dir / "manifest.json")
        self.tokenizer = PairTokenizer.from_file(self.dir / "tokenizer.json", self.manifest.spec)
        self.renderer = Renderer.for_model(self.manifest, self.tokenizer)
        backend = load_backend(self.dir / "model.py" if (self.dir / "model.py").is_file()
                               else _BACKEND_SRC)
        # The engine: the version's own (its manifest), as in Triton. No spin-waiting: on a
        # shared 2-core machine spinning threads fight the other work.
        params = {**DEFAULT_PARAMETERS, "intra_op_threads": str(threads), "allow_spinning": "0"}
        self.engine = self.manifest.engine or "onnxruntime"  # the backend reads the same field
        self._scorer = backend.load_scorer(str(self.dir), params, self.manifest.spec.input_names,
                                           self.manifest.spec.output_name)

    def texts(self, history_items, candidate_items, history_in_text: int = 10) -> tuple[str, list[str]]:
        n = self.renderer.history_items(history_in_text)
        user = self.renderer.user(history_items[:n], "", max_items=history_in_text)
        return user, [self.renderer.item(it) for it in candidate_items]

    def encode(self, user_text: str, item_texts: Sequence[str]):
        return self.tokenizer.encode(user_text, item_texts)

    def score(self, user_text: str, item_texts: Sequence[str], item_ids: Sequence[str] = ()) -> np.ndarray:
        """Model scores as the gateway reports them: with ``item_ids``, the version's text
        offset is added to the items it has no token for."""
        from contract.calibration import apply_text_offset
        from contract.items import ScoredFrom

        spec = self.manifest.spec
        batch = self.encode(user_text, item_texts)
        out = [self._scorer.score(batch.rows(s, s + spec.max_batch_size)).reshape(-1)
               for s in range(0, len(batch), spec.max_batch_size)]
        scores = np.concatenate(out).astype(np.float32)
        if item_ids and self.manifest.text_offset:
            from_text = [self.renderer.scored_from(i) is ScoredFrom.TEXT for i in item_ids]
            scores = np.asarray(apply_text_offset(scores.tolist(), from_text, self.manifest.text_offset), np.float32)
        return scores


def score_in_process(scorer: VersionScorer, lists: Sequence[EvalList], items: Mapping,
                     history_in_text: int = 10, log=print) -> dict[str, np.ndarray]:
    out = {}
    t0 = time.monotonic()
    for n, el in enumerate(lists, 1):
        hist = [items[i] for i in el.history if i in items]
        user, texts = scorer.texts(hist, [items[c] for c in el.candidates], history_in_text)
        out[el.user] = scorer.score(user, texts, el.candidates)
        if n % 100 == 0 or n == len(lists):
            log(f"eval: in-process {n}/{len(lists)} lists ({time.monotonic() - t0:.0f}s)")
    return out


# -- served scoring -----------------------------------------------------------------------------
@dataclass
class ServedResult:
    model_scores: dict[str, np.ndarray]
    final: dict[str, list[str]]
    version: str
    blended_by_gateway: bool
    seconds: float
    # Per list, the candidates the gateway says it scored from text alone (no ID token).
    text_scored: dict[str, set[str]] = field(default_factory=dict)


def _prepare_repo(version_dir: Path, dest: Path) -> Path:
    """A one-version model repository (hard links where possible) so Triton serves exactly it."""
    version_dir = Path(version_dir)
    model_dir = dest / version_dir.parent.name
    (model_dir / version_dir.name).mkdir(parents=True)
    shutil.copy2(version_dir.parent / "config.pbtxt", model_dir / "config.pbtxt")
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    # Engine files may sit in sub-folders (openvino_int8/).
    shutil.copytree(version_dir, model_dir / version_dir.name, copy_function=link, dirs_exist_ok=True)
    return dest


async def _load_store(url: str, data_dir: Path, split, upto: str, history_len: int) -> None:
    from interactions.to_store import load_into_store
    from server.features import open_store

    store = open_store(url, history_len=history_len)
    try:
        await load_into_store(store, data_dir, split, upto=upto, log=lambda *_: None)
    finally:
        await store.close()


@contextmanager
def served_stack(version_dir: Path, data_dir: Path, split, upto: str, work: Path, *,
                 rules_yaml: str | None = None, log=print):
    """Triton (serving only ``version_dir``) + a ``rerankd serve`` gateway on free ports, with
    a fresh SQLite store holding the items and the interactions known before ``upto``."""
    from server.devstack import local_stack
    from server.settings import load_settings
    from server.triton.install import ensure_triton

    work = Path(work)
    repo = _prepare_repo(version_dir, work / "repo")
    db = work / "store.db"
    settings = load_settings(env={})
    t0 = time.monotonic()
    asyncio.run(_load_store(f"sqlite:///{db}", data_dir, split, upto, settings.store.history_len))
    log(f"eval: store loaded up to {upto!r} in {time.monotonic() - t0:.0f}s")
    env = {"RERANKD_CONFIG": "", "RERANKD_STORE_URL": f"sqlite:///{db}"}
    if rules_yaml is not None:
        rules_file = work / "rules.yaml"
        rules_file.write_text(rules_yaml)
        env["RERANKD_RULES_PATH"] = str(rules_file)
    with local_stack(ensure_triton(settings.triton.install_dir), repo, work, **env) as stack:
        log(f"eval: stack up in {time.monotonic() - t0:.0f}s (gateway {stack.addr}, Triton {stack.triton.grpc_url})")
        yield stack.addr


def score_served(addr: str, lists: Sequence[EvalList], *, rule_set: str = "", concurrency: int = 4,
                 log=print) -> ServedResult:
    """Send each list as one Rerank (candidates with their retrieval scores); collect the
    model score of every candidate and the order the gateway returned."""
    import grpc

    from server.api.pb import reranker_pb2, reranker_pb2_grpc

    t0 = time.monotonic()
    model_scores: dict[str, np.ndarray] = {}
    final: dict[str, list[str]] = {}
    versions = set()
    blended = []
    text_scored: dict[str, set[str]] = {}
    from_text = reranker_pb2.SCORED_FROM_TEXT
    with grpc.insecure_channel(addr) as ch:
        stub = reranker_pb2_grpc.RerankerStub(ch)
        pending: list[tuple[EvalList, object]] = []

        def drain(limit: int) -> None:
            while len(pending) > limit:
                el, fut = pending.pop(0)
                resp = fut.result()
                by_id = {it.item_id: it for it in resp.items}
                model_scores[el.user] = np.array([by_id[c].model_score for c in el.candidates], np.float32)
                final[el.user] = [it.item_id for it in resp.items]
                text_scored[el.user] = {it.item_id for it in resp.items if it.scored_from == from_text}
                versions.add(resp.model_version)
                blended.append(any(abs(it.score - it.model_score) > 1e-6 for it in resp.items))
                if len(final) % 100 == 0 or len(final) == len(lists):
                    log(f"eval: served {len(final)}/{len(lists)} lists ({time.monotonic() - t0:.0f}s)")

        for el in lists:
            req = reranker_pb2.RerankRequest(
                user_id=el.user, rule_set=rule_set,
                candidates=[reranker_pb2.Candidate(item_id=c, retrieval_score=r)
                            for c, r in zip(el.candidates, el.retrieval)])
            pending.append((el, stub.Rerank.future(req, timeout=120)))
            drain(concurrency - 1)
        drain(0)
    if len(versions) != 1:
        raise RuntimeError(f"the gateway answered with versions {sorted(versions)}")
    return ServedResult(model_scores, final, versions.pop(), bool(blended) and all(blended),
                        time.monotonic() - t0, text_scored)


# -- the evaluation -----------------------------------------------------------------------------
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
    from contract.model_spec import Manifest
    from interactions.movielens import (
        fetch_movielens,
        leave_one_out,
        load_interactions,
        load_items,
    )

    version_dir = Path(version_dir)
    upto = {"valid": "valid", "validation": "valid", "test": "test"}[split_name]
    manifest = Manifest.read(version_dir / "manifest.json")
    if data_dir is None:
        data_dir = fetch_movielens()
    if split is None:
        split = leave_one_out(load_interactions(data_dir))
    if items is None:
        items = load_items(data_dir)
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
    report.info = {
        "protocol": PROTOCOL,
        "model": str(version_dir), "manifest_training": manifest.training, "render": manifest.render,
        "blend": ({**rule_set.to_dict(), "formula": rule_set.describe(), "run_by": "contract.blend"}
                  if rule_set is not None else {"formula": "model score alone"}),
        "users": len(lists), "scored_lists": len(to_score), "score_all": score_all,
        "coverage": sum(el.covered for el in lists) / max(1, len(lists)),
    }
    # A reference order, not a served one: the count-based teacher that training distils,
    # fit on what is known before the target (as the retriever is).
    from evaluation.retriever import TransitionTeacher

    teacher = TransitionTeacher(split, catalogue, upto=upto)
    teacher_order = {el.user: model_order(el.candidates, teacher.scores(el.history, el.candidates))
                     for el in lists}
    scores_by_path: dict[str, dict[str, np.ndarray]] = {}
    finals: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        t1 = time.monotonic()
        if path == "in-process":
            scorer = VersionScorer(version_dir)
            scores = score_in_process(scorer, to_score, item_map, log=log)
            orders = orders_from_scores(lists, scores, rule_set, pop_rank, seed)
            report.info["in-process"] = {"seconds": round(time.monotonic() - t1, 1)}
        elif path == "served":
            tmp = Path(tempfile.mkdtemp(prefix="eval-", dir=work_dir)) if work_dir else Path(
                tempfile.mkdtemp(prefix="rerankd-eval-"))
            rules_yaml = json.dumps({"version": 1, "rule_sets": {
                "default": {}, EVAL_RULE_SET: ({"blend": rule_set.to_dict()} if rule_set else {})}})
            try:
                with served_stack(version_dir, data_dir, split, upto, tmp, rules_yaml=rules_yaml, log=log) as addr:
                    res = _served_with_fallback(addr, to_score, log)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            scores = res.model_scores
            orders = orders_from_scores(lists, scores, rule_set, pop_rank, seed)
            if res.blended_by_gateway:
                orders["final"] = {u: res.final[u] for u in orders["final"]}
            report.info["served"] = {
                "seconds": round(res.seconds, 1), "served_version": res.version,
                "final_order_from": "gateway (rules stage blend)" if res.blended_by_gateway else
                "served model scores, blended here with contract.blend (gateway applied no blend)",
                "pairs_per_second": round(sum(len(el.candidates) for el in to_score) / res.seconds, 1)}
        else:
            raise ValueError(f"unknown path {path!r}")
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
        from evaluation.seqrec import reference_metrics

        t1 = time.monotonic()
        report.info["gru4rec"] = reference_metrics(split, catalogue, upto)
        log(f"eval: GRU4Rec (all items) NDCG@10 {report.info['gru4rec']['ndcg@10']:.4f} "
            f"({time.monotonic() - t1:.0f}s)")
    if reports_dir is not None:
        from evaluation.report import write_report

        report.info["files"] = [str(p) for p in write_report(report, reports_dir)]
    return report


def _served_with_fallback(addr: str, lists: Sequence[EvalList], log) -> ServedResult:
    """Ask for the eval rule set; a gateway without a rules stage (or without that set) is
    asked with the default rule set and the blend is applied here, from its model scores."""
    import grpc

    try:
        return score_served(addr, lists, rule_set=EVAL_RULE_SET, log=log)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        log(f"eval: gateway has no {EVAL_RULE_SET!r} rule set ({exc.code().name}); blending locally")
    return score_served(addr, lists, rule_set="", log=log)
