"""Pair tokenization with the model's own ``tokenizer.json``, padded to a sequence bucket.

Every candidate of a request shares the user text, and item texts rarely change, so each
distinct text is encoded once (item ids cached) and pairs are assembled from the pieces
with the tokenizer's own special-token template and its ``longest_first`` truncation.
The result is identical to ``tokenizer.encode(user, item)``; construction checks that on
probe pairs and falls back to plain encoding if a tokenizer does not fit the scheme.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from contract.model_spec import ModelSpec

log = logging.getLogger(__name__)

_I64 = np.dtype(np.int64).itemsize  # bytes per cached token id


def load_tokenizer(path: Path, spec: ModelSpec):
    """The tokenizer a version with ``spec`` reads requests with: ``PairTokenizer`` (a row
    per pair) or ``contract.shared_prefix.PrefixTokenizer`` (one sequence per request)."""
    from contract.model_spec import SHARED_PREFIX
    from contract.shared_prefix import PrefixTokenizer

    kind = PrefixTokenizer if spec.scoring == SHARED_PREFIX else PairTokenizer
    return kind.from_file(path, spec)


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for a list of pairs, all padded to one bucket length."""

    arrays: dict[str, np.ndarray]  # name -> int64 [n, seq_len]
    seq_len: int

    def __len__(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.arrays.items()}

    def scores(self, output: np.ndarray) -> np.ndarray:
        """Per-pair scores from the model's output for these rows ([n, 1] or [n])."""
        return np.asarray(output, dtype=np.float32).reshape(-1)


