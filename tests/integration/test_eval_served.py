"""``rerankd eval`` end to end through the served path: a (tiny) trained model version is
served by real Triton behind a real gateway process with a store loaded up to the split;
the served metrics must equal the in-process ones."""

import pytest

from contract.blend import Blend
from tests.integration.conftest import triton_install

pytestmark = pytest.mark.integration

USERS = [str(u) for u in range(1, 9)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, movielens_folder):
    from training.config import TrainConfig
    from training.data import TrainingData
    from training.train import train

    triton_install()
    folder = movielens_folder
    data = TrainingData.load(folder, users=USERS)
    repo = tmp_path_factory.mktemp("eval_repo")
    cfg = TrainConfig(base_model=str(tiny_model_dir), max_steps=2, negatives=3, lists_per_step=2,
                      budget_min=5, checkpoint_every_min=0, blend_grid=(0.0, 0.5), positives="all")
    res = train(cfg, data, repo=repo, work_dir=tmp_path_factory.mktemp("work"), log=lambda *_: None)
    return folder, data, repo / "reranker" / str(res.version)


def test_served_and_in_process_evaluations_agree(trained, tmp_path):
    from evaluation.evaluate import run_eval

    folder, data, vdir = trained
    rep = run_eval(vdir, split_name="test", paths=("served", "in-process"), blend=Blend(model_weight=0.5, retrieval_weight=0.5),
                   data_dir=folder, split=data.split, items=list(data.items.values()),
                   reports_dir=tmp_path / "reports", score_all=True, work_dir=tmp_path, log=lambda *_: None)
    served, local = rep.paths["served"], rep.paths["in-process"]
    agree = rep.info["agreement"]
    assert agree["users"] == len(USERS)
    assert agree["max_abs_model_score_diff"] < 1e-4
    assert agree["identical_final_orders"] == len(USERS)
    for order in ("retriever", "random", "model", "final", "pop"):
        for key, value in local[order].items():
            assert served[order][key] == pytest.approx(value, abs=1e-9), (order, key)
    assert rep.info["served"]["served_version"] == vdir.name
    assert (tmp_path / "reports" / f"eval-test-v{vdir.name}.md").is_file()
