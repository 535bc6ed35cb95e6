"""``load_served_model`` reads a version's layout from its manifest: a shared-prefix version
gets a ``PrefixTokenizer``, any other a ``PairTokenizer``."""

import shutil

import pytest

from contract.model_spec import Manifest, ModelSpec
from contract.shared_prefix import PrefixBatch, PrefixTokenizer
from contract.tokenize import EncodedBatch, PairTokenizer
from server.triton.models import load_served_model
from tests.fixtures import TOKENIZER_JSON


@pytest.mark.parametrize("spec, tokenizer, batch", [
    (ModelSpec.shared_prefix(), PrefixTokenizer, PrefixBatch),
    (ModelSpec(), PairTokenizer, EncodedBatch),
])
def test_the_tokenizer_follows_the_manifest(tmp_path, spec, tokenizer, batch):
    folder = tmp_path / "reranker" / "4"
    folder.mkdir(parents=True)
    shutil.copyfile(TOKENIZER_JSON, folder / "tokenizer.json")
    Manifest(spec=spec, base_model="tiny").write(folder / "manifest.json")
    served = load_served_model(tmp_path, "reranker", "4")
    assert isinstance(served.tokenizer, tokenizer) and served.spec == spec
    encoded = served.tokenizer.encode("a user", ["one item", "another item"])
    assert isinstance(encoded, batch) and set(encoded.arrays) == set(spec.input_names)
