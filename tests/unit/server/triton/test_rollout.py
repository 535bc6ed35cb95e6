"""Roll-out state, canary bucketing, the config's version policy, the watcher's choice of
version with a fake scorer, and the commands' refusals (no Triton needed for those)."""

import asyncio
import hashlib
import json
import shutil

import pytest

from contract.model_spec import Manifest, ModelSpec
from server.errors import InvalidArgument, NotFound, Unavailable
from server.triton.models import ModelWatcher
from server.triton.rollout import (
    Rollout,
    RolloutState,
    canary_bucket,
    config_inputs,
    read_state,
    routes_to_candidate,
    with_versions,
    write_state,
)
from tests.fixtures import TOKENIZER_JSON

SALT = "test-salt"


def make_version(repo, version, spec=None):
    folder = repo / "reranker" / version
    folder.mkdir(parents=True)
    shutil.copyfile(TOKENIZER_JSON, folder / "tokenizer.json")
    Manifest(spec=spec or ModelSpec.shared_prefix(), base_model="tiny").write(folder / "manifest.json")
    return folder


class FakeScorer:
    def __init__(self, ready):
        self.ready = list(ready)

    async def ready_versions(self, model_name, timeout_s=2.0):
        return list(self.ready)


# -- state ------------------------------------------------------------------------------------
def test_state_round_trips_atomically(tmp_path):
    (tmp_path / "reranker").mkdir()
    assert read_state(tmp_path, "reranker") is None
    written = write_state(tmp_path, "reranker", RolloutState("3", "4", 0.1, ("2",)))
    assert written.updated_at
    got = read_state(tmp_path, "reranker")
    assert got == written and got.versions == ["3", "4"]
    assert json.loads((tmp_path / "reranker" / "rollout.json").read_text())["candidate"] == "4"
    assert not [p for p in (tmp_path / "reranker").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("text, field", [
    ("{not json", "rollout.json"),
    ('{"serving": "x"}', "serving"),
    ('{"serving": "3", "share": 1.5}', "share"),
    ('{"candidate": "4"}', "serving"),
])
def test_bad_state_files_are_refused_with_the_field(tmp_path, text, field):
    (tmp_path / "reranker").mkdir()
    (tmp_path / "reranker" / "rollout.json").write_text(text)
    with pytest.raises(InvalidArgument) as err:
        read_state(tmp_path, "reranker")
    assert err.value.field == field


# -- bucketing ------------------------------------------------------------------------------------
def test_bucket_is_a_fixed_hash_of_salt_and_user():
    digest = hashlib.sha256(b"test-salt\x00user-1").digest()
    assert canary_bucket(SALT, "user-1") == int.from_bytes(digest[:8], "big") / 2.0 ** 64
    assert canary_bucket(SALT, "user-1") == canary_bucket(SALT, "user-1")
    assert canary_bucket("other", "user-1") != canary_bucket(SALT, "user-1")


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_share_of_users_routed_is_within_2_points(share):
    users = [str(u) for u in range(10_000)]
    routed = sum(routes_to_candidate(SALT, u, share) for u in users) / len(users)
    assert abs(routed - share) <= 0.02


def test_raising_the_share_only_adds_users():
    users = [f"u{k}" for k in range(2000)]
    at10 = {u for u in users if routes_to_candidate(SALT, u, 0.1)}
    at30 = {u for u in users if routes_to_candidate(SALT, u, 0.3)}
    assert at10 < at30
    assert not any(routes_to_candidate(SALT, u, 0.0) for u in users)
    assert all(routes_to_candidate(SALT, u, 1.0) for u in users)


# -- config.pbtxt ------------------------------------------------------------------------------------
def test_version_policy_is_replaced_and_the_rest_kept():
    text = ModelSpec.shared_prefix().config_pbtxt()
    out = with_versions(text, ["4", "3"])
    assert "version_policy: { specific: { versions: [ 3, 4 ] } }" in out
    assert "latest" not in out
    assert out.replace("version_policy: { specific: { versions: [ 3, 4 ] } }", "") == \
        text.replace("version_policy: { latest: { num_versions: 1 } }", "")
    assert config_inputs(out) == ("input_ids", "cand_index", "positions")
    again = with_versions(out, ["5"])
    assert again.count("version_policy") == 1 and "[ 5 ]" in again


def test_a_config_without_a_policy_gets_one():
    out = with_versions('name: "reranker"\nbackend: "python"\n', ["2"])
    assert out.endswith("version_policy: { specific: { versions: [ 2 ] } }\n")


# -- the watcher ------------------------------------------------------------------------------------
def watcher(repo, ready, **kw):
    return ModelWatcher(FakeScorer(ready), repo, "reranker", canary_salt=SALT, **kw)


def test_without_a_file_the_newest_ready_version_serves(tmp_path):
    for v in ("1", "2"):
        make_version(tmp_path, v)
    w = watcher(tmp_path, ["1", "2"])
    asyncio.run(w.refresh())
    assert w.require("anyone").version == "2" and w.candidate is None


def test_the_file_picks_serving_and_candidate_by_user_bucket(tmp_path):
    for v in ("1", "2", "3"):
        make_version(tmp_path, v)
    write_state(tmp_path, "reranker", RolloutState("2", "3", 0.3))
    w = watcher(tmp_path, ["2", "3"])
    asyncio.run(w.refresh())
    users = [f"user{k}" for k in range(3000)]
    for u in users:
        want = "3" if canary_bucket(SALT, u) < 0.3 else "2"
        assert w.require(u).version == want
    share = sum(w.require(u).version == "3" for u in users) / len(users)
    assert abs(share - 0.3) < 0.03


def test_candidate_not_ready_serves_everyone_the_serving_version(tmp_path):
    for v in ("2", "3"):
        make_version(tmp_path, v)
    write_state(tmp_path, "reranker", RolloutState("2", "3", 1.0))
    w = watcher(tmp_path, ["2"])
    asyncio.run(w.refresh())
    assert w.candidate is None and {w.require(f"u{k}").version for k in range(50)} == {"2"}
    w._scorer.ready = ["2", "3"]  # the candidate becomes READY: followed at the next poll
    asyncio.run(w.refresh())
    assert {w.require(f"u{k}").version for k in range(50)} == {"3"}


def test_serving_version_not_ready_falls_back_to_the_newest_ready(tmp_path):
    for v in ("2", "3"):
        make_version(tmp_path, v)
    write_state(tmp_path, "reranker", RolloutState("2"))
    w = watcher(tmp_path, ["3"])
    asyncio.run(w.refresh())
    assert w.require("u").version == "3"
    w._scorer.ready = ["2", "3"]
    asyncio.run(w.refresh())
    assert w.require("u").version == "2"  # the file's serving version once it is READY


def test_promotion_and_a_bad_file(tmp_path):
    for v in ("2", "3"):
        make_version(tmp_path, v)
    write_state(tmp_path, "reranker", RolloutState("2", "3", 0.5))
    w = watcher(tmp_path, ["2", "3"])
    asyncio.run(w.refresh())
    write_state(tmp_path, "reranker", RolloutState("3", previous=("2",)))
    asyncio.run(w.refresh())
    assert w.require("u").version == "3" and w.candidate is None
    (tmp_path / "reranker" / "rollout.json").write_text("{broken")
    asyncio.run(w.refresh())  # logged; the state in force stays
    assert w.require("u").version == "3"


def test_a_pinned_version_ignores_the_file(tmp_path):
    for v in ("2", "3"):
        make_version(tmp_path, v)
    write_state(tmp_path, "reranker", RolloutState("3", "2", 1.0))
    w = watcher(tmp_path, ["2", "3"], pinned_version="2")
    asyncio.run(w.refresh())
    assert w.require("u").version == "2" and w.candidate is None


# -- command refusals (they happen before Triton is asked to change anything) -------------------
class NoTriton(Rollout):
    """Rollout whose Triton state is given, so the checks run without a server."""

    def __init__(self, repo, states):
        super().__init__("127.0.0.1:1", repo, "reranker", poll_interval_s=0.0, settle_s=0.0, out=lambda s: None)
        self._states = states
        self.held = []

    def triton_states(self):
        return dict(self._states)

    def _hold(self, versions):
        self.held.append(list(versions))

    def _wait_followed(self):
        pass


@pytest.fixture
def repo(tmp_path):
    for v in ("1", "2"):
        make_version(tmp_path, v)
    make_version(tmp_path, "3", spec=ModelSpec())  # pairwise: another input layout
    (tmp_path / "reranker" / "config.pbtxt").write_text(ModelSpec.shared_prefix().config_pbtxt())
    return tmp_path


def test_unload_refuses_the_serving_version(repo):
    r = NoTriton(repo, {"2": "READY"})
    with pytest.raises(InvalidArgument, match="is serving"):
        r.unload("2")
    assert read_state(repo, "reranker").serving == "2"  # pinned first: the newest READY


def test_canary_across_layouts_is_refused_with_a_clear_message(repo):
    r = NoTriton(repo, {"2": "READY"})
    with pytest.raises(InvalidArgument, match="pairwise .* cannot be loaded together"):
        r.canary("3", 0.1)
    assert r.held == [] and read_state(repo, "reranker").candidate == ""


def test_missing_version_and_bad_share(repo):
    r = NoTriton(repo, {"2": "READY"})
    with pytest.raises(NotFound, match="does not exist"):
        r.load("9")
    with pytest.raises(InvalidArgument) as err:
        r.canary("1", 0.0)
    assert err.value.field == "share"
    with pytest.raises(InvalidArgument, match="nothing to roll back"):
        r.rollback()


class FakeTriton:
    def __init__(self, states, fail=False):
        self.states, self.fail, self.loads = states, fail, 0

    def get_model_repository_index(self, as_json=True, client_timeout=None):
        return {"models": [{"name": "reranker", "version": v, "state": st} for v, st in self.states.items()]}

    def load_model(self, name):
        from tritonclient.utils import InferenceServerException

        self.loads += 1
        if self.fail:
            raise InferenceServerException("version 2 failed to load")

    def close(self):
        pass


def test_several_tritons_each_load_and_ready_means_ready_on_all(repo):
    r = Rollout("a:1, b:2", repo, "reranker", out=lambda s: None)
    r._clients = {"a:1": FakeTriton({"1": "READY", "2": "READY"}), "b:2": FakeTriton({"1": "READY"})}
    assert r.urls == ["a:1", "b:2"]
    assert r.triton_states() == {"1": "READY", "2": "a:1=READY b:2=-"}
    assert r.ready() == ["1"]
    with pytest.raises(Unavailable, match="not READY"):
        r._hold(["1", "2"])
    assert [c.loads for c in r._clients.values()] == [1, 1]


def test_a_failed_load_puts_the_config_back(repo):
    path = repo / "reranker" / "config.pbtxt"
    before = path.read_text()
    r = Rollout("a:1", repo, "reranker", out=lambda s: None)
    r._clients = {"a:1": FakeTriton({"1": "READY"}, fail=True)}
    with pytest.raises(Unavailable, match="could not load"):
        r._hold(["1", "2"])
    assert path.read_text() == before
