"""Validation ranking quality of each engine variant vs fp32 (the acceptance check of issue 6).

    python -m perf.engine_quality --hf-dir CKPT [--render '{"item_tokens": true, ...}'] [--users 150]
    python -m perf.engine_quality --model-version N

Protocol: the evaluation's validation lists (``evaluation.protocol.build_lists``: ItemKNN top-50 fit
on train, history = train), users whose validation target is among the candidates (only they
can move a metric), scored by each variant through the backend's own ``load_scorer``; reports
NDCG@10 / HR@10 over all users (misses count) and over the scored ones, plus per-list Spearman
and top-10 overlap with fp32. A variant is accepted when its NDCG@10 is within
``NDCG_TOLERANCE`` (absolute) of fp32's.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from export.engines import (
    agreement,
    build_engine_files,
    calibration_feeds,
    load_backend,
)
from perf.engines_bench import default_variants
from perf.stack import BACKEND_SRC, prepare_repo
from server.settings import PROJECT_ROOT

NDCG_TOLERANCE = 0.005  # absolute NDCG@10 (all users) vs fp32


def run(version_dir: Path, *, users: int, threads: int, engines: list[str], seed: int = 0, log=print) -> dict:
    from contract.model_spec import Manifest
    from contract.render import Renderer
    from contract.tokenize import PairTokenizer
    from evaluation.metrics import evaluate
    from evaluation.protocol import build_lists
    from interactions.movielens import leave_one_out, load_interactions, load_items
    from perf.workload import movielens_folder

    folder = movielens_folder()
    items = {it.item_id: it for it in load_items(folder)}
    split = leave_one_out(load_interactions(folder))
    lists, _ = build_lists(split, sorted(items), "valid", k=50)
    covered = [el for el in lists if el.covered]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(covered, min(users, len(covered))), key=lambda el: el.user)
    manifest = Manifest.read(version_dir / "manifest.json")
    tok = PairTokenizer.from_file(version_dir / "tokenizer.json", manifest.spec)
    renderer = Renderer.for_model(manifest, tok)
    n_hist = renderer.history_items(10)
    batches = []
    for el in chosen:
        user = renderer.user([items[i] for i in el.history[:n_hist] if i in items], "", max_items=10)
        batches.append(tok.encode(user, [renderer.item(items[c]) for c in el.candidates]).arrays)
    # int8 calibration on other users' lists (never the evaluated ones)
    others = [el for el in lists if el not in chosen][:16]
    calib = []
    for el in others:
        user = renderer.user([items[i] for i in el.history[:n_hist] if i in items], "", max_items=10)
        calib.append(tok.encode(user, [renderer.item(items[c]) for c in el.candidates[:32]]).arrays)
    work = version_dir.parent / "quality_version"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(version_dir, work)
    for e in engines:
        if e in ("onnxruntime_int8", "openvino_int8"):
            build_engine_files(e, work / "model.onnx", work, calibration_feeds(calib))
    backend = load_backend(BACKEND_SRC)
    targets = {el.user: split.valid[el.user] for el in lists if el.user in split.valid}
    ref_scores = None
    rows = []
    for v in [*default_variants(["onnxruntime"]), *default_variants([e for e in engines if e != "onnxruntime"])]:
        scorer = v.scorer(work, threads, backend)
        t0 = time.perf_counter()
        scores = [scorer.score(b) for b in batches]
        el_s = time.perf_counter() - t0
        rankings = {el.user: [el.candidates[i] for i in np.argsort(-s, kind="stable")] for el, s in zip(chosen, scores)}
        m_cov = evaluate(rankings, {u: targets[u] for u in rankings}, (10,))
        row = {"variant": v.name, "lists": len(chosen), "ndcg@10_scored_users": m_cov["ndcg@10"],
               "hr@10_scored_users": m_cov["hr@10"], "seconds": el_s}
        if ref_scores is None:
            ref_scores, ref_ndcg = scores, m_cov["ndcg@10"]
        a = agreement(ref_scores, scores)
        row.update(spearman_mean=a.spearman_mean, top10_overlap=a.top10_overlap_mean, max_abs_diff=a.max_abs_diff,
                   score_std=a.score_std, ndcg_delta=m_cov["ndcg@10"] - ref_ndcg)
        # over all users: the scored lists move NDCG; the uncovered ones are misses for every variant
        row["ndcg_delta_all_users"] = row["ndcg_delta"] * len(chosen) / max(len(targets), 1) * (len(covered) / len(chosen))
        row["accepted"] = abs(row["ndcg_delta_all_users"]) <= NDCG_TOLERANCE
        rows.append(row)
        log(f"    {v.name}: NDCG@10 (scored users) {m_cov['ndcg@10']:.4f} (delta {row['ndcg_delta']:+.4f}), "
            f"Spearman {a.spearman_mean:.4f}, top-10 {a.top10_overlap_mean:.3f}, {el_s:.0f}s")
    return {"version_dir": str(version_dir), "users_scored": len(chosen), "covered_users": len(covered),
            "all_users": len(targets), "tolerance_ndcg@10_all_users": NDCG_TOLERANCE, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-dir", type=Path)
    ap.add_argument("--model-version")
    ap.add_argument("--render", default="", help="render options (JSON) the checkpoint was trained with")
    ap.add_argument("--users", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="onnxruntime,onnxruntime_int8,openvino,openvino_int8")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf")
    args = ap.parse_args(argv)
    work = args.out / "work" / "quality"
    src = PROJECT_ROOT / "model_repository" / "reranker" / args.model_version if args.model_version else None
    vd = prepare_repo(work / "repo", engine="onnxruntime", hf_dir=args.hf_dir, version_dir=src,
                      render=json.loads(args.render) if args.render else None)
    res = run(vd, users=args.users, threads=args.threads, engines=args.engines.split(","))
    res["hf_dir"], res["model_version"] = str(args.hf_dir or ""), args.model_version or ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_validation.json").write_text(json.dumps(res, indent=2))
    from perf.common import write_csv

    write_csv(args.out / "engine_validation.csv", res["rows"])
    print(f"==> {args.out / 'engine_validation.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
