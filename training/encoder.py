"""Training's side of the renderer: (history, candidates) lists rendered and tokenized exactly
as serving does, with ID dropout (items read from text alone). A pairwise model reads a row
per pair (padded to the longest pair); a shared-prefix model reads a list as one row
(``contract.shared_prefix``: the history once, then every candidate)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from tokenizers import Tokenizer

from contract.items import Item
from contract.model_spec import PAIRWISE, SHARED_PREFIX, ModelSpec
from contract.render import Renderer, RenderOptions, vocabulary_lookup
from contract.shared_prefix import PADDING, PrefixTokenizer, join_rows
from contract.tokenize import PairTokenizer

# Training pads each batch only to its longest pair (buckets only matter for Triton).
_TRAIN_BUCKETS = tuple(range(8, 257, 8))


@dataclass(frozen=True)
class Encoded:
    """Model inputs for several lists, and where each candidate's score is read."""

    arrays: dict[str, np.ndarray]  # int64 [rows, L]
    pairs: int  # candidates, all lists together, in order
    # Shared prefix: (row, column) of each candidate's first token; None: a row per pair.
    first_token: np.ndarray | None = None
    pool: str = "first"  # shared prefix: how a candidate's score is read from its tokens

    @property
    def rows(self) -> int:
        return int(self.arrays["input_ids"].shape[0])


class TrainEncoder:
    """Renders and tokenizes lists exactly as serving does (``Renderer`` + the version's
    tokenizer for its ``scoring``), padded to the longest row instead of Triton's buckets
    (padding does not change scores). ``max_seq_len``: a pair's length (pairwise) or a row's
    (shared prefix; a list that does not fit is split into rows that each carry the history)."""

    def __init__(self, tokenizer, options: RenderOptions, items: dict[str, Item], max_seq_len: int,
                 id_dropout: float = 0.0, history_id_dropout: float = 0.0, scoring: str = PAIRWISE,
                 pool: str = "first"):
        tok = Tokenizer.from_str(tokenizer.to_str())
        buckets = tuple(b for b in _TRAIN_BUCKETS if b < max_seq_len) + (max_seq_len,)
        self.scoring = scoring
        if scoring == SHARED_PREFIX:
            self.prefix_tokenizer = PrefixTokenizer(tok, replace(ModelSpec.shared_prefix(pool=pool), seq_buckets=buckets))
        else:
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
                     text_only: Sequence[frozenset[str]] | None = None) -> Encoded:
        """[(history, candidates)] -> the model's inputs for all of them. With ``rng``
        (training), ID dropout applies; ``text_only`` names, per list, the items to read from
        text; otherwise every item keeps its token."""
        if text_only is None:
            text_only = [self.dropped(h, c, rng) if rng else frozenset() for h, c in lists]
        texts = [self.texts(h, c, t) for (h, c), t in zip(lists, text_only)]
        if self.scoring == SHARED_PREFIX:
            return self._shared(texts)
        batches = [self.pair_tokenizer.encode(*t) for t in texts]
        arrays = _stack([b.arrays for b in batches])
        return Encoded(trim_padding(arrays), len(arrays["input_ids"]))

    def _shared(self, texts: Sequence[tuple[str, list[str]]]) -> Encoded:
        batches = [self.prefix_tokenizer.encode(*t) for t in texts]
        arrays = join_rows([b.arrays for b in batches], self.prefix_tokenizer.pad_id)
        row0 = np.cumsum([0] + [len(b) for b in batches[:-1]])
        first = np.concatenate([b.first_token + np.array([r0, 0]) for b, r0 in zip(batches, row0)])
        return Encoded(trim_padding(arrays), len(first), first, self.prefix_tokenizer.spec.pool)


def _stack(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pair rows of several lists in one array per input, zero-padded to the widest."""
    L = max(p["input_ids"].shape[1] for p in parts)
    return {name: np.concatenate([np.pad(p[name], ((0, 0), (0, L - p[name].shape[1]))) for p in parts])
            for name in parts[0]}


def trim_padding(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop all-padding columns (padding never changes a score; it only costs time)."""
    if "attention_mask" in arrays:
        used = arrays["attention_mask"].sum(1)
    else:  # shared prefix: padding is where no candidate or prefix sits
        real = arrays["cand_index"] != PADDING
        used = np.where(real.any(1), real.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)
    L = max(1, int(used.max())) if used.size else 1
    return {k: v[:, :L] for k, v in arrays.items()}
