"""``rerankd train``: fine-tune the reranker on MovieLens-100K and export the next version."""

from __future__ import annotations

import json
from pathlib import Path

from export.write_repo import trained_versions
from interactions.movielens import fetch_movielens
from server.settings import PROJECT_ROOT, Settings


def run(args, settings: Settings) -> int:
    """``rerankd train``."""
    # The parser imports this module for every command; training (torch, the export extra)
    # loads only when this one runs.
    from training.config import TrainConfig
    from training.data import TrainingData
    from training.train import train

    repo = settings.triton.model_repository
    name = settings.triton.model_name
    if args.if_missing:
        trained = trained_versions(repo, name)
        if trained:
            print(f"==> model repository {repo} already has a trained {name} version "
                  f"({trained[-1]}); not training")
            return 0
    cfg = TrainConfig()
    if args.config_json:
        cfg = TrainConfig.from_dict(json.loads(Path(args.config_json).read_text()))
    for key in ("seed", "budget_min", "max_steps", "epochs", "lr", "negatives", "layers",
                "history_items", "lists_per_step", "valid_users", "distill", "engine",
                "id_dropout", "history_id_dropout", "cold_holdout", "cold_seed", "scoring", "pool"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    if args.base:
        cfg.base_model = str(args.base)
    if args.text_only:
        cfg.item_tokens = False
        cfg.history_titles = True
    folder = fetch_movielens()
    data = TrainingData.load(folder, cold_holdout=cfg.cold_holdout, cold_seed=cfg.cold_seed)
    if data.cold:
        print(f"==> cold-start protocol: {len(data.cold)} items held out of training (seed {cfg.cold_seed})")
    work = Path(args.work_dir) if args.work_dir else PROJECT_ROOT / "var" / "train"
    print(f"==> training the reranker (budget {cfg.budget_min:g} min, seed {cfg.seed}); work dir {work}")
    res = train(cfg, data, repo=repo, work_dir=work, resume=args.resume, export=not args.no_export)
    if res.version is not None:
        print(f"==> exported {name} version {res.version}: validation NDCG@10 model alone "
              f"{res.valid['model']['ndcg@10']:.4f}, blended {res.valid['blend']['metrics']['ndcg@10']:.4f} "
              f"(retriever {res.valid['retriever']['ndcg@10']:.4f}); {res.total_s / 60:.1f} min")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--budget-min", type=float, help="wall-clock budget for the whole run (default 4)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--negatives", type=int)
    p.add_argument("--lists-per-step", type=int)
    p.add_argument("--layers", type=int, help="keep the first N transformer layers")
    p.add_argument("--history-items", type=int)
    p.add_argument("--engine", help="served engine: onnxruntime, onnxruntime_int8, openvino, "
                   "openvino_int8 (default; falls back to onnxruntime if it disagrees with fp32)")
    p.add_argument("--distill", type=float, help="weight of the transition-count teacher's listwise "
                   "distillation loss (default 3; 0: next-item label only)")
    p.add_argument("--id-dropout", type=float, help="share of candidate items rendered without their "
                   "ID token in training, as cold items read (default 0.2)")
    p.add_argument("--history-id-dropout", type=float, help="the same on the history side (default 0.05)")
    p.add_argument("--cold-holdout", type=float, help="hold this share of items out of training "
                   "entirely (the cold-start protocol of `rerankd eval --cold-start`; default 0)")
    p.add_argument("--cold-seed", type=int, help="seed of the held-out items (default 0)")
    p.add_argument("--scoring", choices=["pairwise", "shared_prefix"],
                   help="how the model reads a list: a row per pair, or one row per list with the history "
                   "once (default shared_prefix)")
    p.add_argument("--pool", choices=["first", "mean"],
                   help="shared prefix: a candidate's score at its first token or the mean over its tokens")
    p.add_argument("--valid-users", type=int, help="validate on the first N users (0: all)")
    p.add_argument("--text-only", action="store_true", help="no item-ID tokens (titles only)")
    p.add_argument("--base", help="HF model folder to start from (default: packaged MiniLM-L6)")
    p.add_argument("--config-json", help="a TrainConfig as JSON (flags override it)")
    p.add_argument("--work-dir", help="checkpoints and the fine-tuned folder (default var/train)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--if-missing", action="store_true", help="do nothing if a model version exists")
    p.add_argument("--model-repository")
