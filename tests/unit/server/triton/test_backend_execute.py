"""The Triton backend's ``execute`` (model_repository/reranker/model.py) with a stub
``triton_python_backend_utils``: a request with invalid inputs gets its own error response,
the other requests of the batch their scores, from one engine call."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

BACKEND_SRC = Path(__file__).resolve().parents[4] / "model_repository" / "reranker" / "model.py"
NAMES = ("input_ids", "attention_mask", "token_type_ids")


class TritonError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message, code="INTERNAL"):
        self.message, self.code = message, code


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


class Request:
    def __init__(self, **arrays):
        self.tensors = {k: Tensor(k, v) for k, v in arrays.items()}


def stub_pb_utils():
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TritonError, pb.Tensor, pb.InferenceResponse = TritonError, Tensor, InferenceResponse
    pb.TritonModelException = RuntimeError
    pb.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    return pb


@pytest.fixture(scope="module")
def backend():
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = stub_pb_utils()
    try:
        spec = importlib.util.spec_from_file_location("rerankd_backend_model_stubbed", BACKEND_SRC)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved
    assert module.pb_utils is not None
    return module


class FakeEngine:
    """Score = sum of attended ids; ids >= ``vocab`` fail the call (as ORT's Gather does)."""

    input_names = list(NAMES)

    def __init__(self, vocab=1000):
        self.vocab, self.calls = vocab, 0

    def run(self, feed):
        self.calls += 1
        if (feed["input_ids"] >= self.vocab).any():
            raise RuntimeError("indices element out of data bounds")
        return (feed["input_ids"] * feed["attention_mask"]).sum(1).astype(np.float32).reshape(-1, 1)


def arrays(lengths, width, start=1):
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for r, k in enumerate(lengths):
        ids[r, :k] = np.arange(start, start + k)
        mask[r, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def model(backend, engine):
    m = backend.TritonPythonModel()
    m.input_names, m.output_name = list(NAMES), "score"
    m.scorer = backend.EngineScorer(engine, NAMES, sub_batch=0)
    return m


def expected(a):
    return (a["input_ids"] * a["attention_mask"]).sum(1).astype(np.float32)


def test_one_invalid_request_fails_alone_and_the_rest_share_one_engine_call(backend):
    good1, good2 = arrays([3, 5], 16), arrays([7], 32, start=10)
    ragged = arrays([2], 16)
    ragged["attention_mask"] = np.ones((1, 8), np.int64)  # widths disagree
    missing = {k: v for k, v in arrays([2], 16).items() if k != "token_type_ids"}
    engine = FakeEngine()
    out = model(backend, engine).execute([Request(**good1), Request(**ragged), Request(**missing),
                                          Request(**good2)])
    assert len(out) == 4
    for resp, ref in ((out[0], good1), (out[3], good2)):
        assert resp.error is None and resp.output_tensors[0].name == "score"
        np.testing.assert_array_equal(resp.output_tensors[0].array, expected(ref).reshape(-1, 1))
    assert "differ in shape" in out[1].error.message and out[1].error.code == "INVALID_ARG"
    assert "missing inputs ['token_type_ids']" in out[2].error.message and not out[2].output_tensors
    assert engine.calls == 1  # the valid requests ran together


def test_a_request_only_the_engine_rejects_fails_alone(backend):
    good, bad = arrays([3], 16), arrays([4], 16, start=5000)  # ids beyond the vocabulary
    engine = FakeEngine()
    out = model(backend, engine).execute([Request(**good), Request(**bad)])
    np.testing.assert_array_equal(out[0].output_tensors[0].array, expected(good).reshape(-1, 1))
    assert out[0].error is None
    assert "out of data bounds" in out[1].error.message and out[1].error.code == "INTERNAL"
    assert engine.calls == 3  # the joined call, then each request alone


@pytest.mark.parametrize("bad, why", [
    ({k: np.zeros((2, 0), np.int64) for k in NAMES}, "seq >= 1"),
    ({k: np.zeros(4, np.int64) for k in NAMES}, "rows, seq"),
    ({k: np.zeros((1, 4), np.float32) for k in NAMES}, "integer"),
])
def test_check_request(backend, bad, why):
    assert why in backend.check_request(bad, NAMES)
    assert backend.check_request(arrays([1, 2], 8), NAMES) is None


def test_all_valid_is_one_score_many(backend):
    parts = [arrays([3, 5], 16), arrays([2], 32)]
    scorer = backend.EngineScorer(FakeEngine(), NAMES, sub_batch=0)
    got = scorer.score_requests(parts)
    for g, p in zip(got, parts):
        np.testing.assert_array_equal(g, expected(p))
    assert scorer.engine.calls == 1
