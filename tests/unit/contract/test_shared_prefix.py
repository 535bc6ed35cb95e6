"""The shared-prefix layout against hand-built examples."""

import numpy as np
import pytest

from contract.shared_prefix import PADDING, PREFIX, attention_allowed, pack


def test_one_row_by_hand():
    b = pack([101, 7, 8, 102], [[50], [60, 61], [70]], max_len=16, buckets=(8, 16))
    assert b.input_ids.tolist() == [[101, 7, 8, 102, 50, 60, 61, 70]]
    assert b.cand_index.tolist() == [[PREFIX] * 4 + [1, 2, 2, 3]]
    # every candidate starts at the position after the prefix
    assert b.positions.tolist() == [[0, 1, 2, 3, 4, 4, 5, 4]]
    assert b.first_token.tolist() == [[0, 4], [0, 5], [0, 7]]
    assert b.scores(np.arange(8.0)[None]).tolist() == [4.0, 5.0, 7.0]


def test_padding_to_the_bucket():
    b = pack([101, 102], [[5], [6]], max_len=16, buckets=(8, 16), pad_id=0)
    assert b.seq_len == 8
    assert b.input_ids[0, 4:].tolist() == [0] * 4 and b.cand_index[0, 4:].tolist() == [PADDING] * 4


def test_mask_by_hand():
    b = pack([101, 102], [[5, 6], [7]], max_len=8, buckets=(6,))
    allowed = attention_allowed(b.cand_index)[0].astype(int)
    # rows: prefix, prefix, cand1, cand1, cand2, pad
    assert allowed.tolist() == [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_long_requests_split_into_rows_that_each_carry_the_prefix():
    prefix = [101, 9, 102]
    cands = [[i] * (1 + i % 3) for i in range(1, 21)]
    b = pack(prefix, cands, max_len=10)
    assert b.input_ids.shape[0] > 1
    for r in range(b.input_ids.shape[0]):
        assert b.input_ids[r, :3].tolist() == prefix and b.cand_index[r, :3].tolist() == [PREFIX] * 3
        # numbering restarts at 1 in every row; no row is longer than max_len
        used = b.cand_index[r][b.cand_index[r] > 0]
        assert used.min() == 1 and b.seq_len <= 10
    # each candidate's tokens are where first_token says, whole and in order
    for i, c in enumerate(cands):
        r, col = b.first_token[i]
        assert b.input_ids[r, col:col + len(c)].tolist() == c


def test_truncation_keeps_the_separator_and_caps_candidates():
    b = pack([101] + [5] * 30 + [102], [[7] * 50], max_len=32)
    assert b.input_ids[0, :16].tolist() == [101] + [5] * 14 + [102]
    assert (b.cand_index[0] == 1).sum() == 16  # what is left of the row
    b = pack([101, 102], [[7] * 50], max_len=32, max_candidate_len=4)
    assert (b.cand_index[0] == 1).sum() == 4
    with pytest.raises(ValueError):
        pack([101, 102], [[1]], max_len=1)


def test_prefix_tokenizer_reads_the_user_once_and_each_candidate_without_specials():
    from contract.model_spec import ModelSpec
    from contract.shared_prefix import PrefixTokenizer
    from tests.fixtures import TOKENIZER_JSON

    tok = PrefixTokenizer.from_file(TOKENIZER_JSON, ModelSpec.shared_prefix())
    raw = tok._tok
    b = tok.encode("the user likes films", ["a film", "the film", "a film"])
    cls_, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    prefix = raw.encode("the user likes films").ids
    assert prefix[0] == cls_ and prefix[-1] == sep
    assert b.input_ids[0, :len(prefix)].tolist() == prefix
    first = raw.encode("a film", add_special_tokens=False).ids
    r, c = b.first_token[0]
    assert b.input_ids[r, c:c + len(first)].tolist() == first
    assert b.seq_len in ModelSpec.shared_prefix().seq_buckets
    assert tok.encode("the user likes films", ["a film"]).input_ids[0, :len(prefix) + len(first)].tolist() == prefix + first


def test_spec_of_a_shared_prefix_version():
    from contract.model_spec import ModelSpec

    spec = ModelSpec.shared_prefix()
    assert spec.input_names == ("input_ids", "cand_index", "positions") and spec.scoring == "shared_prefix"
    cfg = spec.config_pbtxt()
    assert 'name: "cand_index"' in cfg and "dims: [ -1 ]\n}\ndynamic_batching" in cfg
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec().scoring == "pairwise" and "dims: [ 1 ]" in ModelSpec().config_pbtxt()
    with pytest.raises(ValueError):
        ModelSpec(scoring="listwise")


def test_mean_pool_averages_each_candidates_tokens_across_rows():
    b = pack([1, 2], [[5], [6, 7], [8, 9, 10]], max_len=6, pool="mean")  # rows: [5, 6 7], [8 9 10]
    assert b.input_ids.shape[0] == 2
    token_scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    # cand 1 at (0, 2) -> 2; cand 2 at (0, 3), (0, 4) -> 3.5; cand 3 at (1, 2..4) -> 9
    assert b.scores(token_scores).tolist() == [2.0, 3.5, 9.0]
    first = pack([1, 2], [[5], [6, 7], [8, 9, 10]], max_len=6)
    assert first.scores(token_scores).tolist() == [2.0, 3.0, 8.0]
