"""Cold start: the held-out items, and the cold-start evaluation protocol.

Protocol (``PROTOCOL``; also in the README and every report):

- A seeded random share of the catalogue (10%: ``rerankd train --cold-holdout 0.1``) is held
  out of training entirely: never a target, never a negative, never an ID token, and no
  interaction of it reaches the retriever or the distillation teacher. Where such an item
  occurs in a history it is rendered as text, as every item created after training is.
- Split and histories as in the main protocol (leave-one-out; test target = last item).
- Cold lists: every user whose target is cold ranks it among 49 other cold items (seeded
  random, none from the user's history). NDCG@10, HR@10.
- Mixed lists: for every user, the retriever's top-45 (ItemKNN fit on warm interactions: it
  never retrieves a cold item) plus 5 cold items (the target when it is cold, the rest seeded
  random, none from the history), which carry the list's lowest retrieval score.
  NDCG@10 over the users whose target is in the list; the AUC of a cold target against the
  list's other cold items; the share of top-10 slots the cold items take. The same lists
  scored by a model trained with those items warm (their tokens, the production model) give
  the share the same items take when warm.
- Orders compared on the same lists: the model (served: gateway + Triton, the store loaded
  up to the split), a random order (seeded), a content baseline (cosine between the packaged
  all-MiniLM-L6-v2 sentence embedding of the candidate's text and the mean embedding of the
  user's 10 most recent history items' texts), genre overlap with those 10 items. Baseline
  ties are broken at random (seeded), never by item id (low MovieLens ids are the popular
  films).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.items import Item
from evaluation.metrics import ndcg
from interactions.movielens import Interaction, id_sort_key

PROTOCOL = __doc__.split("every report):", 1)[1].strip()
LIST_SIZE = 50
COLD_IN_MIXED = 5
TOP_K = 10
BASELINE_HISTORY = 10


def cold_items(catalogue: Sequence[str], share: float, seed: int = 0) -> frozenset[str]:
    """A seeded random ``share`` of ``catalogue`` (rounded; none for share 0)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"cold holdout share must be in [0, 1), not {share}")
    ids = sorted(set(catalogue), key=id_sort_key)
    n = int(round(share * len(ids)))
    return frozenset(random.Random(f"cold:{seed}").sample(ids, n)) if n else frozenset()


def warm_interactions(interactions: Iterable[Interaction], cold: Iterable[str]) -> list[Interaction]:
    """Interactions with warm items only (what the retriever and teacher may learn from)."""
    cold = set(cold)
    return [x for x in interactions if x.item_id not in cold] if cold else list(interactions)


# -- lists ---------------------------------------------------------------------------------------
@dataclass
class ColdList:
    """One request of the protocol: candidates (retriever order), their retrieval scores,
    which of them are cold, and the user's target."""

    kind: str                 # "cold" or "mixed"
    user: str
    history: list[str]
    candidates: list[str]
    retrieval: list[float]
    cold: frozenset[str]
    target: str

    @property
    def covered(self) -> bool:
        return self.target in self.candidates


def _other_cold(rng: random.Random, pool: Sequence[str], exclude: set[str], n: int) -> list[str]:
    choices = [i for i in pool if i not in exclude]
    return rng.sample(choices, min(n, len(choices)))


def build_cold_lists(split, cold: frozenset[str], knn, upto: str = "test", seed: int = 0) -> list[ColdList]:
    """The protocol's cold lists and mixed lists for ``upto`` ('valid' or 'test')."""
    targets = split.test if upto == "test" else split.valid
    pool = sorted(cold, key=id_sort_key)
    out: list[ColdList] = []
    for u in split.users:
        target = targets.get(u)
        if target is None:
            continue
        history = split.history(u, upto)
        seen = set(history) | {target}
        rng = random.Random(f"{seed}:{upto}:{u}")
        if target in cold:
            cands = [target] + _other_cold(rng, pool, seen, LIST_SIZE - 1)
            rng.shuffle(cands)
            out.append(ColdList("cold", u, history, cands, [0.0] * len(cands), frozenset(cands), target))
        got = knn.retrieve(history, LIST_SIZE - COLD_IN_MIXED)
        inserted = ([target] if target in cold else [])
        inserted += _other_cold(rng, pool, seen, COLD_IN_MIXED - len(inserted))
        floor = min((s for _, s in got), default=0.0)
        out.append(ColdList("mixed", u, history, [i for i, _ in got] + inserted,
                            [s for _, s in got] + [floor] * len(inserted), frozenset(inserted), target))
    return out


