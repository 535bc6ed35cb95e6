"""The cold-start protocol: held-out items never reach training, the lists are built as
stated, and the metrics match hand-worked examples."""

import random

import numpy as np
import pytest

from contract.items import Item
from contract.render import Renderer, RenderOptions
from evaluation.baselines import genre_scores
from evaluation.cold_lists import (
    ColdList,
    auc,
    build_cold_lists,
    cold_items,
    expected_random_ndcg,
    list_metrics,
    order_by,
    top_share,
    warm_interactions,
)
from interactions.movielens import Interaction, leave_one_out


def test_cold_items_are_a_seeded_share_of_the_catalogue():
    ids = [str(i) for i in range(1, 1001)]
    a = cold_items(ids, 0.1, seed=0)
    assert len(a) == 100 and a <= set(ids)
    assert a == cold_items(list(reversed(ids)), 0.1, seed=0)  # order of the input does not matter
    assert a != cold_items(ids, 0.1, seed=1)
    assert cold_items(ids, 0.0) == frozenset()
    with pytest.raises(ValueError):
        cold_items(ids, 1.0)


def test_warm_interactions_drop_every_cold_row():
    rows = [Interaction("u", i, 1.0, t, t) for t, i in enumerate("abcab")]
    assert [x.item_id for x in warm_interactions(rows, {"b"})] == ["a", "c", "a"]
    assert warm_interactions(rows, ()) == rows


# -- hand-worked metrics --------------------------------------------------------------------------
def test_auc_counts_ties_half():
    assert auc(0.9, [0.1, 0.5, 0.9, 1.2]) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert np.isnan(auc(1.0, []))


def test_top_share_and_expected_random_ndcg():
    order = ["a", "x", "b", "y", "c"]
    assert top_share(order, {"x", "y"}, k=4) == 0.5
    assert top_share(order, {"x", "y"}, k=10) == 2 / 5  # a short list: its length is the denominator
    # 1/log2(2) + 1/log2(3) over 3 candidates, k=2
    assert expected_random_ndcg(3, k=2) == pytest.approx((1 + 1 / np.log2(3)) / 3)


def test_list_metrics_on_a_hand_worked_pair_of_lists():
    l1 = ColdList("mixed", "u1", [], ["w1", "w2", "c1", "c2"], [3, 2, 0, 0], frozenset({"c1", "c2"}), "c1")
    l2 = ColdList("mixed", "u2", [], ["w3", "w4", "c3", "c4"], [3, 2, 0, 0], frozenset({"c3", "c4"}), "w9")
    orders = {"u1": ["c2", "c1", "w1", "w2"], "u2": ["w3", "c3", "w4", "c4"]}
    scores = {"u1": [0.1, 0.0, 0.5, 0.9], "u2": [0.9, 0.1, 0.5, 0.0]}
    m = list_metrics([l1, l2], orders, scores)
    assert m["covered"] == 1  # u2's target is not in its list
    assert m["ndcg@10"] == pytest.approx(1 / np.log2(3))  # c1 at rank 2
    assert m["hr@10"] == 1.0
    assert m["cold_top10_share"] == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert m["cold_target_auc"] == 0.0 and m["auc_lists"] == 1  # c1 (0.5) below c2 (0.9)


def test_baseline_ties_are_broken_at_random_not_by_item_id():
    cands = [str(i) for i in range(1, 51)]
    firsts = {order_by(cands, [0.0] * 50, f"s:{n}")[0] for n in range(30)}
    assert len(firsts) > 10
    assert order_by(cands, [0.0] * 50) == sorted(cands)  # the gateway's tie-break, for models
    assert order_by(["a", "b", "c"], [0.1, 0.3, 0.2], "s") == ["b", "c", "a"]


def test_genre_overlap_prefers_the_history_genres():
    items = {"h1": Item("h1", "", "", {"genres": "Action|Sci-Fi"}), "h2": Item("h2", "", "", {"genres": "Action"}),
             "a": Item("a", "", "", {"genres": "Action"}), "b": Item("b", "", "", {"genres": "Drama"}),
             "c": Item("c", "", "", {})}
    s = genre_scores(["h1", "h2"], ["a", "b", "c"], items)
    assert s[0] > s[1] == s[2] == 0.0


