"""Model repository layout: numbered versions, atomic writes, config.pbtxt, manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from contract.model_spec import Manifest, ModelSpec, with_version_policy
from export.write_repo import next_version, write_config, write_version


@pytest.fixture
def parts(tmp_path: Path) -> dict:
    onnx = tmp_path / "src" / "model.onnx"
    tok = tmp_path / "src" / "tok"
    tok.mkdir(parents=True)
    onnx.write_bytes(b"onnx-bytes")
    (tok / "tokenizer.json").write_text('{"tok": 1}')
    (tok / "vocab.txt").write_text("[PAD]\n")
    backend = tmp_path / "src" / "model.py"
    backend.write_text("# backend\n")
    manifest = Manifest(spec=ModelSpec(), base_model="tiny", training={"epochs": 1},
                        metrics={"ndcg@10": 0.5}, export_check={"max_abs_diff": 1e-7})
    return {"onnx": onnx, "tok": tok, "backend": backend, "manifest": manifest,
            "repo": tmp_path / "repo"}


def _write(p: dict, spec: ModelSpec | None = None) -> int:
    return write_version(p["repo"], spec or ModelSpec(), p["onnx"], p["tok"], p["manifest"],
                         backend_src=p["backend"])


def test_versions_are_numbered_and_never_reused(parts):
    repo = parts["repo"]
    assert next_version(repo, "reranker") == 1
    assert _write(parts) == 1
    parts["onnx"].write_bytes(b"second")
    assert _write(parts) == 2
    assert (repo / "reranker" / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (repo / "reranker" / "2" / "model.onnx").read_bytes() == b"second"
    assert not list((repo / "reranker").glob(".tmp-*"))


def test_gap_is_not_filled(parts):
    model_dir = parts["repo"] / "reranker"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "3").mkdir()
    (model_dir / "notes").mkdir()
    assert next_version(parts["repo"], "reranker") == 4
    assert _write(parts) == 4
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "3", "4", "notes"]
    assert not any((model_dir / "3").iterdir())


def test_version_contents_and_manifest_round_trip(parts):
    version = _write(parts)
    vdir = parts["repo"] / "reranker" / str(version)
    assert sorted(p.name for p in vdir.iterdir()) == [
        "manifest.json", "model.onnx", "model.py", "tokenizer.json", "vocab.txt"]
    assert (vdir / "model.py").read_text() == "# backend\n"
    back = Manifest.read(vdir / "manifest.json")
    assert back.created_at  # filled in when empty
    assert back == dataclasses.replace(parts["manifest"], created_at=back.created_at)
    assert back.spec == ModelSpec()


def test_config_pbtxt(parts):
    spec = ModelSpec(name="ce", max_batch_size=32)
    _write(parts, spec)
    text = (parts["repo"] / "ce" / "config.pbtxt").read_text()
    assert 'name: "ce"' in text and 'backend: "python"' in text
    assert "max_batch_size: 32" in text
    assert "dynamic_batching {" in text and "max_queue_delay_microseconds" in text
    assert text.count("dims: [ -1 ]") == 3 and "dims: [ 1 ]" in text
    assert 'name: "score"' in text and "TYPE_FP32" in text and text.count("TYPE_INT64") == 3
    assert 'key: "intra_op_threads"' in text and 'string_value: "2"' in text
    path = write_config(parts["repo"], spec, parameters={"intra_op_threads": "4"})
    assert 'string_value: "4"' in path.read_text()


def test_missing_backend_writes_nothing(parts, tmp_path):
    with pytest.raises(FileNotFoundError):
        write_version(parts["repo"], ModelSpec(), parts["onnx"], parts["tok"], parts["manifest"],
                      backend_src=tmp_path / "nope.py")
    assert next_version(parts["repo"], "reranker") == 1


def test_an_export_keeps_a_roll_outs_pinned_versions(tmp_path):
    spec = ModelSpec()
    path = write_config(tmp_path, spec)
    assert "latest: { num_versions: 1 }" in path.read_text()  # no roll-out: the newest version
    pinned = "version_policy: { specific: { versions: [ 2, 3 ] } }"
    path.write_text(with_version_policy(path.read_text(), pinned))
    write_config(tmp_path, spec)  # a later export rewrites the config from the spec
    text = path.read_text()
    assert pinned in text and "latest" not in text
    assert text.count("version_policy") == 1
