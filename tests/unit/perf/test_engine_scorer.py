"""The backend's batching policy (sort by length, trim padding, unsort, split) with a fake engine."""

from __future__ import annotations

import numpy as np
import pytest

from export.engines import load_backend
from perf.stack import BACKEND_SRC

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def backend():
    return load_backend(BACKEND_SRC)


class FakeEngine:
    """Score = a function of the attended tokens only (as a masked encoder is)."""

    input_names = list(NAMES)

    def __init__(self):
        self.widths: list[tuple[int, int]] = []

    def run(self, feed):
        ids, mask = feed["input_ids"], feed["attention_mask"]
        self.widths.append(ids.shape)
        pos = np.arange(ids.shape[1])
        return ((ids * mask * (pos + 1)).sum(1) % 9973).astype(np.float32).reshape(-1, 1)


def batch(lengths, width, seed=0):
    rng = np.random.default_rng(seed)
    n = len(lengths)
    ids = np.zeros((n, width), np.int64)
    mask = np.zeros((n, width), np.int64)
    for i, k in enumerate(lengths):
        ids[i, :k] = rng.integers(100, 30000, k)
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_row_lengths(backend):
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert backend.row_lengths(mask).tolist() == [2, 4, 0, 3]


@pytest.mark.parametrize("sub_batch", [0, 1, 7, 32])
def test_trimmed_scores_equal_untrimmed(backend, sub_batch):
    b = batch([5, 40, 17, 128, 3, 64, 33] * 5, 128)
    ref = backend.EngineScorer(FakeEngine(), NAMES, trim_padding=False, sub_batch=0).score(b)
    eng = FakeEngine()
    got = backend.EngineScorer(eng, NAMES, sub_batch=sub_batch).score(b)
    np.testing.assert_array_equal(got, ref)
    assert all(w % backend.TRIM_MULTIPLE == 0 or w == 128 for _, w in eng.widths)
    if sub_batch == 7:  # sorted by length: the shortest rows run narrow
        assert min(w for _, w in eng.widths) == 8


def test_score_many_joins_widths_and_splits_back(backend):
    parts = [batch([10, 20], 32, 1), batch([60, 5, 7], 64, 2), batch([100], 128, 3)]
    eng = FakeEngine()
    s = backend.EngineScorer(eng, NAMES, sub_batch=0)
    got = s.score_many(parts)
    assert [len(g) for g in got] == [2, 3, 1]
    for g, p in zip(got, parts):
        np.testing.assert_array_equal(g, backend.EngineScorer(FakeEngine(), NAMES, trim_padding=False).score(p))
    assert len(eng.widths) == 1  # one engine call for all three requests


def test_without_trim_requests_of_equal_width_share_a_call(backend):
    parts = [batch([10, 20], 32, 1), batch([6], 32, 2), batch([60], 64, 3)]
    eng = FakeEngine()
    got = backend.EngineScorer(eng, NAMES, trim_padding=False, sub_batch=0).score_many(parts)
    assert sorted(w for w in eng.widths) == [(1, 64), (3, 32)]
    assert [len(g) for g in got] == [2, 1, 1]


def test_empty_batch(backend):
    assert backend.EngineScorer(FakeEngine(), NAMES).score(batch([], 32)).shape == (0,)


def test_unknown_engine_and_missing_file(backend, tmp_path):
    with pytest.raises(backend.EngineError, match="unknown engine"):
        backend.load_engine(str(tmp_path), "score", {"engine": "tensorflow"})
    with pytest.raises(backend.EngineError, match="model.int8.onnx"):
        backend.load_engine(str(tmp_path), "score", {"engine": "onnxruntime_int8"})