# -- the split: nothing held out leaks into training -------------------------------------------------
def _synthetic(n_users=40, n_items=60, length=12, seed=0):
    rng = random.Random(seed)
    rows, t = [], 0
    for u in range(n_users):
        for _ in range(length):
            rows.append(Interaction(str(u), str(rng.randrange(1, n_items + 1)), 4.0, t, t))
            t += 1
    items = [Item(str(i), f"Film {i}", "", {"genres": rng.choice(["Action", "Drama", "Comedy"])})
             for i in range(1, n_items + 1)]
    return rows, items


def test_training_never_sees_a_held_out_item_as_target_negative_or_token(tmp_path):
    pytest.importorskip("torch")
    from export.tiny import make_tiny_model
    from training.config import TrainConfig
    from training.data import ExampleSampler, TrainingData, training_positions
    from training.encoder import TrainEncoder
    from training.model import build_model

    rows, items = _synthetic()
    cold = cold_items([i.item_id for i in items], 0.2, seed=3)
    data = TrainingData.from_parts(leave_one_out(rows), items, cold=cold)
    assert data.cold == cold and not set(data.warm_items) & cold
    # the retriever learnt nothing of them and never proposes one
    for u in data.split.users:
        assert not {i for i, _ in data.knn.retrieve(data.split.history(u), 50)} & cold
    cfg = TrainConfig(negatives=7, random_negatives=3, positives="all", id_dropout=0.5, history_id_dropout=0.5)
    sampler = ExampleSampler(data, cfg, seed=0)
    examples = [ex for ex in (sampler.example(u, t) for u, t in training_positions(data.split)) if ex]
    assert examples and all(p not in cold and not set(n) & cold for _, p, n in examples)
    held_in_history = sum(1 for h, _, _ in examples for i in h if i in cold)
    assert held_in_history > 0  # they do occur in histories, where they are read as text

    cfg.base_model = str(make_tiny_model(tmp_path / "tiny"))
    _, tok, _ = build_model(cfg, data.warm_items, log=lambda *_: None, split=data.split)
    fmt = cfg.render_options().token_format
    assert all(tok.token_to_id(fmt.format(i)) is None for i in cold)
    assert all(tok.token_to_id(fmt.format(i)) is not None for i in data.warm_items)
    # a held-out item in a history renders as its title, like any item without a token
    enc = TrainEncoder(tok, cfg.render_options(), data.items, 64)
    c = sorted(cold)[0]
    user, texts = enc.texts([c, sorted(data.warm_items)[0]], [sorted(data.warm_items)[1]])
    assert f"Film {c}" in user and fmt.format(c) not in user


def test_id_dropout_renders_the_dropped_items_exactly_as_cold_items_read():
    items = {"1": Item("1", "Toy Story", "", {"genres": "Comedy"}), "2": Item("2", "Heat", "", {"genres": "Crime"})}
    known = {"[i1]", "[i2]"}
    r = Renderer(RenderOptions(item_tokens=True, history_titles=False, item_text=False), known.__contains__)
    cold_view = Renderer(RenderOptions(item_tokens=True, history_titles=False, item_text=False), {"[i2]"}.__contains__)
    assert r.item(items["1"], use_token=False) == cold_view.item(items["1"]) == "Toy Story | genres: Comedy"
    assert r.user([items["1"], items["2"]], text_only={"1"}) == cold_view.user([items["1"], items["2"]]) \
        == "Toy Story [i2]"
    assert r.item(items["1"]) == "[i1]"


def test_cold_and_mixed_lists_follow_the_protocol():
    from evaluation.retriever import ItemKNNRetriever

    rows, items = _synthetic(n_users=60, n_items=200, length=15, seed=1)
    split = leave_one_out(rows)
    cold = cold_items([i.item_id for i in items], 0.4, seed=0)
    knn = ItemKNNRetriever().fit(warm_interactions(split.interactions("test"), cold),
                                 items=[i.item_id for i in items if i.item_id not in cold])
    lists = build_cold_lists(split, cold, knn, "test", seed=0)
    assert lists == build_cold_lists(split, cold, knn, "test", seed=0)  # seeded
    cold_lists = [el for el in lists if el.kind == "cold"]
    mixed = [el for el in lists if el.kind == "mixed"]
    assert len(mixed) == len(split.test)
    assert len(cold_lists) == sum(1 for t in split.test.values() if t in cold) > 0
    for el in cold_lists:
        assert el.target in el.candidates and set(el.candidates) <= cold and len(el.candidates) == 50
        assert not set(el.candidates) & (set(el.history) - {el.target})
    for el in mixed:
        assert len(el.candidates) == 50 and len(el.cold) == 5 and el.cold == set(el.candidates[-5:])
        assert not set(el.candidates[:45]) & cold
        assert (el.target in el.cold) == (el.target in cold)
        assert all(r == min(el.retrieval) for r in el.retrieval[-5:])
        assert not (el.cold - {el.target}) & set(el.history)  # (synthetic users may repeat an item)


