"""Engine variants on a tiny random BERT: built from its fp32 ONNX, served by the backend,
checked against fp32, and written into a version by run_export's engine option."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from contract.model_spec import ModelSpec
from export import engines as E
from perf.stack import BACKEND_SRC

pytest.importorskip("torch")
HAS_OV = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from contract.tokenize import PairTokenizer
    from export.base_model import load_for_export
    from export.tiny import make_tiny_model
    from export.to_onnx import export_onnx

    d = tmp_path_factory.mktemp("tiny")
    hf = make_tiny_model(d / "hf")
    onnx = export_onnx(load_for_export(hf), ModelSpec(), d / "model.onnx")
    tok = PairTokenizer.from_file(hf / "tokenizer.json", ModelSpec())
    batches = E.encode_requests(tok, E.fallback_requests())
    return {"hf": hf, "onnx": onnx, "tok": tok, "batches": batches, "dir": d}


def test_agreement_metrics():
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert E.spearman(a, a * 2 + 1) == pytest.approx(1.0)
    assert E.spearman(a, -a) == pytest.approx(-1.0)
    assert E.top_k_overlap(a, a, k=2) == 1.0
    assert E.top_k_overlap(a, np.array([0.9, 0.1, 0.3, 0.5]), k=1) == 0.0
    r = E.agreement([a], [a + 1e-4])
    assert r.ok() and r.max_abs_diff == pytest.approx(1e-4)


def test_ort_int8_variant_is_served_by_the_backend(tiny):
    files = E.build_engine_files("onnxruntime_int8", tiny["onnx"], tiny["dir"] / "int8")
    vd = E.stage_version_dir(tiny["onnx"], files, tiny["dir"] / "v_int8")
    assert (vd / "model.int8.onnx").is_file()
    backend = E.load_backend(BACKEND_SRC)
    ref = backend.load_scorer(str(vd), {"engine": "onnxruntime", "intra_op_threads": "1", "trim_padding": "false"})
    got = backend.load_scorer(str(vd), {"engine": "onnxruntime_int8", "intra_op_threads": "1"})
    for b in tiny["batches"]:
        assert np.abs(got.score(b) - ref.score(b)).max() < 0.05


def test_trimming_does_not_change_fp32_scores(tiny):
    vd = E.stage_version_dir(tiny["onnx"], {}, tiny["dir"] / "v_fp32")
    backend = E.load_backend(BACKEND_SRC)
    ref = backend.load_scorer(str(vd), {"intra_op_threads": "1", "trim_padding": "false", "sub_batch": "0"})
    got = backend.load_scorer(str(vd), {"intra_op_threads": "1", "sub_batch": "2"})
    b = tiny["batches"][0]
    wide = {k: np.pad(v, ((0, 0), (0, 64))) for k, v in b.items()}  # much more padding
    np.testing.assert_allclose(got.score(wide), ref.score(b), atol=1e-5)


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_openvino_variant_matches_fp32(tiny):
    vd = E.stage_version_dir(tiny["onnx"], {}, tiny["dir"] / "v_ov")
    result = E.check_engine(BACKEND_SRC, vd, "openvino", tiny["batches"], threads=1,
                            params={"precision": "f32"}, log=lambda *_: None)
    assert result.max_abs_diff < 1e-4


def test_run_export_writes_the_engine_into_the_version_not_the_shared_config(tiny, tmp_path, monkeypatch):
    from export.build import run_export

    monkeypatch.setattr(E, "movielens_requests", lambda *a, **k: None)  # no data set needed
    # A random tiny model's scores barely spread (std ~1e-5), so int8 noise reorders them:
    # the gate's arithmetic is tested elsewhere; here, that a passing variant is written.
    monkeypatch.setattr(E, "AGREEMENT_TOLERANCE", {"spearman_min": -1.0, "top10_overlap_min": 0.0})
    repo = tmp_path / "repo"
    version, _ = run_export(tiny["hf"], repo, engine="onnxruntime_int8", parameters={"sub_batch": "64"},
                            log=lambda *_: None)
    vd = repo / "reranker" / str(version)
    assert (vd / "model.int8.onnx").is_file() and (vd / "model.onnx").is_file()
    manifest = json.loads((vd / "manifest.json").read_text())
    assert manifest["engine"] == "onnxruntime_int8"
    assert {"spearman_mean", "top10_overlap_mean", "max_abs_diff"} <= set(manifest["export_check"]["engine_check"])
    config = (repo / "reranker" / "config.pbtxt").read_text()
    # config.pbtxt is shared by every version: it keeps the tuning parameters, and the backend
    # takes the engine from the version's manifest (so a rollback needs no config change).
    assert 'string_value: "64"' in config and "onnxruntime_int8" not in config
    backend = E.load_backend(BACKEND_SRC)
    assert backend.version_engine(str(vd)) == "onnxruntime_int8"
    scorer = backend.load_scorer(str(vd), {"intra_op_threads": "1"})
    assert scorer.score(tiny["batches"][0]).shape == (len(tiny["batches"][0]["input_ids"]),)


def test_run_export_default_keeps_onnxruntime_and_default_parameters(tiny, tmp_path):
    from export.build import run_export

    repo = tmp_path / "repo"
    version, _ = run_export(tiny["hf"], repo, log=lambda *_: None)
    assert json.loads((repo / "reranker" / str(version) / "manifest.json").read_text())["engine"] == "onnxruntime"
    config = (repo / "reranker" / "config.pbtxt").read_text()
    assert '"engine"' not in config and 'key: "intra_op_threads"' in config


def test_run_export_rejects_a_variant_beyond_tolerance_and_writes_nothing(tiny, tmp_path, monkeypatch):
    from export.build import run_export

    monkeypatch.setattr(E, "movielens_requests", lambda *a, **k: None)
    monkeypatch.setattr(E, "AGREEMENT_TOLERANCE", {"spearman_min": 1.01, "top10_overlap_min": 0.0})
    repo = tmp_path / "repo"
    with pytest.raises(E.EngineCheckError):
        run_export(tiny["hf"], repo, engine="onnxruntime_int8", log=lambda *_: None)
    assert not any((repo / "reranker").glob("[0-9]*"))
