"""TritonScorer.score: a batch over ``max_batch_size`` goes out in chunks that never exceed
it, and the scores come back in row order. (The gRPC call itself: tests/integration.)"""

from __future__ import annotations

import asyncio

import numpy as np

from contract.model_spec import ModelSpec
from contract.tokenize import EncodedBatch
from server.triton.client import TritonScorer


def scorer_recording_chunks():
    scorer = TritonScorer.__new__(TritonScorer)  # no channel: _infer is replaced
    sizes = []

    async def infer(arrays, spec, version, timeout_s, headers):
        sizes.append(len(arrays["input_ids"]))
        return arrays["input_ids"][:, 0].astype(np.float32)

    scorer._infer = infer
    return scorer, sizes


def batch(n):
    ids = np.arange(n, dtype=np.int64).reshape(n, 1) * np.ones((1, 8), np.int64)
    return EncodedBatch({"input_ids": ids, "attention_mask": np.ones_like(ids),
                         "token_type_ids": np.zeros_like(ids)}, 8)


def test_chunks_never_exceed_max_batch_and_keep_row_order():
    spec = ModelSpec(max_batch_size=4)
    for n, chunks in ((10, [4, 4, 2]), (4, [4]), (1, [1]), (8, [4, 4])):
        scorer, sizes = scorer_recording_chunks()
        got = asyncio.run(scorer.score(batch(n), spec, "1"))
        assert sorted(sizes, reverse=True) == chunks
        np.testing.assert_array_equal(got, np.arange(n, dtype=np.float32))


def token_scorer_recording_chunks():
    """A scorer whose fake Triton answers a shared-prefix chunk with per-token scores."""
    scorer = TritonScorer.__new__(TritonScorer)
    sizes = []

    async def infer(arrays, spec, version, timeout_s, headers):
        assert set(arrays) == set(spec.input_names)
        sizes.append(len(arrays["input_ids"]))
        return token_scores(arrays)

    scorer._infer = infer
    return scorer, sizes


def token_scores(arrays):
    """A per-token output [rows, width] that names the token: id and position."""
    return (arrays["input_ids"] * 1000 + arrays["positions"]).astype(np.float32)


def test_a_shared_prefix_batch_is_chunked_by_rows_and_read_at_first_tokens():
    import dataclasses

    from contract.shared_prefix import pack

    spec = dataclasses.replace(ModelSpec.shared_prefix(), max_batch_size=2)
    prefix = [1, 7, 8, 2]
    cands = [[100 + i, 5, 6] for i in range(25)]
    b = pack(prefix, cands, max_len=16)  # 4 candidates of 3 tokens per 16-token row: 7 rows
    assert len(b) == 7
    scorer, sizes = token_scorer_recording_chunks()
    got = asyncio.run(scorer.score(b, spec, "1"))
    assert sorted(sizes, reverse=True) == [2, 2, 2, 1]  # never more than max_batch_size rows
    assert got.dtype == np.float32 and got.shape == (25,)
    # one score per candidate, in the request's order: its first token (id 100 + i at position 4)
    np.testing.assert_array_equal(got, [(100 + i) * 1000 + 4 for i in range(25)])
    np.testing.assert_array_equal(got, b.scores(token_scores(b.arrays)))
    scorer, sizes = token_scorer_recording_chunks()
    small = pack(prefix, cands[:3], max_len=16)
    np.testing.assert_array_equal(asyncio.run(scorer.score(small, spec, "1")), got[:3])
    assert sizes == [1]  # one row: one call


def test_pairwise_outputs_of_shape_rows_by_one_still_give_one_score_per_row():
    scorer = TritonScorer.__new__(TritonScorer)

    async def infer(arrays, spec, version, timeout_s, headers):
        return arrays["input_ids"][:, :1].astype(np.float32)  # [rows, 1], as Triton answers

    scorer._infer = infer
    got = asyncio.run(scorer.score(batch(10), ModelSpec(max_batch_size=4), "1"))
    assert got.shape == (10,)
    np.testing.assert_array_equal(got, np.arange(10, dtype=np.float32))
