"""``run_export`` of a tiny random BERT as a shared-prefix version: the manifest and config.pbtxt
say so, the ONNX graph scores like torch, the backend serves it through its shared-prefix
path, and an engine that cannot run the graph fails its check (EngineCheckError)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from contract.model_spec import SHARED_PREFIX, Manifest, ModelSpec  # noqa: E402
from contract.shared_prefix import INPUT_NAMES, PrefixTokenizer  # noqa: E402
from export import engines as E  # noqa: E402
from export.base_model import load_for_export  # noqa: E402
from export.build import DEFAULT_BACKEND_SRC, has_version, run_export  # noqa: E402
from export.tiny import make_tiny_model  # noqa: E402
from export.to_onnx import onnx_session  # noqa: E402
from export.verify import ExportVerificationError, prefix_torch_scores, sample_pairs  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    return make_tiny_model(tmp_path_factory.mktemp("tiny_sp"))


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    lines: list[str] = []
    extra = [("a user who watched Heat", "Fargo (1996)"), ("a user who watched Heat", "Babe (1995)")]
    version, diff = run_export(tiny_dir, repo, scoring=SHARED_PREFIX, extra_pairs=extra, log=lines.append)
    return {"repo": repo, "version": version, "diff": diff, "lines": lines,
            "vdir": repo / "reranker" / str(version)}


def requests():
    by_user: dict[str, list[str]] = {}
    for user, item in sample_pairs():
        by_user.setdefault(user, []).append(item)
    return list(by_user.items())


def test_the_version_says_shared_prefix_in_manifest_and_config(exported):
    vdir = exported["vdir"]
    assert has_version(exported["repo"], "reranker") and exported["version"] == 1
    manifest = Manifest.read(vdir / "manifest.json")
    assert manifest.spec == ModelSpec.shared_prefix() and manifest.spec.scoring == SHARED_PREFIX
    assert json.loads((vdir / "manifest.json").read_text())["spec"]["scoring"] == "shared_prefix"
    check = manifest.export_check
    assert check["scoring"] == SHARED_PREFIX and check["pairs"] == 10 and check["max_abs_diff"] == exported["diff"]
    assert exported["diff"] < 1e-4
    config = (exported["repo"] / "reranker" / "config.pbtxt").read_text()
    assert config == ModelSpec.shared_prefix().config_pbtxt(parameters={"intra_op_threads": "2"})
    assert 'name: "cand_index"' in config and "attention_mask" not in config and "max_batch_size: 16" in config
    assert any("shared prefix" in line for line in exported["lines"])
    assert (vdir / "model.py").read_text() == DEFAULT_BACKEND_SRC.read_text()


def test_the_onnx_graph_scores_like_torch(exported, tiny_dir):
    vdir = exported["vdir"]
    sess = onnx_session(vdir / "model.onnx", threads=1)
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    model = load_for_export(tiny_dir)
    tok = PrefixTokenizer.from_file(vdir / "tokenizer.json", ModelSpec.shared_prefix())
    for user, items in requests() + [("", [f"film {i}" for i in range(60)])]:
        b = tok.encode(user, items)
        out = sess.run(["score"], b.arrays)[0]
        assert out.shape == b.input_ids.shape  # a score per token
        np.testing.assert_allclose(b.scores(out), b.scores(prefix_torch_scores(model, b.arrays)), atol=1e-5)


def test_the_backend_serves_the_version_through_its_shared_prefix_path(exported, tiny_dir):
    vdir = exported["vdir"]
    backend = E.load_backend(vdir / "model.py")
    scorer = backend.load_scorer(str(vdir), {"intra_op_threads": "1"})  # the layout: from the manifest
    assert isinstance(scorer, backend.PrefixScorer)
    model = load_for_export(tiny_dir)
    tok = PrefixTokenizer.from_file(vdir / "tokenizer.json", ModelSpec.shared_prefix())
    batches = [tok.encode(u, items) for u, items in requests()]
    joined = scorer.score_many([b.arrays for b in batches])  # as Triton's batcher hands them over
    for b, out in zip(batches, joined):
        assert out.shape == (len(b), b.seq_len)
        ref = b.scores(prefix_torch_scores(model, b.arrays))
        np.testing.assert_allclose(b.scores(out), ref, atol=1e-5)
    user, items = requests()[0]
    together = tok.encode(user, items)
    for k, item in enumerate(items):  # isolation, through the served engine
        alone = tok.encode(user, [item])
        assert alone.scores(scorer.score(alone.arrays))[0] == pytest.approx(
            together.scores(scorer.score(together.arrays))[k], abs=1e-5)


def test_scoring_and_spec_must_agree(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="scoring"):
        run_export(tiny_dir, tmp_path / "repo", spec=ModelSpec(), scoring=SHARED_PREFIX, log=lambda _: None)
    assert not (tmp_path / "repo").exists()


def test_shared_prefix_verification_failure_writes_nothing(tiny_dir, tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(ExportVerificationError, match="shared-prefix"):
        run_export(tiny_dir, repo, spec=ModelSpec.shared_prefix(), tolerance=-1.0, log=lambda _: None)
    assert not has_version(repo, "reranker") and not (repo / "reranker").exists()


def test_an_engine_that_cannot_run_the_graph_fails_its_check(tiny_dir, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("unsupported operation: Where on a 4-D mask")

    monkeypatch.setattr(E, "movielens_requests", lambda *a, **k: None)
    monkeypatch.setattr(E, "quantize_ort_int8", broken)
    repo = tmp_path / "repo"
    with pytest.raises(E.EngineCheckError, match="cannot build or run the shared-prefix graph"):
        run_export(tiny_dir, repo, scoring=SHARED_PREFIX, engine="onnxruntime_int8", log=lambda _: None)
    assert not has_version(repo, "reranker")


def test_an_int8_variant_of_the_shared_prefix_graph_is_checked_per_candidate(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "movielens_requests", lambda *a, **k: None)  # the sample pairs
    # A random tiny model's scores barely spread: the gate's arithmetic is tested elsewhere.
    monkeypatch.setattr(E, "AGREEMENT_TOLERANCE", {"spearman_min": -1.0, "top10_overlap_min": 0.0})
    repo = tmp_path / "repo"
    version, _ = run_export(tiny_dir, repo, scoring=SHARED_PREFIX, engine="onnxruntime_int8", log=lambda _: None)
    vdir = repo / "reranker" / str(version)
    manifest = Manifest.read(vdir / "manifest.json")
    check = manifest.export_check["engine_check"]
    assert manifest.engine == "onnxruntime_int8" and check["scoring"] == SHARED_PREFIX
    assert check["pairs"] == 8 and check["requests"] == 3  # one score per candidate compared
    backend = E.load_backend(vdir / "model.py")
    scorer = backend.load_scorer(str(vdir), {"intra_op_threads": "1"})
    assert isinstance(scorer, backend.PrefixScorer) and scorer.engine.session is not None
