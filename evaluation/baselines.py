"""Content baselines of the cold-start protocol (``evaluation.coldstart``): they rank a
user's candidates from item text alone, with no model trained on interactions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from contract.items import Item
from contract.render import render_item
from export.base_model import default_base_model
from interactions.movielens import id_sort_key

BASELINE_HISTORY = 10


class ContentBaseline:
    """Cosine between the packaged all-MiniLM-L6-v2 sentence embedding (mean pooling,
    normalized, as sentence-transformers does) of a candidate's text and the mean embedding
    of the user's recent history texts. Texts: the default (plain-text) renderer's."""

    def __init__(self, items: Mapping[str, Item], batch: int = 128):
        # torch and transformers: the export extra; this module imports without them.
        import torch
        from transformers import AutoModel, AutoTokenizer

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
