"""Training's side of the renderer: (history, candidates) lists rendered and tokenized exactly
as serving does, padded to the longest pair, with ID dropout (items read from text alone)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from contract.items import Item
from contract.model_spec import ModelSpec
from contract.render import Renderer, RenderOptions, vocabulary_lookup
from contract.tokenize import PairTokenizer

# Training pads each batch only to its longest pair (buckets only matter for Triton).
_TRAIN_BUCKETS = tuple(range(8, 257, 8))


class TrainEncoder:
    """Renders and tokenizes lists exactly as serving does (``Renderer`` + ``PairTokenizer``),
    padded to the longest pair instead of Triton's buckets (padding does not change scores)."""

    def __init__(self, tokenizer, options: RenderOptions, items: dict[str, Item], max_seq_len: int,
                 id_dropout: float = 0.0, history_id_dropout: float = 0.0):
        tok = Tokenizer.from_str(tokenizer.to_str())
        buckets = tuple(b for b in _TRAIN_BUCKETS if b < max_seq_len) + (max_seq_len,)
        self.pair_tokenizer = PairTokenizer(tok, ModelSpec(seq_buckets=buckets))
        self.renderer = Renderer(options, vocabulary_lookup(tok))
        self.items = items
        self.id_dropout = id_dropout
        self.history_id_dropout = history_id_dropout

    def texts(self, history: Sequence[str], candidates: Sequence[str],
              text_only: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
        """The served renderer's texts; items in ``text_only`` are written as cold items read."""
        r = self.renderer
        user = r.user([self.items[i] for i in history if i in self.items], "", max_items=len(history) or 1,
                      text_only=text_only)
        return user, [r.item(self.items[c], c not in text_only) for c in candidates]

    def dropped(self, history: Sequence[str], candidates: Sequence[str], rng: random.Random) -> frozenset[str]:
        """ID dropout: the items of one list to render without their token this time."""
        return frozenset([c for c in candidates if rng.random() < self.id_dropout]
                         + [h for h in history if rng.random() < self.history_id_dropout])

    def encode_lists(self, lists: Sequence[tuple[Sequence[str], Sequence[str]]],
                     rng: random.Random | None = None,
                     text_only: Sequence[frozenset[str]] | None = None) -> dict[str, np.ndarray]:
        """[(history, candidates)] -> arrays [sum(len(candidates)), L] padded to one length.
        With ``rng`` (training), ID dropout applies; ``text_only`` names, per list, the items
        to read from text; otherwise every item keeps its token."""
        if text_only is None:
            text_only = [self.dropped(h, c, rng) if rng else frozenset() for h, c in lists]
        batches = [self.pair_tokenizer.encode(*self.texts(h, c, t)) for (h, c), t in zip(lists, text_only)]
        L = max(b.seq_len for b in batches)
        out = {}
        for name in batches[0].arrays:
            parts = []
            for b in batches:
                a = b.arrays[name]
                if a.shape[1] < L:
                    a = np.pad(a, ((0, 0), (0, L - a.shape[1])))
                parts.append(a)
            out[name] = np.concatenate(parts)
        return trim_padding(out)


def trim_padding(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop all-padding columns (padding never changes a score; it only costs time)."""
    mask = arrays["attention_mask"]
    L = max(1, int(mask.sum(1).max())) if mask.size else 1
    return {k: v[:, :L] for k, v in arrays.items()}
