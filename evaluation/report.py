"""Evaluation reports: JSON (everything), Markdown (tables), PNG (metrics by cut-off)."""

from __future__ import annotations

import json
from pathlib import Path

KS = (5, 10, 20)
ORDER_LABELS = {
    "pop": "Pop (its own top-50)",
    "retriever": "retriever order (ItemKNN top-50)",
    "random": "random order of the candidates",
    "model": "model alone",
    "final": "final order (model + retrieval blend)",
    "teacher": "reference: transition counts (the distillation teacher)",
}


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def markdown(rep) -> str:
    d = rep.to_dict() if hasattr(rep, "to_dict") else rep
    info = d["info"]
    lines = [f"# rerankd evaluation: model version {d['version']}, {d['split']} split", ""]
    lines += ["## Protocol", "", info.get("protocol", ""), ""]
    blend = info.get("blend", {})
    lines += [f"Final order: `{blend.get('formula', '')}` per request (chosen on validation), "
              f"run by {blend.get('run_by', 'server.rules')}.", ""]
    lines += [f"Users: {info.get('users')}; target among the candidates (coverage): "
              f"{info.get('coverage', 0):.3f}; lists scored: {info.get('scored_lists')}"
              + ("" if info.get("score_all") else " (only lists whose target is among the candidates "
                 "can change a metric; the others count as misses for every order)"), ""]
    cols = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg", "mrr")] + ["ndcg@10_covered"]
    for path, orders in d["metrics"].items():
        lines += [f"## {path}", ""]
        extra = info.get(path, {})
        if extra:
            lines += ["; ".join(f"{k}: {v}" for k, v in extra.items()), ""]
        lines += ["| order | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for o, m in orders.items():
            lines.append(f"| {ORDER_LABELS.get(o, o)} | " + " | ".join(_fmt(m[c]) for c in cols) + " |")
        r, f, mo, ra, po = (orders[o]["ndcg@10"] for o in ("retriever", "final", "model", "random", "pop"))
        lines += ["", f"NDCG@10: final {f:.4f} / retriever {r:.4f} = {_ratio(f, r)}; final vs Pop: {f:.4f} vs "
                      f"{po:.4f}; model alone {mo:.4f} / random {ra:.4f} = {_ratio(mo, ra)}", ""]
    if "gru4rec" in info:
        g = info["gru4rec"]
        final = next(iter(d["metrics"].values()))["final"]["ndcg@10"]
        lines += ["## Reference: a sequential recommender ranking all items", "",
                  f"GRU4Rec ({g['epochs']} epochs, {g['train_seconds']} s, trained on the same split, every "
                  f"item ranked, history masked): NDCG@10 {g['ndcg@10']:.4f}, HR@10 {g['hr@10']:.4f}. "
                  f"Final served order / GRU4Rec: {_ratio(final, g['ndcg@10'])}.", ""]
    if "agreement" in info:
        a = info["agreement"]
        lines += ["## Served vs in-process", "",
                  f"{a['users']} lists: max |model score difference| {a['max_abs_model_score_diff']:.2e}; "
                  f"identical final orders {a['identical_final_orders']}/{a['users']}; largest metric "
                  f"difference {a['max_metric_diff']:.2e}", ""]
    tr = info.get("manifest_training") or {}
    if tr:
        cfg = tr.get("config", {})
        lines += ["## Model", "",
                  f"- base: {tr.get('base_model', '')}",
                  f"- objective: {tr.get('objective', '')}",
                  f"- training: {tr.get('steps')} steps, {tr.get('pairs')} pairs in {tr.get('train_seconds')} s "
                  f"({tr.get('pairs_per_second')} pairs/s), stopped by {tr.get('stopped_by')}, "
                  f"budget {cfg.get('budget_min')} min",
                  f"- render: {json.dumps(info.get('render', {}))}",
                  f"- config: `{json.dumps(cfg)}`", ""]
    return "\n".join(lines) + "\n"


def plot(rep, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = rep.to_dict() if hasattr(rep, "to_dict") else rep
    src = "served" if "served" in d["metrics"] else next(iter(d["metrics"]))
    orders = d["metrics"][src]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, metric in zip(axes, ("ndcg", "hr", "mrr")):
        for o, m in orders.items():
            ax.plot(KS, [m[f"{metric}@{k}"] for k in KS], marker="o", label=ORDER_LABELS.get(o, o),
                    linewidth=2.5 if o == "final" else 1.5)
        ax.set_title(f"{metric.upper()}@k ({src})")
        ax.set_xticks(KS)
        ax.set_xlabel("cut-off k")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"model v{d['version']}, {d['split']} split: reranked vs retriever")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rep, reports_dir: Path) -> list[Path]:
    """``reports_dir/eval-<split>-v<version>.{json,md,png}``; returns the paths."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    d = rep.to_dict()
    stem = reports_dir / f"eval-{d['split']}-v{d['version']}"
    js = stem.with_suffix(".json")
    js.write_text(json.dumps(d, indent=2, sort_keys=True, default=str) + "\n")
    md = stem.with_suffix(".md")
    md.write_text(markdown(rep))
    out = [js, md]
    try:
        out.append(plot(rep, stem.with_suffix(".png")))
    except ImportError:  # matplotlib is in the export extra; the numbers are in JSON/Markdown
        pass
    return out
