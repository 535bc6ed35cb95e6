import numpy as np
import pytest

from contract.items import Item
from contract.model_spec import ModelSpec
from contract.render import EMPTY_HISTORY, render_item, render_user
from contract.tokenize import PairTokenizer
from tests.fixtures import TOKENIZER_JSON


@pytest.fixture(scope="module")
def tokenizer_path():
    """A tiny BERT-shaped tokenizer (committed): these checks need BERT's template and
    WordPiece, not MiniLM's vocabulary, so they run on the serving-only install too."""
    return TOKENIZER_JSON


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


def test_truncate_pair_matches_the_tokenizers_library(tokenizer_path):
    from tokenizers import Tokenizer

    from contract.tokenize import truncate_pair

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    a_id, b_id = tok.token_to_id("a"), tok.token_to_id("b")
    for max_len in (13, 14):
        tok.enable_truncation(max_length=max_len, strategy="longest_first")
        for n1 in range(1, 16):
            for n2 in range(1, 16):
                ids = tok.encode(" ".join("a" * n1), " ".join("b" * n2)).ids
                assert truncate_pair(n1, n2, max_len - 3) == (ids.count(a_id), ids.count(b_id))


def test_cached_assembly_equals_plain_tokenizer_encoding(tokenizer_path):
    import random

    rng = random.Random(0)
    words = ["toy", "story", "(1995)", "sci-fi", "l'amour", "über", "naïve", "x-men:", "2", "|", "genres:"]
    spec = ModelSpec(seq_buckets=(16, 32, 64))
    tok = PairTokenizer.from_file(tokenizer_path, spec)
    assert tok._template is not None  # BERT's template is reproduced, not the fallback
    assert tok._join is not None  # and pairs that fit are joined from cached bytes
    for _ in range(30):
        user = " ".join(rng.choice(words) for _ in range(rng.randint(0, 60)))
        items = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for _ in range(5)]
        batch = tok.encode(user, items)
        ref = tok.encode_reference(user, items)
        lengths = batch.arrays["attention_mask"].sum(axis=1)
        refs = tok._tok.encode_batch([(user, i) for i in items])
        for row, ids in enumerate(ref):
            assert batch.arrays["input_ids"][row, :lengths[row]].tolist() == ids
            assert batch.arrays["token_type_ids"][row, :lengths[row]].tolist() == refs[row].type_ids
            assert not batch.arrays["input_ids"][row, lengths[row]:].any()  # [PAD] is 0 in BERT
            assert not batch.arrays["token_type_ids"][row, lengths[row]:].any()
            assert batch.arrays["attention_mask"][row].tolist() == [1] * lengths[row] + [0] * (
                batch.seq_len - lengths[row])
    hits = tok.hits
    tok.encode("user", ["same item"] * 3)
    assert tok.hits > hits  # repeated texts come from the cache


def test_joined_rows_equal_the_scattered_assembly(tokenizer_path):
    """The bytes-join path (pairs that fit) gives the general numpy path's arrays exactly."""
    import random

    import numpy as np

    rng = random.Random(1)
    words = ["toy", "story", "(1995)", "drama", "über", "x-men:", "|", "genres:", "a", "film"]
    joined = PairTokenizer.from_file(tokenizer_path, ModelSpec(seq_buckets=(16, 32, 64, 128)))
    scattered = PairTokenizer.from_file(tokenizer_path, ModelSpec(seq_buckets=(16, 32, 64, 128)))
    scattered._join = None
    for _ in range(40):
        user = " ".join(rng.choice(words) for _ in range(rng.randint(0, 20)))
        items = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 25))) for _ in range(rng.randint(1, 30))]
        a, b = joined.encode(user, items), scattered.encode(user, items)
        assert a.seq_len == b.seq_len
        for name in b.arrays:
            assert a.arrays[name].dtype == np.int64 and a.arrays[name].flags.writeable
            np.testing.assert_array_equal(a.arrays[name], b.arrays[name])


def test_vectorized_truncation_equals_the_scalar_rule():
    import numpy as np

    from contract.tokenize import truncate_pair, truncate_pairs

    n2 = np.arange(0, 80)
    for budget in (1, 2, 13, 14, 61):
        for n1 in range(0, 80):
            a, b = truncate_pairs(n1, n2, budget)
            assert [(int(x), int(y)) for x, y in zip(a, b)] == [truncate_pair(n1, int(k), budget) for k in n2]


def test_renderer_memo_follows_item_identity():
    from contract.items import Item
    from contract.render import Renderer

    r = Renderer()
    old = Item("7", title="Old title")
    assert r.items([old]) == [r.item(old)]
    new = Item("7", title="New title")  # an upsert hands out a new object: rendered afresh
    assert r.items([new, old]) == [r.item(new), r.item(old)]
