"""The shared-prefix model: the isolation property and chunking, in torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from contract.shared_prefix import pack  # noqa: E402
from export.shared_prefix import SharedPrefixScorer  # noqa: E402


@pytest.fixture(scope="module")
def classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def scorer(classifier):
    return SharedPrefixScorer(classifier).eval()


def scores(scorer, batch):
    with torch.no_grad():
        out = scorer(*(torch.from_numpy(batch.arrays[k]) for k in ("input_ids", "cand_index", "positions")))
    return batch.scores(out.numpy())


def test_a_candidate_scores_the_same_alone_or_among_99_others(scorer):
    rng = np.random.default_rng(0)
    prefix = [1] + rng.integers(10, 300, 8).tolist() + [2]
    cands = [rng.integers(10, 300, int(rng.integers(1, 5))).tolist() for _ in range(100)]
    together = scores(scorer, pack(prefix, cands, max_len=128, buckets=(64, 128)))
    alone = np.array([scores(scorer, pack(prefix, [c], max_len=128))[0] for c in cands])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.ptp(alone) > 1e-3  # the candidates do get different scores


def test_chunked_rows_score_as_one_row(scorer):
    rng = np.random.default_rng(1)
    prefix = [1, 5, 6, 2]
    cands = [rng.integers(10, 300, 3).tolist() for _ in range(30)]
    one = scores(scorer, pack(prefix, cands, max_len=128))
    many = pack(prefix, cands, max_len=16)
    assert many.input_ids.shape[0] > 1
    np.testing.assert_allclose(scores(scorer, many), one, atol=1e-5)


def test_the_history_reaches_the_candidates_and_the_neighbours_do_not(scorer):
    base = scores(scorer, pack([1, 7, 8, 2], [[50], [60, 61]], max_len=32))
    other_history = scores(scorer, pack([1, 9, 10, 2], [[50], [60, 61]], max_len=32))
    other_neighbour = scores(scorer, pack([1, 7, 8, 2], [[50], [90, 91, 92]], max_len=32))
    # (a random tiny model's scores are small: compare against float noise, 1e-7)
    assert np.abs(base - other_history).min() > 1e-6
    assert abs(base[0] - other_neighbour[0]) < 1e-7


def test_onnx_export_matches_torch_for_any_row_count_and_length(classifier, scorer, tmp_path):
    from export.shared_prefix import export_onnx
    from export.to_onnx import onnx_session

    sess = onnx_session(export_onnx(classifier, tmp_path / "sp.onnx"), threads=1)
    rng = np.random.default_rng(2)
    for n, max_len in ((3, 32), (40, 24)):
        cands = [rng.integers(10, 300, 2).tolist() for _ in range(n)]
        batch = pack([1, 5, 2], cands, max_len=max_len)
        got = batch.scores(sess.run(["score"], batch.arrays)[0])
        np.testing.assert_allclose(got, scores(scorer, batch), atol=1e-5)

