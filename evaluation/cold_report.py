"""The cold-start evaluation's report (``evaluation.coldstart``): JSON (everything),
Markdown (tables and the target ratios), PNG (the headline metrics by order)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ORDER_LABELS = {
    "model": "model (cold items as text)",
    "warm_reference": "same lists, model trained with these items warm (tokens)",
    "final": "final served order (model blend with retrieval)",
    "warm_reference_final": "final served order, items warm",
    "retriever": "retriever order (cold items last)",
    "random": "random order",
    "content": "content baseline (MiniLM cosine to history)",
    "genre": "genre overlap with history",
}


@dataclass
class ColdReport:
    split: str
    version: str
    warm_version: str
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)  # kind -> order -> metrics
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"split": self.split, "version": self.version, "warm_version": self.warm_version,
                "metrics": self.metrics, "info": self.info}


def markdown(rep: ColdReport) -> str:
    d = rep.to_dict()
    info = d["info"]
    lines = [f"# rerankd cold-start evaluation: model version {d['version']} "
             f"(warm reference: version {d['warm_version'] or 'none'}), {d['split']} split", "",
             "## Protocol", "", info.get("protocol", ""), "",
             f"{info.get('held_out_items')} of {info.get('catalogue')} items held out; scoring path: "
             f"{info.get('path')}; a random order's expected NDCG@10 on 50 candidates: "
             f"{info.get('expected_random_ndcg@10', 0):.4f}.", ""]
    cols = ("ndcg@10", "hr@10", "cold_target_auc", "cold_top10_share", "covered", "auc_lists")
    for kind, title in (("cold", "Cold lists: the cold target among 49 other cold items"),
                        ("mixed", "Mixed lists: retriever top-45 + 5 cold items")):
        orders = d["metrics"].get(kind)
        if not orders:
            continue
        lines += [f"## {title}", "", "| order | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for o, m in orders.items():
            lines.append(f"| {ORDER_LABELS.get(o, o)} | " + " | ".join(
                "" if m.get(c) is None else f"{m[c]:.4f}" if isinstance(m[c], float) else str(m[c])
                for c in cols) + " |")
        lines.append("")
        lines += _ratios(kind, orders)
    checks = {k: v for k, v in info.items() if k.endswith("_text_scored")}
    if checks:
        lines += ["## What the gateway said it read (`scored_from`)", ""]
        lines += [f"- {k}: {json.dumps(v)}" for k, v in checks.items()] + [""]
    lines += ["## Model", "", f"`{json.dumps(info.get('training', {}))}`", ""]
    return "\n".join(lines) + "\n"


def _ratios(kind: str, orders: Mapping[str, Mapping]) -> list[str]:
    m = orders.get("model", {})
    out = []
    if kind == "cold" and m:
        r, c = orders["random"]["ndcg@10"], orders["content"]["ndcg@10"]
        out.append(f"Cold-list NDCG@10: model {m['ndcg@10']:.4f} = {m['ndcg@10'] / r:.2f}x random, "
                   f"{m['ndcg@10'] / c:.2f}x the content baseline (targets: >= 2x, >= 1.2x).")
    if kind == "mixed" and m and "warm_reference" in orders:
        w = orders["warm_reference"]["cold_top10_share"]
        s = m["cold_top10_share"]
        out.append(f"Cold items' top-10 share: {s:.4f} as text vs {w:.4f} warm = {s / w:.2f}x "
                   f"(target within 0.7x-1.3x); cold target AUC {m.get('cold_target_auc', float('nan')):.4f} "
                   f"(target >= 0.65).")
    return out + [""] if out else []


def plot(rep: ColdReport, path: Path) -> Path:
    # matplotlib: the export extra; without it the report has no PNG (write_cold_report).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = rep.to_dict()
    panels = [("cold", "ndcg@10", "cold lists: NDCG@10"), ("mixed", "ndcg@10", "mixed lists: NDCG@10"),
              ("mixed", "cold_target_auc", "mixed lists: cold target AUC"),
              ("mixed", "cold_top10_share", "mixed lists: cold items' top-10 share")]
    panels = [p for p in panels if p[0] in d["metrics"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (kind, metric, title) in zip(axes[0], panels):
        orders = {o: m[metric] for o, m in d["metrics"][kind].items()
                  if m.get(metric) is not None and math.isfinite(m[metric])}
        ax.barh(list(orders), list(orders.values()),
                color=["tab:red" if o == "model" else "tab:orange" if o.startswith("warm") else "tab:gray"
                       for o in orders])
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"cold start: model v{d['version']} (warm reference v{d['warm_version'] or '-'}), {d['split']} split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_cold_report(rep: ColdReport, reports_dir: Path) -> list[Path]:
    """``reports_dir/coldstart-<split>-v<version>.{json,md,png}``."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / f"coldstart-{rep.split}-v{rep.version}"
    js = stem.with_suffix(".json")
    js.write_text(json.dumps(rep.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    md = stem.with_suffix(".md")
    md.write_text(markdown(rep))
    out = [js, md]
    try:
        out.append(plot(rep, stem.with_suffix(".png")))
    except ImportError:
        pass
    return out
