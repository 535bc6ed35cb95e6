"""The shared-prefix layout: one sequence scores many candidates against one user prefix.

A row is ``[CLS] history [SEP] cand_1 cand_2 ... cand_m`` (padding after). The model reads
three int64 tensors of one shape [rows, L] and builds its attention mask from them itself:

- ``input_ids``: the tokens;
- ``cand_index``: 0 for the user prefix, ``k`` (1..m) for the tokens of the row's k-th
  candidate, -1 for padding. Prefix tokens attend to the prefix; a candidate's tokens attend
  to the prefix and to their own tokens only, so a candidate's score does not depend on the
  other candidates of the row (the isolation property);
- ``positions``: the prefix counts 0..P-1; every candidate starts again at P.

A candidate's score is read at its first token. Requests whose candidates do not fit one
row of ``max_len`` tokens are split into several rows, each carrying the prefix.
Training, evaluation and the gateway all build their inputs here.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PREFIX = 0
PADDING = -1
POOLS = ("first", "mean")
INPUT_NAMES = ("input_ids", "cand_index", "positions")


@dataclass(frozen=True)
class PrefixBatch:
    """Model inputs for one request, and where each candidate's score is read."""

    input_ids: np.ndarray  # int64 [rows, seq_len]
    cand_index: np.ndarray  # int64 [rows, seq_len]
    positions: np.ndarray  # int64 [rows, seq_len]
    # (row, column) of each candidate's first token, in the request's candidate order.
    first_token: np.ndarray  # int64 [n_candidates, 2]
    # How a candidate's score is read from its tokens' scores (``POOLS``).
    pool: str = "first"

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "cand_index": self.cand_index, "positions": self.positions}

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.arrays.items()}

    def scores(self, token_scores: np.ndarray) -> np.ndarray:
        """Per-candidate scores from the model's per-token output [rows, seq_len] (a row may
        come back trimmed of trailing padding: only candidates' columns are read)."""
        out = np.asarray(token_scores, dtype=np.float32).reshape(len(self), -1)
        rows, cols, cand = reading_tokens(self.cand_index, self.first_token, self.pool)
        if self.pool == "first":
            return out[rows, cols]
        n = len(self.first_token)
        sums = np.bincount(cand, weights=out[rows, cols].astype(np.float64), minlength=n)
        return (sums / np.bincount(cand, minlength=n)).astype(np.float32)


