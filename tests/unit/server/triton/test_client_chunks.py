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