def truncate_pair(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths kept by HF tokenizers' ``longest_first`` strategy for a pair."""
    if n1 + n2 <= budget:
        return n1, n2
    if min(n1, n2) <= budget // 2:
        return (n1, budget - n1) if n1 <= n2 else (budget - n2, n2)
    half = budget // 2
    # The odd token goes to the longer side (to the second one on a tie).
    return (budget - half, half) if n1 > n2 else (half, budget - half)


def truncate_pairs(n1: int, n2: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """``truncate_pair`` for one first side against many second sides (vectorized)."""
    n2 = np.asarray(n2, dtype=np.int64)
    n1v = np.full_like(n2, n1)
    half = budget // 2
    fits = n1v + n2 <= budget
    short = np.minimum(n1v, n2) <= half
    first_shorter = n1v <= n2
    a = np.select([fits, short & first_shorter, short], [n1v, n1v, budget - n2],
                  np.where(n1v > n2, budget - half, half))
    b = np.select([fits, short & first_shorter, short], [n2, budget - n1v, n2],
                  np.where(n1v > n2, half, budget - half))
    return a, b


@dataclass(frozen=True)
class _Template:
    """Special tokens around a pair: prefix A middle B suffix, with segment ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    type_a: int
    type_b: int

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _derive_template(tok: Tokenizer) -> _Template | None:
    probe_a, probe_b = tok.encode("a", add_special_tokens=False).ids, tok.encode("b", add_special_tokens=False).ids
    if len(probe_a) != 1 or len(probe_b) != 1:
        return None
    enc = tok.encode("a", "b")
    ids, types = enc.ids, enc.type_ids
    if ids.count(probe_a[0]) != 1 or ids.count(probe_b[0]) != 1:
        return None
    i, j = ids.index(probe_a[0]), ids.index(probe_b[0])
    if not i < j:
        return None
    return _Template(tuple(ids[:i]), tuple(ids[i + 1:j]), tuple(ids[j + 1:]),
                     tuple(types[:i]), tuple(types[i + 1:j]), tuple(types[j + 1:]), types[i], types[j])


@dataclass(frozen=True)
class _JoinLayout:
    """Pairs that fit whole, assembled by joining bytes: each row of ``input_ids`` is
    prefix + user + middle + item + suffix + padding, so the whole matrix is one
    ``b"".join`` of cached pieces (no per-token work, a few numpy calls per request). Only for
    templates whose segment ids are one value up to the item and another from it on (BERT's
    0/1; 0/0 for models without segments); others take the general path."""

    prefix: bytes  # the template's special tokens, int64 bytes
    middle: bytes
    suffix: bytes
    pad: bytes  # pad ids, as long as the longest row
    type_first: int
    type_second: int

    @classmethod
    def of(cls, tpl: _Template | None, pad_id: int, max_len: int) -> "_JoinLayout | None":
        if tpl is None:
            return None
        first = {*tpl.prefix_types, tpl.type_a, *tpl.middle_types}
        second = {tpl.type_b, *tpl.suffix_types}
        if len(first) != 1 or len(second) != 1:
            return None
        as_bytes = lambda ids: np.asarray(ids, dtype=np.int64).tobytes()  # noqa: E731
        return cls(as_bytes(tpl.prefix), as_bytes(tpl.middle), as_bytes(tpl.suffix),
                   np.full(max_len, pad_id, dtype=np.int64).tobytes(), first.pop(), second.pop())

    def assemble(self, user: bytes, items: list[bytes], item_lens: np.ndarray, bucket_for) -> dict[str, np.ndarray]:
        head = self.prefix + user + self.middle
        n_head = len(head) // _I64  # tokens before the item
        fixed = len(head) + len(self.suffix)
        n = len(items)
        seq_len = bucket_for(fixed // _I64 + int(item_lens.max()))
        row, pad = seq_len * _I64, self.pad
        parts: list[bytes] = []
        for it in items:
            parts += (head, it, self.suffix, pad[:row - fixed - len(it)])
        ids = np.frombuffer(bytearray().join(parts), dtype=np.int64).reshape(n, seq_len)  # writable
        lens = (fixed // _I64 + item_lens)[:, None]
        cols = np.arange(seq_len)
        attended = cols < lens
        if self.type_first == 0 and self.type_second == 1:  # BERT
            types = (attended & (cols >= n_head)).astype(np.int64)
        else:
            types = np.where(cols < n_head, self.type_first, np.where(attended, self.type_second, 0))
        return {"input_ids": ids, "attention_mask": attended.astype(np.int64), "token_type_ids": types}


class PairTokenizer:
    """Encodes (user text, item text) pairs exactly as the model was trained on them."""

    def __init__(self, tokenizer: Tokenizer, spec: ModelSpec, *, cache_size: int = 200_000):
        self.spec = spec
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=spec.max_seq_len, strategy="longest_first")
        # Pieces are encoded whole: longest_first needs each side's untruncated length.
        self._pieces = Tokenizer.from_str(tokenizer.to_str())
        self._pieces.no_truncation()
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # text -> its ids, int64 bytes
        self._cache_size = cache_size
        self.hits = self.misses = 0
        self._template = _derive_template(tokenizer)
        self._join = _JoinLayout.of(self._template, self._pad_id, max(max(spec.seq_buckets), spec.max_seq_len))
        if self._template is not None and not self._self_check():
            log.warning("tokenizer template not reproducible: falling back to per-pair encoding")
            self._template = None

    @classmethod
    def from_file(cls, path: Path, spec: ModelSpec) -> "PairTokenizer":
        return cls(Tokenizer.from_file(str(path)), spec)

    # -- pieces ----------------------------------------------------------------------
    def _ids(self, texts: Sequence[str]) -> list[bytes]:
        """Ids without special tokens (native int64 bytes), through the bounded cache."""
        out: list[bytes | None] = []
        missing: dict[str, None] = {}
        get, touch = self._cache.get, self._cache.move_to_end  # bound once: runs per candidate
        for t in texts:
            ids = get(t)
            if ids is None:
                missing[t] = None
            else:
                touch(t)
            out.append(ids)
        if missing:
            self.misses += len(missing)
            # encode_batch fans out to the tokenizers thread pool: worth it for many texts,
            # but waking the pool costs ~0.5 ms on a busy 2-core box, so a request's one
            # new text (the user side) is encoded on this thread.
            texts_ = list(missing)
            encs = (self._pieces.encode_batch(texts_, add_special_tokens=False) if len(texts_) > 8
                    else [self._pieces.encode(t, add_special_tokens=False) for t in texts_])
            for t, enc in zip(texts_, encs):
                # Flat int64 bytes: rows are assembled by joining them (see ``_JoinLayout``),
                # and bytes are not tracked by the garbage collector, so a large cache does
                # not lengthen full collections (a p99 cost in a long-running gateway).
                self._cache[t] = np.asarray(enc.ids, dtype=np.int64).tobytes()
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self.hits += len(texts) - len(missing)
        return [ids if ids is not None else self._cache[t] for ids, t in zip(out, texts)]

    def _rows(self, user_text: str, item_texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(ids, type_ids) per pair, unpadded: the fallback for tokenizers without a template."""
        encs = self._tok.encode_batch([(user_text, t) for t in item_texts])
        return [(e.ids, e.type_ids) for e in encs]

    def _self_check(self) -> bool:
        samples = [("short user", "item"), ("word " * 200, "item text"), ("u", "long item " * 200),
                   ("alpha beta " * 90, "gamma delta " * 90), ("", "only item"), ("only user", "")]
        batches = [(u, [i]) for u, i in samples]
        batches.append(("a user of middling length " * 3, ["x", "long item " * 200, "", "y z " * 20]))
        for u, items in batches:
            got = self._assemble(u, items)
            for r, ref in enumerate(self._tok.encode_batch([(u, i) for i in items])):
                k = len(ref.ids)
                if (got["input_ids"][r, :k].tolist() != ref.ids or got["attention_mask"][r].sum() != k
                        or got["token_type_ids"][r, :k].tolist() != ref.type_ids):
                    return False
        return True

    def _assemble(self, user_text: str, item_texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Assemble padded arrays from cached pieces with numpy (no per-pair Python loop
        over tokens): prefix, user[:a], middle, item[:b], suffix per row."""
        tpl = self._template
        p, m, s = len(tpl.prefix), len(tpl.middle), len(tpl.suffix)
        user_b = self._ids([user_text])[0]
        items_b = self._ids(item_texts)
        n = len(items_b)
        n2 = np.fromiter(map(len, items_b), dtype=np.int64, count=n) // _I64
        budget = self.spec.max_seq_len - tpl.n_special
        fits = n and len(user_b) // _I64 + int(n2.max()) <= budget  # the usual case
        if fits and self._join is not None:
            return self._join.assemble(user_b, items_b, n2, self.spec.bucket_for)
        user = np.frombuffer(user_b, dtype=np.int64)
        items = [np.frombuffer(x, dtype=np.int64) for x in items_b]
        if fits:
            a, b = np.full(n, len(user), dtype=np.int64), n2
            user_lengths = (len(user),)
        else:
            a, b = truncate_pairs(len(user), n2, budget)
            user_lengths = np.unique(a)  # almost always one: the user side fits whole
        lens = p + a + m + b + s
        seq_len = self.spec.bucket_for(int(lens.max()) if n else 1)
        ids = np.full((n, seq_len), self._pad_id, dtype=np.int64)
        types = np.zeros((n, seq_len), dtype=np.int64)
        mask = (np.arange(seq_len)[None, :] < lens[:, None]).astype(np.int64)
        ids[:, :p], types[:, :p] = tpl.prefix, tpl.prefix_types
        for av in user_lengths:
            rows = slice(None) if len(user_lengths) == 1 else np.nonzero(a == av)[0]
            ids[rows, p:p + av], types[rows, p:p + av] = user[:av], tpl.type_a
            ids[rows, p + av:p + av + m], types[rows, p + av:p + av + m] = tpl.middle, tpl.middle_types
        starts = p + a + m
        total = int(b.sum())
        if total:
            row_of = np.repeat(np.arange(n), b)
            cols = np.repeat(starts - (np.cumsum(b) - b), b) + np.arange(total)
            pieces = items if (b == n2).all() else [x[:k] for x, k in zip(items, b.tolist())]
            ids[row_of, cols] = np.concatenate(pieces)
            types[row_of, cols] = tpl.type_b
        end, every = starts + b, np.arange(n)
        for k in range(s):
            ids[every, end + k], types[every, end + k] = tpl.suffix[k], tpl.suffix_types[k]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    # -- public ----------------------------------------------------------------------
    def encode(self, user_text: str, item_texts: Sequence[str]) -> EncodedBatch:
        """Padded model inputs for (user_text, item) pairs, one sequence bucket for all."""
        if self._template is not None:
            arrays = self._assemble(user_text, item_texts)
            return EncodedBatch({k: arrays[k] for k in self.spec.input_names}, arrays["input_ids"].shape[1])
        rows = self._rows(user_text, item_texts)
        seq_len = self.spec.bucket_for(max((len(ids) for ids, _ in rows), default=1))
        n = len(rows)
        ids = np.full((n, seq_len), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, seq_len), dtype=np.int64)
        types = np.zeros((n, seq_len), dtype=np.int64)
        for r, (row_ids, row_types) in enumerate(rows):
            k = len(row_ids)
            ids[r, :k] = row_ids
            mask[r, :k] = 1
            types[r, :k] = row_types
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return EncodedBatch({k: arrays[k] for k in self.spec.input_names}, seq_len)

    def encode_reference(self, user_text: str, item_texts: Sequence[str]) -> list[list[int]]:
        """Token ids straight from the tokenizer (no cache, no template): for checks."""
        return [e.ids for e in self._tok.encode_batch([(user_text, t) for t in item_texts])]
