"""``rerankd eval``: evaluate a model version (served path and in-process), write reports/."""

from __future__ import annotations

from pathlib import Path

from contract.blend import Blend
from contract.model_spec import Manifest
from export.write_repo import existing_versions, trained_versions
from server.settings import PROJECT_ROOT, Settings


def latest_version_dir(repo: Path, name: str) -> Path:
    versions = [v for v in existing_versions(repo, name) if (Path(repo) / name / str(v) / "model.onnx").is_file()]
    if not versions:
        raise FileNotFoundError(f"no version of {name} in {repo}: run `rerankd train` first")
    return Path(repo) / name / str(versions[-1])


def run(args, settings: Settings) -> int:
    """``rerankd eval``: the main protocol, or with ``--cold-start`` the protocol of
    ``evaluation.coldstart``."""
    # The parser imports this module for every command; the evaluation (a served stack's
    # client, the protocols) loads only when this one runs.
    from cli.train import source_from_args
    from evaluation.evaluate import run_eval
    from interactions.movielens import leave_one_out

    repo = Path(settings.triton.model_repository)
    name = settings.triton.model_name
    version_dir = repo / name / str(args.version) if args.version else latest_version_dir(repo, name)
    reports = Path(args.reports) if args.reports else PROJECT_ROOT / "reports"
    work = PROJECT_ROOT / "var" / "eval"
    work.mkdir(parents=True, exist_ok=True)
    # MovieLens by default (its own loader); another source's split and catalogue otherwise.
    split = items = None
    if args.source != "movielens":
        got = source_from_args(args, settings).load()
        split, items = leave_one_out(got.interactions), got.items
        print(f"==> data: {args.source}: {len(split.users)} users, {len(items)} items")
    if args.cold_start:
        from evaluation.coldstart import run_cold_eval

        path = "in-process" if args.path == "in-process" else "served"
        warm = Path(args.warm_dir) if args.warm_dir else _newest_warm_version(PROJECT_ROOT / "model_repository", name)
        rep = run_cold_eval(version_dir, warm, split_name=args.split, path=path, reports_dir=reports,
                            work_dir=work, split=split, items=items)
    else:
        paths = {"both": ("served", "in-process"), "served": ("served",), "in-process": ("in-process",)}[args.path]
        blend = None
        if args.retrieval_weight is not None:
            blend = Blend(model_weight=1.0 - args.retrieval_weight, retrieval_weight=args.retrieval_weight)
        rep = run_eval(version_dir, split_name=args.split, paths=paths, blend=blend, score_all=args.all_users,
                       users=args.users or 0, reports_dir=reports, work_dir=work, gru4rec=args.gru4rec,
                       split=split, items=items)
    for f in rep.info.get("files", []):
        print(f"==> wrote {f}")
    return 0


def _newest_warm_version(repo: Path, name: str) -> Path | None:
    """The newest trained version of ``repo`` that holds no item out (the warm reference)."""
    from evaluation.cold_lists import held_out_items

    for v in reversed(trained_versions(repo, name)):
        if not held_out_items(Manifest.read(repo / name / str(v) / "manifest.json")):
            return repo / name / str(v)
    return None


def add_arguments(p) -> None:
    from cli.train import add_source_arguments

    add_source_arguments(p)
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--version", help="model version to evaluate (default: the newest)")
    p.add_argument("--path", choices=["both", "served", "in-process"], default="both",
                   help="served (gateway + Triton), in-process (ONNX Runtime here), or both")
    p.add_argument("--retrieval-weight", type=float,
                   help="blend weight of the retrieval score (default: the manifest's, chosen on validation)")
    p.add_argument("--all-users", action="store_true",
                   help="also score users whose target is not among the candidates (same metrics, slower)")
    p.add_argument("--users", type=int, help="only the first N users (a quick look)")
    p.add_argument("--gru4rec", action="store_true",
                   help="add the reference row: GRU4Rec trained on the same split, ranking all items (~2 min)")
    p.add_argument("--cold-start", action="store_true",
                   help="the cold-start protocol (evaluation.coldstart) on a version trained with --cold-holdout")
    p.add_argument("--warm-dir", help="with --cold-start: the version folder trained on every item, whose "
                   "scores of the same lists are the warm reference (default: the newest such version of "
                   "model_repository/)")
    p.add_argument("--reports", help="output folder (default reports/)")
    p.add_argument("--model-repository")
