"""``rerankd model list`` output from a roll-out state and Triton's answer (a fake Triton)."""

import shutil

from cli.model import _list
from contract.model_spec import Manifest, ModelSpec
from server.triton.rollout import Rollout, RolloutState, write_state
from tests.fixtures import TOKENIZER_JSON


class Index:
    def __init__(self, states):
        self.states = states

    def get_model_repository_index(self, as_json=True, client_timeout=None):
        return {"models": [{"name": "reranker", "version": v, "state": s} for v, s in self.states.items()]}

    def close(self):
        pass


def test_list_shows_roles_states_and_validation_figures(tmp_path, capsys):
    for v in ("1", "2", "3"):
        folder = tmp_path / "reranker" / v
        folder.mkdir(parents=True)
        shutil.copyfile(TOKENIZER_JSON, folder / "tokenizer.json")
        Manifest(spec=ModelSpec.shared_prefix(), base_model="tiny", engine="openvino_int8",
                 metrics={"validation": {"blend": {"metrics": {"ndcg@10": 0.1276, "users": 943}}}}
                 ).write(folder / "manifest.json")
    write_state(tmp_path, "reranker", RolloutState("2", "3", 0.1, ("1",)))
    r = Rollout("x:1", tmp_path, "reranker", out=lambda s: None)
    r._clients = {"x:1": Index({"2": "READY", "3": "LOADING"})}
    assert _list(r, as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model reranker: serving 2, candidate 3 for 10.0% of users, previous 1")
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert rows["1"][:3] == ["1", "previous", "-"]
    assert rows["2"][:5] == ["2", "serving", "READY", "shared_prefix", "openvino_int8"]
    assert rows["3"][:3] == ["3", "candidate", "LOADING"]
    assert "blend ndcg@10 0.1276" in out[3] and "users" not in out[3]
