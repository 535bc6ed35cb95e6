"""What the sections measure with: the served model version (exported into a scratch model
repository, or copied from model_repository/), MovieLens in a scratch store, the workload."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from perf.sections.context import Served, Suite
from server.settings import PROJECT_ROOT

SCRATCH = ("variants", "variants_version", "model_repository-fp32")  # ~300 MB of model copies


def fresh_work_dir(ctx: Suite) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    if ctx.work.exists():
        shutil.rmtree(ctx.work)
    ctx.work.mkdir()


def remove_scratch(ctx: Suite) -> None:
    for scratch in SCRATCH:
        shutil.rmtree(ctx.work / scratch, ignore_errors=True)


def serve_version(ctx: Suite, *, engine: str, hf_dir: Path, model_version: str | None, render: str) -> Served:
    """The suite's model repository (work/model_repository) with one version carrying
    ``engine``'s files: ``model_version`` of model_repository/reranker, else ``hf_dir`` exported."""
    from export.engines import ENGINE_PARAMETERS
    from export.write_repo import DEFAULT_PARAMETERS
    from perf.stack import prepare_repo

    src_version = PROJECT_ROOT / "model_repository" / "reranker" / model_version if model_version else None
    vd = prepare_repo(ctx.work / "model_repository", engine=engine, hf_dir=hf_dir, version_dir=src_version,
                      render=json.loads(render) if render else None, log=ctx.log)
    return Served(vd, {**DEFAULT_PARAMETERS, **ENGINE_PARAMETERS[engine], "engine": engine})


@dataclass
class Workload:
    db: Path  # the store the gateway reads (MovieLens-100K)
    prepared: list  # perf.workload.Prepared: 24 requests of 100 candidates, as the gateway tokenizes them
    stats: dict  # -> results "workload"


def load_workload(ctx: Suite, version_dir: Path) -> Workload:
    from perf import workload as W

    db = W.load_store(ctx.work / "store.db", log=ctx.log)
    texts = W.GatewayTexts(db, version_dir)
    prepared = texts.prepare(W.make_requests(24, 100, seed=0))
    stats = W.length_stats(prepared)
    ctx.log(f"    workload: {stats}")
    return Workload(db, prepared, stats)


def gateway_messages(ctx: Suite, prepared: list) -> tuple[list, dict[int, list]]:
    """The prepared requests as RerankRequests, and per candidate count of the budget
    ``max(cand_n, 4)`` requests of that many candidates."""
    from perf import workload as W
    from perf.loadgen import build_messages

    b = ctx.budget
    msgs100 = build_messages([p.request for p in prepared])
    cand_msgs = {n: build_messages(W.make_requests(max(b.cand_n, 4), n, seed=n)) for n in b.cands}
    return msgs100, cand_msgs


def max_batch_size(version_dir: Path) -> int:
    from contract.model_spec import Manifest

    return Manifest.read(version_dir / "manifest.json").spec.max_batch_size
