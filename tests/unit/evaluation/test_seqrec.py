"""GRU4Rec reference model (evaluation.seqrec) on a tiny synthetic split: every user walks a
fixed cycle of items, so the next item is always predictable."""

import random

import pytest

torch = pytest.importorskip("torch")

from evaluation.seqrec import (  # noqa: E402
    Config,
    _windows,
    evaluate_model,
    fit_gru4rec,
    reference_metrics,
)
from interactions.movielens import Interaction, leave_one_out  # noqa: E402

N_ITEMS = 40
SMALL = Config(emb=16, hidden=32, dropout=0.0, lr=1e-2, batch=32, max_len=8)
FIT = dict(epochs=25, config=SMALL, log=lambda _: None)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cycle():
    """60 users, each 12 consecutive items of the cycle 0 -> 1 -> ... -> 39 -> 0 from a
    random start; catalogue has the 40 cycle items plus 'cold' (never rated)."""
    rng = random.Random(7)
    rows, row = [], 0
    for u in range(60):
        start = rng.randrange(N_ITEMS)
        for t in range(12):
            rows.append(Interaction(f"u{u}", str((start + t) % N_ITEMS), 4.0, 1000 + t, row))
            row += 1
    split = leave_one_out(rows)
    catalogue = [str(i) for i in range(N_ITEMS)] + ["cold"]
    return split, catalogue


@pytest.fixture(scope="module")
def model(cycle):
    torch.set_num_threads(1)
    split, catalogue = cycle
    return fit_gru4rec(split, catalogue, "valid", seed=0, **FIT)


def test_ranks_the_next_item_of_the_cycle_first(cycle, model):
    split, _ = cycle
    hits = 0
    for u in split.users:
        h = split.history(u, "valid")
        hits += model.rank(h, 1, h) == [split.valid[u]]
    assert hits / len(split.users) >= 0.9
    m = evaluate_model(model, split, "valid")
    assert m["users"] == 60 and m["ndcg@10"] >= 0.9 and m["hr@5"] >= 0.95
    # the model reads the sequence: with one more item (upto='test') it predicts the item after
    h = split.history("u0", "test")
    assert model.rank(h, 1, h) == [split.test["u0"]]


def test_history_is_masked_and_every_other_item_ranked(cycle, model):
    split, catalogue = cycle
    for u in split.users[:10]:
        h = split.history(u, "valid")
        ranked = model.rank(h, 100, h)
        assert not set(ranked) & set(h)
        assert sorted(ranked) == sorted(set(catalogue) - set(h))  # all items, each once
    assert not {"2", "3"} & set(model.rank(["0", "1"], 10, ["2", "3"]))


def test_unknown_and_empty_histories_still_rank(model):
    assert len(model.rank([], 5, ())) == 5
    assert model.rank(["nope", "5"], 3, ()) == model.rank(["5"], 3, ())


def test_same_seed_same_model(cycle, model):
    split, catalogue = cycle
    again = fit_gru4rec(split, catalogue, "valid", seed=0, **FIT)
    other = fit_gru4rec(split, catalogue, "valid", seed=1, **FIT)
    h = split.history("u3", "valid")
    assert again.rank(h, 20, h) == model.rank(h, 20, h)
    assert torch.equal(again.scores([h]), model.scores([h]))
    assert not torch.equal(other.scores([h]), model.scores([h]))


def test_fit_leaves_the_global_rng_alone(cycle):
    split, catalogue = cycle
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_gru4rec(split, catalogue, "valid", seed=0, epochs=1, config=SMALL, log=lambda _: None)
    assert torch.equal(torch.rand(3), expected)


def test_reference_metrics_on_the_test_target(cycle):
    split, catalogue = cycle
    m = reference_metrics(split, catalogue, "test", seed=0, **FIT)
    assert m["model"] == "GRU4Rec" and m["epochs"] == 25 and m["train_seconds"] >= 0
    assert m["users"] == 60 and m["ndcg@10"] >= 0.9
    assert {"hr@5", "hr@10", "hr@20", "ndcg@20", "mrr@10", "coverage"} <= set(m)


def test_windows_predict_every_target_once():
    seq = list(range(1, 12))
    ws = _windows(seq, 4)
    assert all(len(w) <= 5 for w in ws)
    targets = sorted(t for w in ws for t in w[1:])
    assert targets == seq[1:]
    assert ws[0][-1] == 11  # newest window first, ending at the newest item
    assert _windows([5], 4) == [] and _windows([], 4) == []