# -- calibration: text-read items onto the token-read items' scale --------------------------------
def test_apply_text_offset_moves_only_the_text_read_scores():
    from contract.calibration import apply_text_offset

    assert apply_text_offset([1.0, 2.0, 3.0], [True, False, True], -0.5) == [0.5, 2.0, 2.5]
    assert apply_text_offset([1.0], [True], 0.0) == [1.0]


def test_the_offset_gives_text_read_items_the_share_they_take_as_tokens():
    """A fake model that scores every item read from text exactly 1.0 above the same item read
    from its token: the offset found must undo that, and the shares then match."""
    from types import SimpleNamespace

    from evaluation.text_offset import choose_text_offset

    rng = random.Random(0)
    items = [str(i) for i in range(1, 401)]
    base = {i: rng.uniform(0.0, 3.0) for i in items}

    class Enc:
        renderer = SimpleNamespace(options=SimpleNamespace(item_tokens=True))

        def encode_lists(self, lists, rng=None, text_only=None):
            return {"rows": [(c, c in t) for (_, cands), t in zip(lists, text_only) for c in cands]}

    def scorer(arrays):
        return np.array([base[c] + (1.0 if text else 0.0) for c, text in arrays["rows"]])

    valid = []
    for u in range(120):
        cands = rng.sample(items[:200], 50)
        valid.append((str(u), [items[-1 - u]], cands, [0.0] * 50))
    scores = [np.array([base[c] for c in cands]) for _, _, cands, _ in valid]
    data = SimpleNamespace(warm_items=dict.fromkeys(items), split=SimpleNamespace(valid={}))
    got = choose_text_offset(valid, scores, data, Enc(), scorer)
    assert got["share_text"] > got["share_token"] > 0
    assert got["share_text_calibrated"] == pytest.approx(got["share_token"])
    assert -1.3 <= got["offset"] <= -0.7 and got["lists"] == 120


def test_the_offset_lets_relevant_text_read_items_keep_the_share_they_take_as_tokens():
    """Read from its token, a user's next item scores far above everything; read from text it
    scores like any other item (the model reads it less sharply). The lists that hold the
    target among the new items (a tenth) must pull the offset up from what the irrelevant
    items alone would give (0 here: they score the same either way)."""
    from types import SimpleNamespace

    from evaluation.text_offset import RELEVANT_SHARE, choose_text_offset

    rng = random.Random(2)
    items = [str(i) for i in range(1, 601)]
    base = {i: rng.uniform(0.0, 3.0) for i in items}
    targets = {str(u): items[300 + u] for u in range(300)}
    relevant = set(targets.values())

    class Enc:
        renderer = SimpleNamespace(options=SimpleNamespace(item_tokens=True))

        def encode_lists(self, lists, rng=None, text_only=None):
            return {"rows": [(c, c in t) for (_, cands), t in zip(lists, text_only) for c in cands]}

    def scorer(arrays):
        return np.array([base[c] + (5.0 if c in relevant and not text else 0.0) for c, text in arrays["rows"]])

    valid = []
    for u in range(300):
        cands = rng.sample(items[:300], 49) + [targets[str(u)]]
        valid.append((str(u), [], cands, [0.0] * 50))
    scores = [np.array(scorer({"rows": [(c, False) for c in cands]})) for _, _, cands, _ in valid]
    data = SimpleNamespace(warm_items=dict.fromkeys(items), split=SimpleNamespace(valid=targets))
    got = choose_text_offset(valid, scores, data, Enc(), scorer)
    assert 0.5 * RELEVANT_SHARE * 300 <= got["lists_with_target"] <= 1.5 * RELEVANT_SHARE * 300
    assert got["share_token"] > got["share_text"] and got["offset"] > 0.2
    assert got["share_text_calibrated"] == pytest.approx(got["share_token"], abs=0.005)


def test_a_model_without_item_tokens_needs_no_offset():
    from types import SimpleNamespace

    from evaluation.text_offset import choose_text_offset

    enc = SimpleNamespace(renderer=SimpleNamespace(options=SimpleNamespace(item_tokens=False)))
    assert choose_text_offset([("u", [], ["a"], [0.0])], [np.zeros(1)], None, enc, None)["offset"] == 0.0