# -- metrics -------------------------------------------------------------------------------------
def auc(target_score: float, others: Sequence[float]) -> float:
    """P(target scored above a random other item); ties count half."""
    if not others:
        return float("nan")
    return float(np.mean([1.0 if target_score > o else 0.5 if target_score == o else 0.0 for o in others]))


def top_share(order: Sequence[str], marked: Iterable[str], k: int = TOP_K) -> float:
    """Share of the first ``k`` slots taken by ``marked`` items."""
    marked = set(marked)
    top = order[:k]
    return sum(1 for i in top if i in marked) / max(1, min(k, len(order)))


def order_by(candidates: Sequence[str], scores: Sequence[float], tie_seed: str | None = None) -> list[str]:
    """Score descending. Ties: by item id (as the gateway orders them: ``model_order``), or at
    random with ``tie_seed`` (baselines, whose ties are many)."""
    if tie_seed is None:
        from evaluation.evaluate import model_order

        return model_order(candidates, scores)
    rng = random.Random(tie_seed)
    key = {c: rng.random() for c in candidates}
    return [c for _, _, c in sorted(zip((-float(s) for s in scores), (key[c] for c in candidates), candidates))]


def list_metrics(lists: Sequence[ColdList], orders: Mapping[str, Sequence[str]],
                 scores: Mapping[str, Sequence[float]] | None = None) -> dict:
    """NDCG@10 / HR@10 over the lists whose target is among the candidates, the cold items'
    top-10 share, and (with scores) the AUC of cold targets against the other cold items."""
    covered = [el for el in lists if el.covered]
    nd = [ndcg(orders[el.user], el.target, TOP_K) for el in covered]
    hr = [1.0 if el.target in orders[el.user][:TOP_K] else 0.0 for el in covered]
    out = {"lists": len(lists), "covered": len(covered),
           "ndcg@10": float(np.mean(nd)) if nd else float("nan"),
           "hr@10": float(np.mean(hr)) if hr else float("nan"),
           "cold_top10_share": float(np.mean([top_share(orders[el.user], el.cold) for el in lists]))
           if lists else float("nan")}
    if scores is not None:
        aucs = []
        for el in lists:
            if el.target in el.cold and len(el.cold) > 1:
                s = dict(zip(el.candidates, scores[el.user]))
                aucs.append(auc(s[el.target], [s[c] for c in el.cold if c != el.target]))
        out["cold_target_auc"] = float(np.mean(aucs)) if aucs else float("nan")
        out["auc_lists"] = len(aucs)
    return out


def expected_random_ndcg(n: int, k: int = TOP_K) -> float:
    """NDCG@k of a target placed uniformly at random among ``n`` candidates."""
    return sum(1.0 / math.log2(r + 1) for r in range(1, min(k, n) + 1)) / n


