"""ONNX export of a tiny random BERT cross-encoder: signature, dynamic axes, parity, pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from contract.model_spec import Manifest, ModelSpec  # noqa: E402
from contract.tokenize import EncodedBatch, PairTokenizer  # noqa: E402
from export.base_model import load_for_export  # noqa: E402
from export.build import has_version, run_export  # noqa: E402
from export.tiny import make_tiny_model  # noqa: E402
from export.to_onnx import export_onnx, onnx_session, run_onnx  # noqa: E402
from export.verify import (  # noqa: E402
    ExportVerificationError,
    encode_pairs,
    max_abs_diff,
    sample_pairs,
    torch_scores,
)

SPEC = ModelSpec()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_for_export(tiny_dir)


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory) -> Path:
    return export_onnx(model, SPEC, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture
def backend_src(tmp_path) -> Path:
    path = tmp_path / "model.py"
    path.write_text("# dummy Triton Python backend\n")
    return path


def test_onnx_signature_matches_spec(onnx_path):
    assert [p.name for p in onnx_path.parent.iterdir()] == ["model.onnx"]  # no external data
    graph = onnx.load(str(onnx_path)).graph

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    assert [i.name for i in graph.input] == list(SPEC.input_names)
    for i in graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims(i) == ["batch", "sequence"]
    (out,) = graph.output
    assert out.name == SPEC.output_name
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(out) == ["batch", 1]


@pytest.mark.parametrize("batch,seq", [(3, 32), (1, 128)])
def test_dynamic_shapes_match_torch(model, onnx_path, batch, seq):
    rng = np.random.default_rng(batch)
    arrays = {"input_ids": rng.integers(1000, 20000, (batch, seq)),
              "attention_mask": np.ones((batch, seq), np.int64),
              "token_type_ids": np.zeros((batch, seq), np.int64)}
    arrays["attention_mask"][0, seq // 3:] = 0
    arrays["token_type_ids"][:, seq // 4:] = 1
    got = run_onnx(onnx_session(onnx_path), arrays)
    assert got.shape == (batch, 1) and got.dtype == np.float32
    expected = torch_scores(model, EncodedBatch(arrays, seq), SPEC.input_names)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_sample_pairs_verify_below_1e4(model, onnx_path, tiny_dir):
    pairs = sample_pairs()
    assert len(pairs) == 8 and len({u for u, _ in pairs}) == 3
    batches = encode_pairs(PairTokenizer.from_file(tiny_dir / "tokenizer.json", SPEC), pairs)
    assert sum(len(b) for b in batches) == 8
    assert any((b.arrays["attention_mask"] == 0).any() for b in batches)  # padding exercised
    diffs = [max_abs_diff(model, onnx_path, b) for b in batches]
    assert max(diffs) < 1e-4


def test_export_without_token_type_ids(model, tmp_path):
    spec = ModelSpec(input_names=("input_ids", "attention_mask"))
    path = export_onnx(model, spec, tmp_path / "m.onnx")
    sess = onnx_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    out = run_onnx(sess, {"input_ids": np.full((2, 32), 2000), "attention_mask": np.ones((2, 32), np.int64)})
    assert out.shape == (2, 1)


def test_headless_checkpoint_gets_deterministic_head(model, tmp_path):
    model.bert.save_pretrained(tmp_path / "encoder")  # a BertModel without a classifier
    (tmp_path / "encoder" / "tokenizer.json").write_text("{}")
    a, b = load_for_export(tmp_path / "encoder"), load_for_export(tmp_path / "encoder")
    assert a.config.num_labels == 1 and not a.training
    assert torch.equal(a.classifier.weight, b.classifier.weight)


def test_run_export_writes_versions(tiny_dir, tmp_path, backend_src):
    repo = tmp_path / "repo"
    lines: list[str] = []
    assert not has_version(repo, "reranker")
    version, diff = run_export(tiny_dir, repo, backend_src=backend_src, log=lines.append,
                               training={"steps": 0}, metrics={"ndcg@10": 0.1})
    assert (version, has_version(repo, "reranker")) == (1, True)
    assert diff < 1e-4
    assert any("onnx export done in" in line for line in lines)
    vdir = repo / "reranker" / "1"
    manifest = Manifest.read(vdir / "manifest.json")
    assert manifest.spec == SPEC and manifest.training == {"steps": 0}
    assert manifest.export_check["max_abs_diff"] == diff
    assert (vdir / "model.onnx").is_file() and (vdir / "tokenizer.json").is_file()
    assert "dynamic_batching" in (repo / "reranker" / "config.pbtxt").read_text()
    assert run_export(tiny_dir, repo, backend_src=backend_src, log=lines.append)[0] == 2


def test_run_export_fails_loudly_over_tolerance(tiny_dir, tmp_path, backend_src):
    repo = tmp_path / "repo"
    with pytest.raises(ExportVerificationError, match="tolerance"):
        run_export(tiny_dir, repo, backend_src=backend_src, tolerance=-1.0, log=lambda _: None)
    assert not has_version(repo, "reranker")
    assert not (repo / "reranker").exists()  # verification runs before anything is written
