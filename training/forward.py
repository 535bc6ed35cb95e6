"""The model's score of every candidate of encoded lists, in either layout: a row per pair
(``logits[:, 0]``), or a shared-prefix row per list (``export.shared_prefix``: the score at
each candidate's first token). Training's loss and validation both go through here.

This module is torch code: it needs the export extra."""

from __future__ import annotations

import numpy as np
import torch

from contract.shared_prefix import INPUT_NAMES, reading_tokens
from export.shared_prefix import SharedPrefixScorer
from training.encoder import Encoded, trim_padding


def forward_by_length(model, arrays: dict[str, np.ndarray], groups: int = 3) -> torch.Tensor:
    """The model's scores [n] for padded pair ``arrays``, run as a few forward passes over rows
    grouped by length, each trimmed to its longest row: with ID dropout a batch mixes short
    token pairs with long text pairs, and one pass would pad every row to the longest."""
    lengths = arrays["attention_mask"].sum(1)
    order = np.argsort(lengths, kind="stable")
    parts = [chunk for chunk in np.array_split(order, min(groups, len(order))) if len(chunk)]
    out = [model(**{k: torch.from_numpy(v) for k, v in trim_padding({k: v[chunk] for k, v in arrays.items()}).items()}
                 ).logits[:, 0] for chunk in parts]
    scores = torch.cat(out)
    inverse = torch.from_numpy(np.argsort(np.concatenate(parts), kind="stable"))
    return scores[inverse]


def candidate_scores(model, enc: Encoded, rows_per_pass: int = 0) -> torch.Tensor:
    """Scores [enc.pairs] in list order. ``rows_per_pass`` (shared prefix; 0: all rows in one
    pass) bounds the memory of inference over many lists."""
    if enc.first_token is None:
        return forward_by_length(model, enc.arrays)
    scorer = SharedPrefixScorer(model)
    step = rows_per_pass or enc.rows
    out = [scorer(*(torch.from_numpy(enc.arrays[k][s:s + step]) for k in INPUT_NAMES))
           for s in range(0, enc.rows, step)]
    tokens = torch.cat(out) if len(out) > 1 else out[0]
    rows, cols, cand = (torch.from_numpy(a) for a in reading_tokens(
        enc.arrays["cand_index"], enc.first_token, enc.pool))
    if enc.pool == "first":
        return tokens[rows, cols]
    picked = tokens[rows, cols]
    sums = torch.zeros(enc.pairs, dtype=picked.dtype).index_add(0, cand, picked)
    counts = torch.zeros(enc.pairs, dtype=picked.dtype).index_add(0, cand, torch.ones_like(picked))
    return sums / counts
