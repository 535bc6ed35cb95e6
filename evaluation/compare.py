"""A newly trained version next to the serving one, on the same split of the same (latest)
data: the retriever's candidate lists of the protocol (``evaluation.protocol.build_lists``),
each version scored in this process exactly as it would be served (``evaluation.scoring``),
ordered by the model alone and by the version's own blend (its manifest's). The figures a
user reads before deciding to canary the new version."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from contract.items import Item
from contract.model_spec import Manifest
from evaluation.evaluate import metrics_of, orders_from_scores
from evaluation.protocol import UPTO, build_lists
from evaluation.scoring import VersionScorer, score_in_process

BASELINES = ("retriever", "random", "pop")
ROWS = ("model", "final")


def compare_versions(versions: Mapping[str, Path], split, items: Sequence[Item], *,
                     splits: Sequence[str] = ("valid", "test"), users: int = 0, seed: int = 0,
                     log=print) -> dict:
    """``{split: {"users", "scored_lists", "baselines": {order: metrics},
    "versions": {label: {"dir", "model": metrics, "final": metrics}}}}`` for each version of
    ``versions`` (label -> version folder), all on the same lists."""
    catalogue = [i.item_id for i in items]
    item_map = {i.item_id: i for i in items}
    scorers = {label: VersionScorer(Path(d)) for label, d in versions.items()}
    out: dict = {}
    for split_name in splits:
        t0 = time.monotonic()
        lists, pop_rank = build_lists(split, catalogue, UPTO[split_name],
                                      users=split.users[:users] if users else None)
        targets = {el.user: el.target for el in lists if el.target is not None}
        to_score = [el for el in lists if el.covered]
        row: dict = {"users": len(lists), "scored_lists": len(to_score), "versions": {}}
        for label, scorer in scorers.items():
            scores = score_in_process(scorer, to_score, item_map, log=lambda *_: None)
            metrics = metrics_of(orders_from_scores(lists, scores, scorer.manifest.blend, pop_rank, seed), targets)
            row["baselines"] = {o: metrics[o] for o in BASELINES}
            row["versions"][label] = {"dir": str(versions[label]), **{o: metrics[o] for o in ROWS}}
        out[split_name] = row
        log(f"compare: {split_name}: {len(to_score)} lists scored by {len(scorers)} versions "
            f"({time.monotonic() - t0:.0f}s)")
    return out


def comparison_markdown(result: Mapping, metrics: Sequence[str] = ("ndcg@10", "hr@10")) -> str:
    """One table per split: each version's model-alone and final (blended) order, then the
    baselines of the same lists."""
    lines = []
    for split_name, row in result.items():
        lines += [f"### {split_name} split: {row['users']} users, {row['scored_lists']} lists with the target "
                  "among the candidates", "",
                  "| order | " + " | ".join(m.upper() for m in metrics) + " |",
                  "| --- |" + " --- |" * len(metrics)]
        for label, v in row["versions"].items():
            for o in ROWS:
                name = "model alone" if o == "model" else "final order (its blend)"
                lines.append(f"| {label}: {name} | " + " | ".join(f"{v[o][m]:.4f}" for m in metrics) + " |")
        for o in BASELINES:
            lines.append(f"| {o} | " + " | ".join(f"{row['baselines'][o][m]:.4f}" for m in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


def write_comparison(result: Mapping, new_dir: Path, old_dir: Path, reports_dir: Path | None,
                     data: Mapping | None = None) -> list[Path]:
    """``<new version>/compare.json`` and, with ``reports_dir``,
    ``reports/compare-v<new>-v<old>.{json,md}``; returns the paths written."""
    new_dir, old_dir = Path(new_dir), Path(old_dir)
    doc = {"new": str(new_dir), "serving": str(old_dir), "data": dict(data or {}),
           "serving_trained_on": Manifest.read(old_dir / "manifest.json").training.get("data", {}),
           "protocol": "the protocol's retriever lists on the new data's split, each version scored "
                       "in-process as served (evaluation.scoring), final = the version's own blend",
           "splits": dict(result)}
    paths = [new_dir / "compare.json"]
    paths[0].write_text(json.dumps(doc, indent=1))
    if reports_dir is not None:
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        stem = reports_dir / f"compare-v{new_dir.name}-v{old_dir.name}"
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        stem.with_suffix(".md").write_text(
            f"# Version {new_dir.name} (new) vs {old_dir.name} (serving)\n\n{doc['protocol']}.\n\n"
            + comparison_markdown(result))
        paths += [stem.with_suffix(".json"), stem.with_suffix(".md")]
    return paths