# -- baselines -----------------------------------------------------------------------------------
class ContentBaseline:
    """Cosine between the packaged all-MiniLM-L6-v2 sentence embedding (mean pooling,
    normalized, as sentence-transformers does) of a candidate's text and the mean embedding
    of the user's recent history texts. Texts: the default (plain-text) renderer's."""

    def __init__(self, items: Mapping[str, Item], batch: int = 128):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from contract.render import render_item
        from export.base_model import default_base_model

        path = default_base_model()
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).eval()
        ids = sorted(items, key=id_sort_key)
        texts = [render_item(items[i]) for i in ids]
        vecs = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch):
                enc = tok(texts[s:s + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                v = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                vecs.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        self.index = {i: n for n, i in enumerate(ids)}
        self.emb = np.concatenate(vecs) if vecs else np.zeros((0, 384), np.float32)

    def scores(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        h = [self.index[i] for i in history if i in self.index][:BASELINE_HISTORY]
        if not h:
            return np.zeros(len(candidates), np.float32)
        u = self.emb[h].mean(0)
        u /= np.linalg.norm(u) or 1.0
        return self.emb[[self.index[c] for c in candidates]] @ u


def genre_scores(history: Sequence[str], candidates: Sequence[str], items: Mapping[str, Item]) -> np.ndarray:
    """Cosine between the genre counts of the user's 10 most recent items and the
    candidate's genre set."""
    def genres(i: str) -> list[str]:
        it = items.get(i)
        g = it.attributes.get("genres", "") if it is not None else ""
        return [x for x in g.split("|") if x]

    counts: dict[str, float] = {}
    for h in history[:BASELINE_HISTORY]:
        for g in genres(h):
            counts[g] = counts.get(g, 0.0) + 1.0
    norm = math.sqrt(sum(v * v for v in counts.values())) or 1.0
    out = []
    for c in candidates:
        gs = genres(c)
        out.append(sum(counts.get(g, 0.0) for g in gs) / (norm * math.sqrt(len(gs))) if gs else 0.0)
    return np.asarray(out, np.float32)


# -- the evaluation ------------------------------------------------------------------------------
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


def held_out_items(manifest) -> frozenset[str]:
    """The items a version was trained without (``rerankd train --cold-holdout``)."""
    return frozenset((manifest.training.get("cold_start") or {}).get("held_out_items") or ())


def _eval_lists(lists: Sequence[ColdList]):
    from evaluation.evaluate import EvalList

    return [EvalList(el.user, el.history, el.candidates, el.retrieval, el.target) for el in lists]


@dataclass
class _Scored:
    """One version's answers for one kind of list, by user."""

    scores: dict
    final: dict          # the gateway's final orders (its blend), when it blended
    text_scored: dict    # the candidates the gateway said it read from text alone
    seconds: float


def _score(version_dir: Path, by_kind: Mapping[str, Sequence[ColdList]], path: str, *, data_dir: Path, split,
           upto: str, items: Mapping[str, Item], work: Path, log) -> dict[str, _Scored]:
    """Every kind of list scored by one version: one served stack (or in-process scorer) for all."""
    from evaluation.evaluate import (
        VersionScorer,
        score_in_process,
        score_served,
        served_stack,
    )

    out = {}
    if path == "in-process":
        scorer = VersionScorer(version_dir)
        for kind, kl in by_kind.items():
            t0 = time.monotonic()
            out[kind] = _Scored(score_in_process(scorer, _eval_lists(kl), items, log=log), {}, {},
                                time.monotonic() - t0)
        return out
    with served_stack(version_dir, data_dir, split, upto, work, log=log) as addr:
        for kind, kl in by_kind.items():
            res = score_served(addr, _eval_lists(kl), log=log)
            out[kind] = _Scored(res.model_scores, res.final if res.blended_by_gateway else {},
                                res.text_scored, res.seconds)
    return out


def run_cold_eval(version_dir: Path, warm_dir: Path | None, *, split_name: str = "test",
                  path: str = "served", data_dir: Path | None = None, reports_dir: Path | None = None,
                  work_dir: Path | None = None, seed: int = 0, split=None, items: Sequence[Item] | None = None,
                  log=print) -> ColdReport:
    """The cold-start protocol for ``version_dir`` (trained with a holdout); ``warm_dir`` is a
    version trained on every item (the same lists scored with the items warm), or None.
    ``split`` / ``items`` default to MovieLens-100K's (tests pass a slice)."""
    import shutil
    import tempfile

    from contract.model_spec import Manifest
    from evaluation.retriever import ItemKNNRetriever
    from interactions.movielens import (
        fetch_movielens,
        leave_one_out,
        load_interactions,
        load_items,
    )

    version_dir = Path(version_dir)
    manifest = Manifest.read(version_dir / "manifest.json")
    cold = held_out_items(manifest)
    if not cold:
        raise ValueError(f"{version_dir} was trained without held-out items: train one with "
                         "`rerankd train --cold-holdout 0.1` for the cold-start protocol")
    if warm_dir is not None and held_out_items(Manifest.read(Path(warm_dir) / "manifest.json")) & cold:
        raise ValueError(f"{warm_dir} holds out some of the same items: it cannot be the warm reference")
    upto = {"valid": "valid", "validation": "valid", "test": "test"}[split_name]
    data_dir = data_dir or fetch_movielens()
    split = split if split is not None else leave_one_out(load_interactions(data_dir))
    items = {i.item_id: i for i in (items if items is not None else load_items(data_dir))}
    t0 = time.monotonic()
    knn = ItemKNNRetriever().fit(warm_interactions(split.interactions(upto), cold),
                                 items=[i for i in items if i not in cold])
    lists = build_cold_lists(split, cold, knn, upto, seed)
    by_kind = {k: kl for k in ("cold", "mixed") if (kl := [el for el in lists if el.kind == k])}
    log(f"coldstart: {len(cold)} held-out items; {len(by_kind.get('cold', []))} cold lists, "
        f"{len(by_kind.get('mixed', []))} mixed lists ({time.monotonic() - t0:.0f}s)")
    report = ColdReport(split_name, version_dir.name, Path(warm_dir).name if warm_dir else "")
    report.info = {"protocol": PROTOCOL, "model": str(version_dir), "warm_model": str(warm_dir or ""),
                   "held_out_items": len(cold), "catalogue": len(items), "path": path, "seed": seed,
                   "expected_random_ndcg@10": expected_random_ndcg(LIST_SIZE),
                   "training": {k: manifest.training.get(k) for k in ("steps", "pairs", "train_seconds", "config")}}
    runs = [("model", version_dir)] + ([("warm_reference", Path(warm_dir))] if warm_dir else [])
    work = Path(tempfile.mkdtemp(prefix="coldstart-", dir=work_dir))
    try:
        answers = {name: _score(vdir, by_kind, path, data_dir=data_dir, split=split, upto=upto, items=items,
                                work=work / name, log=log) for name, vdir in runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    content = ContentBaseline(items)
    for kind, kl in by_kind.items():
        orders: dict[str, dict[str, list[str]]] = {}
        scores: dict[str, dict[str, Sequence[float]]] = {}
        for name, _ in runs:
            got = answers[name][kind]
            scores[name] = got.scores
            orders[name] = {el.user: order_by(el.candidates, got.scores[el.user]) for el in kl}
            if got.final and kind == "mixed":
                orders["final" if name == "model" else "warm_reference_final"] = got.final
            if got.text_scored:
                report.info[f"{kind}_{name}_text_scored"] = _text_check(kl, got.text_scored, name == "model")
            report.info[f"{kind}_{name}_seconds"] = round(got.seconds, 1)
        if kind == "mixed":
            orders["retriever"] = {el.user: el.candidates for el in kl}
        orders["random"] = {el.user: order_by(el.candidates, [0.0] * len(el.candidates), f"{seed}:{el.user}")
                            for el in kl}
        scores["content"] = {el.user: content.scores(el.history, el.candidates) for el in kl}
        scores["genre"] = {el.user: genre_scores(el.history, el.candidates, items) for el in kl}
        for name in ("content", "genre"):
            orders[name] = {el.user: order_by(el.candidates, scores[name][el.user], f"{seed}:{el.user}")
                            for el in kl}
        report.metrics[kind] = {o: list_metrics(kl, r, scores.get(o)) for o, r in orders.items()}
        log(f"coldstart: {kind} lists: " + ", ".join(
            f"{o} NDCG@10 {m['ndcg@10']:.4f}" for o, m in report.metrics[kind].items()))
    if reports_dir is not None:
        report.info["files"] = [str(p) for p in write_cold_report(report, Path(reports_dir))]
    return report


def _text_check(lists: Sequence[ColdList], text_scored: Mapping[str, set[str]], cold_model: bool) -> dict:
    """How many cold / warm candidates the gateway said it scored from text alone."""
    cold_n = cold_text = warm_text = 0
    for el in lists:
        got = text_scored.get(el.user, set())
        cold_n += len(el.cold)
        cold_text += len(el.cold & got)
        warm_text += len(got - el.cold)
    return {"cold_candidates": cold_n, "cold_scored_from_text": cold_text,
            "warm_candidates_scored_from_text": warm_text, "expect_cold_as_text": cold_model}


# -- report --------------------------------------------------------------------------------------
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


# -- calibration ---------------------------------------------------------------------------------
OFFSET_GRID = tuple(round(x * 0.05, 2) for x in range(-100, 101))


def choose_text_offset(valid_lists: Sequence[tuple], scores: Sequence[np.ndarray], data, enc, scorer,
                       seed: int = 0, max_lists: int = 300) -> dict:
    """The text offset (``contract.calibration``) of a freshly trained model, on validation.

    Mixed validation lists as in the protocol (the retriever's top-45 + 5 random warm items
    from outside the history) are scored twice: those 5 items read from their tokens, and
    read from text alone (as the same items would be if they were new). The offset is the one
    that gives the text-read items the top-10 share (model order) they take as tokens; ties:
    the smallest offset. ``valid_lists``/``scores``: the validation lists already scored."""
    from contract.calibration import apply_text_offset

    if not enc.renderer.options.item_tokens or not valid_lists:  # every item is read from text
        return {"offset": 0.0, "share_token": float("nan"), "share_text": float("nan"),
                "share_text_calibrated": float("nan"), "lists": 0, "reason": "no item tokens"}
    rng = random.Random(f"offset:{seed}")
    pool = sorted(data.warm_items, key=id_sort_key)
    picked = list(zip(valid_lists, scores))[:max_lists]
    rows = []
    for (_, history, cands, _), s in picked:
        head = list(cands[:LIST_SIZE - COLD_IN_MIXED])
        extra = _other_cold(rng, pool, set(history) | set(head), COLD_IN_MIXED)
        rows.append((history, head, np.asarray(s[:len(head)], np.float64), extra))
    as_token = _score_extra(rows, enc, scorer, text=False)
    as_text = _score_extra(rows, enc, scorer, text=True)

    def share(extra_scores: Sequence[np.ndarray], offset: float) -> float:
        out = []
        for (_, head, hs, extra), es in zip(rows, extra_scores):
            es = apply_text_offset(list(map(float, es)), [True] * len(es), offset)
            order = order_by(head + extra, list(hs) + es)
            out.append(top_share(order, extra))
        return float(np.mean(out))

    target = share(as_token, 0.0)
    fits = [(abs(share(as_text, d) - target), abs(d), d) for d in OFFSET_GRID]
    best = min(fits)[2]
    return {"offset": best, "share_token": target, "share_text": share(as_text, 0.0),
            "share_text_calibrated": share(as_text, best), "lists": len(rows),
            "chosen_on": "validation mixed lists: retriever top-45 + 5 random warm items, "
                         "top-10 share read as text matched to the share read as tokens"}


def _score_extra(rows, enc, scorer, text: bool, rows_per_call: int = 25) -> list[np.ndarray]:
    """Scores of each row's extra items, read from their tokens or from text alone."""
    out: list[np.ndarray] = []
    for s0 in range(0, len(rows), rows_per_call):
        chunk = rows[s0:s0 + rows_per_call]
        arrays = enc.encode_lists([(history, extra) for history, _, _, extra in chunk],
                                  text_only=[frozenset(extra) if text else frozenset() for *_, extra in chunk])
        scores = np.asarray(scorer(arrays), np.float64)
        ends = np.cumsum([len(extra) for *_, extra in chunk])
        out += np.split(scores, ends[:-1])
    return out
