"""``rerankd eval --cold-start`` end to end through the served path: two tiny trained
versions (one holding items out, one trained on every item) served by real Triton behind a
real gateway; the gateway must read every held-out item from text for the first and from
its token for the second, and the report must carry every table of the protocol."""

import json

import pytest

from tests.integration.conftest import triton_install

pytestmark = pytest.mark.integration

USERS = [str(u) for u in range(1, 41)]


def _train(data, repo, work, tiny_model_dir, holdout: float):
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(base_model=str(tiny_model_dir), max_steps=2, negatives=3, lists_per_step=2,
                      budget_min=5, checkpoint_every_min=0, blend_grid=(0.0, 0.5), positives="all",
                      engine="onnxruntime", cold_holdout=holdout, valid_users=5)
    res = train(cfg, data, repo=repo, work_dir=work, log=lambda *_: None)
    return repo / "reranker" / str(res.version)


def test_cold_start_protocol_through_the_served_path(tmp_path, tiny_model_dir, movielens_folder):
    from contract.model_spec import Manifest
    from evaluation.cold_lists import held_out_items
    from evaluation.coldstart import run_cold_eval
    from training.data import TrainingData

    triton_install()
    cold_data = TrainingData.load(movielens_folder, users=USERS, cold_holdout=0.3, cold_seed=0)
    warm_data = TrainingData.load(movielens_folder, users=USERS)
    cold_dir = _train(cold_data, tmp_path / "cold_repo", tmp_path / "w1", tiny_model_dir, 0.3)
    warm_dir = _train(warm_data, tmp_path / "warm_repo", tmp_path / "w2", tiny_model_dir, 0.0)
    manifest = Manifest.read(cold_dir / "manifest.json")
    assert held_out_items(manifest) == cold_data.cold and len(cold_data.cold) > 100
    assert not set(manifest.item_tokens) & cold_data.cold  # the manifest says who has a token
    assert set(manifest.item_tokens) == set(cold_data.warm_items)

    rep = run_cold_eval(cold_dir, warm_dir, split_name="test", path="served", data_dir=movielens_folder,
                        reports_dir=tmp_path / "reports", work_dir=tmp_path, log=lambda *_: None,
                        split=cold_data.split, items=list(cold_data.items.values()))
    cold, mixed = rep.metrics["cold"], rep.metrics["mixed"]
    assert set(cold) >= {"model", "warm_reference", "random", "content", "genre"}
    assert set(mixed) >= {"model", "warm_reference", "final", "retriever", "random", "content", "genre"}
    assert mixed["model"]["lists"] == len(USERS) and cold["model"]["lists"] >= 1
    check = rep.info["mixed_model_text_scored"]
    assert check["cold_scored_from_text"] == check["cold_candidates"] == 5 * len(USERS)
    assert check["warm_candidates_scored_from_text"] == 0
    warm_check = rep.info["mixed_warm_reference_text_scored"]
    assert warm_check["cold_scored_from_text"] == 0  # the same items, warm: read from their tokens
    # The retriever never proposes a cold item: they enter the mixed lists at the bottom.
    assert mixed["retriever"]["cold_top10_share"] == 0.0
    written = json.loads((tmp_path / "reports" / f"coldstart-test-v{cold_dir.name}.json").read_text())
    assert written["metrics"]["mixed"]["model"]["ndcg@10"] == pytest.approx(mixed["model"]["ndcg@10"])
    assert (tmp_path / "reports" / f"coldstart-test-v{cold_dir.name}.png").is_file()
