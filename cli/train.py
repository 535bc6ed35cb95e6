"""``rerankd train``: fine-tune the reranker on a data source (MovieLens-100K, the feature
store's own logs, or files), export the next version, and compare it with the serving one."""

from __future__ import annotations

import json
from pathlib import Path

from export.write_repo import trained_versions
from interactions.sources import SOURCES, InteractionSource, open_source
from server.errors import InvalidArgument
from server.settings import PROJECT_ROOT, Settings, parse_weights


def source_from_args(args, settings: Settings) -> InteractionSource:
    """The data source named by ``--source`` (shared by ``train`` and ``eval``); the store's URL
    defaults to the settings' ``store.url`` and event types are weighed by
    ``model.event_weights``, as the gateway weighs them."""
    return open_source(args.source, store_url=settings.store.url, interactions=args.interactions,
                       items=args.items, event_weights=parse_weights(settings.model.event_weights))


def add_source_arguments(p) -> None:
    p.add_argument("--source", choices=SOURCES, default="movielens",
                   help="what to train / evaluate on: MovieLens-100K (default), the feature store's recorded "
                   "events and items (--store), or files (--interactions, --items)")
    p.add_argument("--store", help="with --source store: sqlite:///path or redis://... (default: store.url)")
    p.add_argument("--interactions", help="with --source files: CSV or Parquet with columns user, item, "
                   "timestamp[, type, value]")
    p.add_argument("--items", help="with --source files: CSV or Parquet with columns item_id, title[, text, "
                   "attributes...]")


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
    source = source_from_args(args, settings)
    serving = _serving_version(repo, name, args.compare_with)
    data = TrainingData.load(source, cold_holdout=cfg.cold_holdout, cold_seed=cfg.cold_seed)
    print(f"==> data: {source.name}: {len(data.split.users)} users, {len(data.items)} items, "
          f"{len(data.split.train)} train interactions")
    if source.name != "movielens" and not args.config_json:
        cfg.item_attributes = catalogue_attributes(data.items.values())
    if data.cold:
        print(f"==> cold-start protocol: {len(data.cold)} items held out of training (seed {cfg.cold_seed})")
    work = Path(args.work_dir) if args.work_dir else PROJECT_ROOT / "var" / "train"
    print(f"==> training the reranker (budget {cfg.budget_min:g} min, seed {cfg.seed}); work dir {work}")
    res = train(cfg, data, repo=repo, work_dir=work, resume=args.resume, export=not args.no_export)
    if res.version is not None:
        print(f"==> exported {name} version {res.version}: validation NDCG@10 model alone "
              f"{res.valid['model']['ndcg@10']:.4f}, blended {res.valid['blend']['metrics']['ndcg@10']:.4f} "
              f"(retriever {res.valid['retriever']['ndcg@10']:.4f}); {res.total_s / 60:.1f} min")
        if serving is not None and not args.no_compare:
            reports = Path(args.reports) if args.reports else PROJECT_ROOT / "reports"
            compare(Path(repo) / name / str(res.version), serving, data, reports, args.compare_users or 0)
        elif serving is None:
            print("==> no earlier trained version to compare with")
    return 0


def _serving_version(repo: Path, name: str, compare_with: int | None) -> Path | None:
    """The version the new one is compared with: ``--compare-with N``, else the newest trained
    version already in the repository (before this run adds one)."""
    if compare_with is not None:
        folder = Path(repo) / name / str(compare_with)
        if not (folder / "manifest.json").is_file():
            raise InvalidArgument(f"no version {compare_with} of {name} in {repo}", field="--compare-with")
        return folder
    trained = trained_versions(repo, name)
    return Path(repo) / name / str(trained[-1]) if trained else None


def compare(new_dir: Path, serving: Path, data, reports: Path | None, users: int = 0) -> dict:
    """Score the new and the serving version on the same lists of ``data``'s split, print the
    figures side by side and write them (``<new>/compare.json``, ``reports/compare-*``)."""
    from evaluation.compare import (
        compare_versions,
        comparison_markdown,
        write_comparison,
    )
    from training.data import describe_data

    print(f"==> comparing version {new_dir.name} (new) with version {serving.name} (serving) on the same "
          "split of this data, both scored in-process")
    labels = {f"v{new_dir.name} (new)": new_dir, f"v{serving.name} (serving)": serving}
    result = compare_versions(labels, data.split, list(data.items.values()), users=users)
    print(comparison_markdown(result))
    for p in write_comparison(result, new_dir, serving, reports, describe_data(data)):
        print(f"==> wrote {p}")
    return result


def catalogue_attributes(items, most: int = 4) -> tuple[str, ...]:
    """The attributes a catalogue's item side renders: the usual ones it has (year, genres,
    category, brand) first, then its other attributes by how many items carry them."""
    from collections import Counter

    from contract.render import RENDERED_ATTRIBUTES

    counts = Counter(a for i in items for a, v in i.attributes.items() if str(v).strip())
    usual = [a for a in RENDERED_ATTRIBUTES if a in counts]
    others = [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if a not in usual]
    return tuple((usual + others)[:most])


def add_arguments(p) -> None:
    add_source_arguments(p)
    p.add_argument("--compare-with", type=int, help="after training, compare with this version (default: the "
                   "newest trained version already in the model repository)")
    p.add_argument("--compare-users", type=int, help="compare on the first N users only (default: all)")
    p.add_argument("--no-compare", action="store_true", help="skip the comparison with the serving version")
    p.add_argument("--reports", help="where the comparison report goes (default reports/)")
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
