"""The Triton backend's shared-prefix path (model_repository/reranker/model.py ``PrefixScorer``)
with a stub ``triton_python_backend_utils`` and a numpy stand-in for the model: requests of
different widths joined into one batch score exactly as each request alone, come back at
their own width, and a bad request still fails alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract.shared_prefix import INPUT_NAMES, PADDING, attention_allowed, pack
from tests.unit.server.triton import test_backend_execute as pairwise

Request = pairwise.Request
backend = pairwise.backend  # the backend module loaded with the stub (a fixture)


class FakePrefixEngine:
    """A per-token score that, like the real graph, depends only on what a token may attend
    to (``attention_allowed``): its own id and position, and the ids and positions of the
    tokens it sees. Padding-only columns added or cut away change no real token's score."""

    input_names = list(INPUT_NAMES)

    def __init__(self, vocab=1000):
        self.vocab, self.shapes = vocab, []

    def run(self, feed):
        ids, ci, pos = feed["input_ids"], feed["cand_index"], feed["positions"]
        self.shapes.append(ids.shape)
        if (ids >= self.vocab).any():
            raise RuntimeError("indices element out of data bounds")
        seen = attention_allowed(ci)  # [rows, L, L]
        weight = ((ids + 1) * (pos + 3)).astype(np.float64)  # [rows, L]
        ctx = (seen * weight[:, None, :]).sum(-1)
        return (np.sin(ctx * 1e-3) + ids * 1e-2 + pos * 1e-4).astype(np.float32)


def request(seed, n_cands, max_len, buckets=()):
    rng = np.random.default_rng(seed)
    prefix = [1] + rng.integers(10, 900, int(rng.integers(2, 8))).tolist() + [2]
    cands = [rng.integers(10, 900, int(rng.integers(1, 4))).tolist() for _ in range(n_cands)]
    return pack(prefix, cands, max_len=max_len, buckets=buckets)


def alone(batch):
    """Per-token scores of one request run by itself, untrimmed."""
    return FakePrefixEngine().run(batch.arrays)


def real(batch):
    return batch.cand_index != PADDING


def prefix_model(backend, engine, **kwargs):
    m = backend.TritonPythonModel()
    m.input_names, m.output_name = list(INPUT_NAMES), "score"
    m.scorer = backend.PrefixScorer(engine, INPUT_NAMES, **kwargs)
    return m


@pytest.mark.parametrize("sub_batch", [0, 1, 3, 32])
def test_joined_requests_of_mixed_widths_score_as_each_alone(backend, sub_batch):
    batches = [request(0, 5, 32, (32,)), request(1, 40, 24, (32,)), request(2, 12, 64, (64,)),
               request(3, 1, 16), request(4, 30, 128, (128,))]
    assert len({b.seq_len for b in batches}) > 2 and max(len(b) for b in batches) > 1
    engine = FakePrefixEngine()
    out = prefix_model(backend, engine, sub_batch=sub_batch).execute([Request(**b.arrays) for b in batches])
    for resp, b in zip(out, batches):
        assert resp.error is None and resp.output_tensors[0].name == "score"
        got = resp.output_tensors[0].array
        assert got.shape == (len(b), b.seq_len) and got.dtype == np.float32  # its own width back
        ref = alone(b)
        np.testing.assert_allclose(got[real(b)], ref[real(b)], rtol=0, atol=1e-6)
        np.testing.assert_allclose(b.scores(got), b.scores(ref), rtol=0, atol=1e-6)
    rows = sum(len(b) for b in batches)
    assert sum(s[0] for s in engine.shapes) == rows  # every row run once
    assert all(w % backend.TRIM_MULTIPLE == 0 or w == max(b.seq_len for b in batches) for _, w in engine.shapes)
    if sub_batch:
        assert all(r <= sub_batch for r, _ in engine.shapes)


def test_rows_of_similar_width_share_one_call_and_very_different_widths_do_not(backend):
    similar = [request(5, 3, 64, (64,)), request(6, 4, 64, (64,)), request(7, 2, 64, (64,))]
    engine = FakePrefixEngine()
    backend.PrefixScorer(engine, sub_batch=32).score_many([b.arrays for b in similar])
    assert len(engine.shapes) == 1  # one engine call for the three callers
    # trimmed to the longest real row, not run at the 64-wide bucket
    assert engine.shapes[0][1] < 64
    short, long_ = request(8, 1, 16), request(9, 120, 512)
    engine = FakePrefixEngine()
    got = backend.PrefixScorer(engine, sub_batch=32).score_many([short.arrays, long_.arrays])
    assert len(engine.shapes) == 2 and min(w for _, w in engine.shapes) <= 16  # the short row ran narrow
    np.testing.assert_allclose(short.scores(got[0]), short.scores(alone(short)), atol=1e-6)
    np.testing.assert_allclose(long_.scores(got[1]), long_.scores(alone(long_)), atol=1e-6)


