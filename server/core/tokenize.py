"""Pair tokenization with the model's own ``tokenizer.json``, padded to a sequence bucket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from server.core.model_spec import ModelSpec


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for a list of pairs, all padded to one bucket length."""

    arrays: dict[str, np.ndarray]  # name -> int64 [n, seq_len]
    seq_len: int

    def __len__(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.arrays.items()}


class PairTokenizer:
    """Encodes (user text, item text) pairs exactly as the model was trained on them."""

    def __init__(self, tokenizer: Tokenizer, spec: ModelSpec):
        self.spec = spec
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=spec.max_seq_len, strategy="longest_first")
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0

    @classmethod
    def from_file(cls, path: Path, spec: ModelSpec) -> "PairTokenizer":
        return cls(Tokenizer.from_file(str(path)), spec)

    def encode(self, user_text: str, item_texts: Sequence[str]) -> EncodedBatch:
        encs = self._tok.encode_batch([(user_text, t) for t in item_texts])
        seq_len = self.spec.bucket_for(max((len(e.ids) for e in encs), default=1))
        n = len(encs)
        ids = np.full((n, seq_len), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, seq_len), dtype=np.int64)
        types = np.zeros((n, seq_len), dtype=np.int64)
        for row, e in enumerate(encs):
            k = len(e.ids)
            ids[row, :k] = e.ids
            mask[row, :k] = 1
            types[row, :k] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return EncodedBatch({k: arrays[k] for k in self.spec.input_names}, seq_len)