def reading_tokens(cand_index: np.ndarray, first_token: np.ndarray, pool: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens a candidate's score is read from, as (row, column, candidate number) arrays:
    its first token (``first``), or all its tokens, averaged (``mean``)."""
    n = len(first_token)
    if pool == "first":
        return first_token[:, 0], first_token[:, 1], np.arange(n)
    if pool != "mean":
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    k = int(cand_index.max()) + 1 if cand_index.size else 1
    table = np.full(cand_index.shape[0] * k, -1, dtype=np.int64)
    table[first_token[:, 0] * k + cand_index[first_token[:, 0], first_token[:, 1]]] = np.arange(n)
    rows, cols = np.nonzero(cand_index > PREFIX)
    return rows, cols, table[rows * k + cand_index[rows, cols]]


def pack(prefix_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]], *, max_len: int,
         buckets: Sequence[int] = (), pad_id: int = 0, max_candidate_len: int = 0,
         pool: str = "first") -> PrefixBatch:
    """Lay out one request: candidates in order, as many per row as fit in ``max_len``.

    ``prefix_ids``: the user side with its special tokens (e.g. ``[CLS] ... [SEP]``), cut to
    half of ``max_len`` at most (its last token, the separator, is kept). ``candidate_ids``:
    each candidate's tokens without special tokens, cut to ``max_candidate_len`` (default: what
    is left of a row after the prefix). Rows are padded to the smallest of ``buckets`` that
    fits the longest row (no buckets: to the longest row).
    """
    prefix = list(prefix_ids)
    cap = max(2, max_len // 2)
    if len(prefix) > cap:
        prefix = prefix[:cap - 1] + prefix[-1:]
    room = max_len - len(prefix)
    limit = min(max_candidate_len, room) if max_candidate_len > 0 else room
    if limit < 1:
        raise ValueError(f"max_len {max_len} leaves no room for a candidate after a {len(prefix)}-token prefix")
    cands = [list(c[:limit]) if len(c) else [pad_id] for c in candidate_ids]

    rows: list[list[int]] = []  # per row, the candidate numbers it holds
    used = room + 1
    for i, c in enumerate(cands):
        if used + len(c) > room:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += len(c)
    if not rows:
        rows.append([])
    p = len(prefix)
    longest = max(p + sum(len(cands[i]) for i in r) for r in rows)
    seq_len = longest
    if buckets:
        k = bisect.bisect_left(buckets, longest)
        seq_len = buckets[k] if k < len(buckets) else longest
    n_rows = len(rows)
    ids = np.full((n_rows, seq_len), pad_id, dtype=np.int64)
    cand = np.full((n_rows, seq_len), PADDING, dtype=np.int64)
    pos = np.zeros((n_rows, seq_len), dtype=np.int64)
    first = np.zeros((len(cands), 2), dtype=np.int64)
    prefix_arr = np.asarray(prefix, dtype=np.int64)
    for r, members in enumerate(rows):
        ids[r, :p] = prefix_arr
        cand[r, :p] = PREFIX
        pos[r, :p] = np.arange(p)
        col = p
        for k, i in enumerate(members, 1):
            c = cands[i]
            n = len(c)
            ids[r, col:col + n] = c
            cand[r, col:col + n] = k
            pos[r, col:col + n] = np.arange(p, p + n)
            first[i] = (r, col)
            col += n
    return PrefixBatch(ids, cand, pos, first, pool)


def join_rows(parts: Sequence[dict[str, np.ndarray]], pad_id: int = 0) -> dict[str, np.ndarray]:
    """The rows of several requests in one batch, padded to the widest with padding that
    attends only to padding (so no real token's score changes): how training stacks lists
    and how the Triton backend joins callers."""
    pad = {"input_ids": pad_id, "cand_index": PADDING, "positions": 0}
    width = max(p["input_ids"].shape[1] for p in parts)
    return {k: np.concatenate([np.pad(p[k], ((0, 0), (0, width - p[k].shape[1])), constant_values=pad[k])
                               for p in parts]) for k in INPUT_NAMES}


def attention_allowed(cand_index: np.ndarray) -> np.ndarray:
    """Who may attend to whom, [rows, L, L] bool (the rule the model's graph builds; numpy
    for tests and documentation): the prefix sees the prefix, a candidate sees the prefix
    and itself, padding sees padding."""
    ci = cand_index[:, :, None]
    cj = cand_index[:, None, :]
    return ((cj == PREFIX) & (ci >= PREFIX)) | (ci == cj)


class PrefixTokenizer:
    """Texts -> ``PrefixBatch`` with a model's own ``tokenizer.json``: the user text with the
    tokenizer's special tokens (``[CLS] ... [SEP]``), each candidate's text without. Item
    texts repeat across requests, so their token ids are cached (bounded, LRU)."""

    def __init__(self, tokenizer, spec, *, cache_size: int = 200_000):
        # Layout and padding are ``pack``'s: the tokenizer's own settings (a tokenizer.json
        # may pad every text to 128) must not apply. Pass a tokenizer this object may own.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.spec = spec
        self.max_len = spec.max_seq_len
        self.buckets = tuple(spec.seq_buckets)
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_file(cls, path, spec) -> "PrefixTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), spec)

    def _item_ids(self, texts: Sequence[str]) -> list[list[int]]:
        cache = self._cache
        out: list[list[int] | None] = [cache.get(t) for t in texts]
        missing = [t for t, ids in zip(texts, out) if ids is None]
        if missing:
            new = dict(zip(missing, (e.ids for e in self._tok.encode_batch(missing, add_special_tokens=False))))
            cache.update(new)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
            out = [ids if ids is not None else new[t] for t, ids in zip(texts, out)]
        return out  # type: ignore[return-value]

    def encode(self, user_text: str, item_texts: Sequence[str]) -> PrefixBatch:
        prefix = self._tok.encode(user_text).ids
        return pack(prefix, self._item_ids(list(item_texts)), max_len=self.max_len, buckets=self.buckets,
                    pad_id=self.pad_id, pool=self.spec.pool)
