import pytest

from evaluation.retriever import ItemKNNRetriever, PopRetriever
from interactions.movielens import Interaction


def train_of(histories: dict[str, list[str]]):
    out, row = [], 0
    for user, items in histories.items():
        for t, item in enumerate(items):
            out.append(Interaction(user, item, 4.0, t, row))
            row += 1
    return out


TRAIN = train_of({"u1": ["1", "2"], "u2": ["1", "2", "3"], "u3": ["3", "4"]})


def test_pop_masks_history_and_breaks_ties_by_numeric_id():
    pop = PopRetriever().fit(train_of({"a": ["10", "2", "7"], "b": ["10", "2"]}), items=["99"])
    # "2" before "10": numeric order, not text order
    assert pop.retrieve([], k=10) == [("2", 2.0), ("10", 2.0), ("7", 1.0), ("99", 0.0)]
    assert pop.retrieve(["2"], k=2) == [("10", 2.0), ("7", 1.0)]
    assert pop.retrieve(["10", "2", "7", "99"], k=5) == []


def test_itemknn_cosine_scores_and_pop_fill():
    knn = ItemKNNRetriever(recent=1).fit(TRAIN, neighbours=None, items=["5"])
    got = knn.retrieve(["1"], k=4)
    # sim(1,2)=2/sqrt(2*2)=1, sim(1,3)=1/sqrt(2*2)=0.5, sim(1,4)=0 -> 4 then 5 come from Pop
    assert [i for i, _ in got] == ["2", "3", "4", "5"]
    assert got[0][1] == pytest.approx(1.0) and got[1][1] == pytest.approx(0.5)
    assert got[2][1] == got[3][1] == 0.0
    # sum over the recent items: from ["3", "1"] (3 most recent) with recent=2
    got = dict(knn.retrieve(["3", "1"], k=2, recent=2))
    assert got == pytest.approx({"2": 1.0 + 0.5, "4": 2 ** -0.5})


def test_itemknn_masks_history_returns_k_and_is_deterministic():
    histories = {f"u{u}": [str((u * 7 + j * 3) % 40 + 1) for j in range(8)] for u in range(30)}
    train = train_of(histories)
    a = ItemKNNRetriever(recent=3).fit(train, neighbours=5)
    b = ItemKNNRetriever(recent=3).fit(list(reversed(train)), neighbours=5)
    for items in histories.values():
        hist = items[::-1]
        got = a.retrieve(hist, k=20)
        assert len(got) == 20
        assert not set(hist) & {i for i, _ in got}
        assert len({i for i, _ in got}) == 20
        assert got == b.retrieve(hist, k=20)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)


def test_itemknn_neighbour_pruning_and_unknown_history():
    knn = ItemKNNRetriever(recent=5).fit(TRAIN, neighbours=1)
    # item 1 keeps only its best neighbour (2); 3 and 4 are then Pop fill
    assert knn.retrieve(["1"], k=1) == [("2", pytest.approx(1.0))]
    assert [s for _, s in knn.retrieve(["1"], k=3)][1:] == [0.0, 0.0]
    # unseen items in history are skipped, not an error; an empty history is pure Pop
    assert knn.retrieve(["nope", "1"], k=1)[0][0] == "2"
    assert [i for i, _ in knn.retrieve([], k=4)] == [i for i, _ in PopRetriever().fit(TRAIN).retrieve([], k=4)]


def test_transition_teacher_counts_by_hand():
    from types import SimpleNamespace

    import numpy as np

    from evaluation.retriever import TransitionTeacher

    # Train sequences (oldest first): u1: a b c, u2: a c. history(u, "valid") is newest first.
    seqs = {"u1": ["a", "b", "c"], "u2": ["a", "c"]}
    split = SimpleNamespace(users=list(seqs), history=lambda u, upto: seqs[u][::-1])
    t = TransitionTeacher(split, ["a", "b", "c"], upto="valid", window=1, recent=2, decay=0.5)
    # Transitions within 1 step: a->b, b->c, a->c; column counts b: 1, c: 2.
    # History [b, a] (newest first): score(c) = 1 * T[b,c] + 0.5 * T[a,c] = 1/sqrt2 + 0.5/sqrt2.
    got = t.scores(["b", "a"], ["c", "b", "zz"])
    np.testing.assert_allclose(got, [1.5 / np.sqrt(2.0), 0.5 * 1.0, 0.0], rtol=1e-6)
    assert not t.scores([], ["a"]).any()  # no history: no opinion