def test_without_trimming_the_rows_run_at_the_widest_width_and_still_agree(backend):
    batches = [request(10, 3, 32, (32,)), request(11, 9, 64, (64,))]
    engine = FakePrefixEngine()
    got = backend.PrefixScorer(engine, trim_padding=False, sub_batch=0).score_many([b.arrays for b in batches])
    assert engine.shapes == [(sum(len(b) for b in batches), 64)]
    for g, b in zip(got, batches):
        assert g.shape == (len(b), b.seq_len)
        np.testing.assert_allclose(b.scores(g), b.scores(alone(b)), atol=1e-6)


def test_join_pads_with_padding_that_attends_only_to_padding(backend):
    a, b = request(12, 2, 16), request(13, 5, 40, (40,))
    joined = backend.PrefixScorer.join([a.arrays, b.arrays], list(INPUT_NAMES))
    assert joined["input_ids"].shape == (len(a) + len(b), 40)
    tail = slice(a.seq_len, None)
    assert (joined["cand_index"][:len(a), tail] == PADDING).all()
    assert (joined["input_ids"][:len(a), tail] == 0).all() and (joined["positions"][:len(a), tail] == 0).all()


def test_a_bad_request_fails_alone_in_a_shared_prefix_batch(backend):
    good1, good2 = request(14, 3, 32), request(15, 6, 48, (48,))
    missing = {k: v for k, v in request(16, 2, 32).arrays.items() if k != "cand_index"}
    oov = request(17, 2, 32)
    oov.input_ids[0, 1] = 5000  # beyond the vocabulary: only the engine rejects it
    engine = FakePrefixEngine()
    out = prefix_model(backend, engine, sub_batch=0).execute(
        [Request(**good1.arrays), Request(**missing), Request(**oov.arrays), Request(**good2.arrays)])
    assert "missing inputs ['cand_index']" in out[1].error.message and out[1].error.code == "INVALID_ARG"
    assert "out of data bounds" in out[2].error.message and out[2].error.code == "INTERNAL"
    for resp, b in ((out[0], good1), (out[3], good2)):
        assert resp.error is None
        np.testing.assert_allclose(b.scores(resp.output_tensors[0].array), b.scores(alone(b)), atol=1e-6)


def test_pairwise_execute_still_answers_a_score_per_row(backend):
    good = pairwise.arrays([3, 5], 16)
    out = pairwise.model(backend, pairwise.FakeEngine()).execute([Request(**good)])
    assert out[0].output_tensors[0].array.shape == (2, 1)
    np.testing.assert_array_equal(out[0].output_tensors[0].array[:, 0], pairwise.expected(good))


def test_load_scorer_takes_the_layout_from_the_manifest(backend, tmp_path, monkeypatch):
    class Engine:
        input_names = list(INPUT_NAMES)

    monkeypatch.setattr(backend, "load_engine", lambda *a, **k: Engine())
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {"scoring": "shared_prefix"}}))
    assert isinstance(backend.load_scorer(str(tmp_path), {}), backend.PrefixScorer)
    assert backend.version_scoring(str(tmp_path)) == "shared_prefix"
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {}}))  # an older manifest: pairwise
    Engine.input_names = ["input_ids", "attention_mask", "token_type_ids"]
    assert isinstance(backend.load_scorer(str(tmp_path), {}), backend.EngineScorer)
    (tmp_path / "manifest.json").unlink()  # no manifest (a staged folder): the inputs decide
    Engine.input_names = list(INPUT_NAMES)
    assert isinstance(backend.load_scorer(str(tmp_path), {}, list(INPUT_NAMES)), backend.PrefixScorer)
    assert isinstance(backend.load_scorer(str(tmp_path), {}, scoring="shared_prefix"), backend.PrefixScorer)
    # a shared-prefix manifest with the pair inputs in config.pbtxt: a clear load error
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {"scoring": "shared_prefix"}}))
    Engine.input_names = ["input_ids", "attention_mask", "token_type_ids", "cand_index", "positions"]
    with pytest.raises(backend.EngineError, match="shared-prefix"):
        backend.load_scorer(str(tmp_path), {}, ["input_ids", "attention_mask", "token_type_ids"])
