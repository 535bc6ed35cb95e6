"""``scored_from`` through the real gateway and real Triton: a (tiny) trained version with
item-ID tokens reads a catalogue item from its token, and an item it has no token for (an
item upserted after training, an inline-text candidate) from its text alone."""

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from tests.integration.conftest import launch_stack, triton_install

pytestmark = pytest.mark.integration

USERS = [str(u) for u in range(1, 9)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, movielens_folder):
    """(training data, version folder, stub) of a tiny model trained with item tokens (the
    default), served alone by Triton behind a gateway with an empty store."""
    from training.config import TrainConfig
    from training.data import TrainingData
    from training.train import train

    triton_install()
    data = TrainingData.load(movielens_folder, users=USERS)
    repo = tmp_path_factory.mktemp("scored_from_repo")
    # onnxruntime: the served engine does not matter here, and it skips the int8 variant's checks.
    cfg = TrainConfig(base_model=str(tiny_model_dir), max_steps=2, negatives=3, lists_per_step=2,
                      budget_min=5, checkpoint_every_min=0, blend_grid=(0.0, 0.5), positives="all",
                      engine="onnxruntime")
    res = train(cfg, data, repo=repo, work_dir=tmp_path_factory.mktemp("work"), log=lambda *_: None)
    assert cfg.item_tokens and res.version is not None
    vdir = repo / "reranker" / str(res.version)
    with launch_stack(repo, tmp_path_factory.mktemp("logs")) as stack, grpc.insecure_channel(stack.addr) as ch:
        yield data, vdir, pb_grpc.RerankerStub(ch)


def _pb_item(item, item_id=None):
    return pb.Item(item_id=item_id or item.item_id, title=item.title, text=item.text, attributes=item.attributes)


def test_token_items_and_cold_items_are_told_apart_in_the_reply_and_in_explain(served):
    from tokenizers import Tokenizer

    data, vdir, stub = served
    vocab = Tokenizer.from_file(str(vdir / "tokenizer.json"))
    warm = next(i for i in sorted(data.items, key=int) if vocab.token_to_id(f"[i{i}]") is not None)
    assert vocab.token_to_id("[inew-1]") is None
    # The same film under a new id: a catalogue item added after training has no token.
    stub.UpsertItems(pb.UpsertItemsRequest(items=[_pb_item(data.items[warm]),
                                                  _pb_item(data.items[warm], "new-1")]), timeout=30)
    cands = [pb.Candidate(item_id=warm), pb.Candidate(item_id="new-1"),
             pb.Candidate(item_id="inline-1", text="A film nobody catalogued (2031)"),
             pb.Candidate(item_id="ghost")]
    expected = {warm: pb.SCORED_FROM_ID_TOKEN, "new-1": pb.SCORED_FROM_TEXT,
                "inline-1": pb.SCORED_FROM_TEXT, "ghost": pb.SCORED_FROM_UNSPECIFIED}
    for explain in (False, True):
        resp = stub.Rerank(pb.RerankRequest(user_id="1", candidates=cands, explain=explain), timeout=30)
        by_id = {i.item_id: i for i in resp.items}
        assert {k: i.scored_from for k, i in by_id.items()} == expected, explain
        assert [k for k, i in by_id.items() if i.unscored] == ["ghost"]
        # Same title and attributes, different scores: the model really read the token for one.
        assert by_id[warm].model_score != by_id["new-1"].model_score
        if explain:
            assert {k: i.explanation.scored_from for k, i in by_id.items()} == expected
        else:
            assert not any(i.HasField("explanation") for i in resp.items)


def test_a_cold_items_score_follows_its_text_at_once(served):
    """New ids (no token) are scored from their text alone: the same text scores the same
    whatever the id, different texts differently, and an upsert changes the very next score."""
    data, _, stub = served

    def upsert(**texts):
        stub.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id=i, title=t, attributes={"genres": "Drama"}) for i, t in texts.items()]), timeout=30)

    def scores(*ids):
        resp = stub.Rerank(pb.RerankRequest(user_id="1", candidates=[pb.Candidate(item_id=i) for i in ids]),
                           timeout=30)
        assert all(it.scored_from == pb.SCORED_FROM_TEXT for it in resp.items)
        return {it.item_id: it.model_score for it in resp.items}

    upsert(**{"cold-a": "A quiet documentary about mountains", "cold-b": "A quiet documentary about mountains",
              "cold-c": "A loud action sequel"})
    # Same text, same score: exactly for pairs; for a shared-prefix row up to float rounding
    # (the same tokens at other columns of the row), far below the gap between texts.
    same = lambda a, b: abs(a - b) < 1e-6  # noqa: E731
    first = scores("cold-a", "cold-b", "cold-c")
    assert same(first["cold-a"], first["cold-b"]) and abs(first["cold-a"] - first["cold-c"]) > 1e-4
    upsert(**{"cold-b": "A loud action sequel"})
    second = scores("cold-a", "cold-b", "cold-c")
    assert same(second["cold-b"], second["cold-c"]) and abs(second["cold-b"] - second["cold-a"]) > 1e-4
    assert same(second["cold-a"], first["cold-a"])
