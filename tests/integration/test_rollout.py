"""Roll-outs on a real Triton and a real gateway process: ``rerankd model list``, a canary by
user (each reply's version matches the user's bucket), promote and rollback under a light
steady load with no failed request, and the refusals.

Version 2 is a copy of version 1's folder under a new number: honest for routing (Triton
loads it as a separate instance, cold until warmed), not for comparing models.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.settings import PROJECT_ROOT
from server.triton.launcher import TritonPorts, TritonServer, free_port
from server.triton.rollout import Rollout, read_state, routes_to_candidate
from tests.integration.conftest import gateway_process, triton_install
from tests.prometheus_text import sample, scrape

SALT = "rerankd-canary"  # the default triton.canary_salt
POLL_S = "0.2"


@pytest.fixture(scope="module")
def rollout_stack(tmp_path_factory, model_repo):
    """A Triton of its own on a copy of the session's repository (version 1 loaded), and a
    gateway with metrics on; yields (triton, repo, gateway address, metrics port)."""
    base = tmp_path_factory.mktemp("rollout")
    repo = base / "repo"
    shutil.copytree(model_repo, repo)
    triton = TritonServer(triton_install(), repo, ports=TritonPorts.free(), log_path=base / "triton.log",
                          load_models=["reranker"])
    triton.start()
    try:
        triton.wait_ready(120)
        port = free_port()
        with gateway_process(triton, repo, base / "gateway.log", RERANKD_TRITON_POLL_INTERVAL_S=POLL_S,
                             RERANKD_TELEMETRY_METRICS_PORT=str(port)) as (_, addr):
            yield triton, repo, addr, port
    finally:
        triton.stop()


def cli(triton, repo, *args) -> subprocess.CompletedProcess:
    env = {"RERANKD_TRITON_POLL_INTERVAL_S": POLL_S, "RERANKD_TRITON_ROLLOUT_SETTLE_S": "0.5"}
    return subprocess.run([sys.executable, "-m", "cli", "model", *args, "--triton-url", triton.grpc_url,
                           "--model-repository", str(repo)], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT_ROOT, env={**os.environ, **env})


def rerank(stub, user: str, k: int = 0):
    cands = [pb.Candidate(item_id=f"r{k}-{j}", text=f"film {k} number {j}") for j in range(5)]
    return stub.Rerank(pb.RerankRequest(user_id=user, candidates=cands), timeout=10)


class SteadyLoad:
    """Two closed-loop callers with fresh texts (no score cache hits): counts replies by
    version, failures and degraded replies."""

    def __init__(self, addr: str):
        self.addr = addr
        self.versions: dict[str, int] = {}
        self.failed: list[str] = []
        self.degraded = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]

    def _run(self, i: int) -> None:
        with grpc.insecure_channel(self.addr) as ch:
            stub = pb_grpc.RerankerStub(ch)
            k = 0
            while not self._stop.is_set():
                k += 1
                try:
                    resp = rerank(stub, f"steady-{i}-{k % 50}", k * 2 + i)
                except grpc.RpcError as err:
                    self.failed.append(f"{err.code().name}: {err.details()}")
                    continue
                self.versions[resp.model_version] = self.versions.get(resp.model_version, 0) + 1
                self.degraded += bool(resp.degraded)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(15)


def read_manifest_scoring(repo, version: str) -> str:
    from contract.model_spec import Manifest

    return Manifest.read(repo / "reranker" / version / "manifest.json").spec.scoring


def wait_serving(stub, version: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while rerank(stub, "probe-user-not-in-canary").model_version != version:
        assert time.monotonic() < deadline, f"gateway did not serve version {version}"
        time.sleep(0.1)


def test_list_canary_promote_rollback(rollout_stack):
    triton, repo, addr, metrics_port = rollout_stack
    shutil.copytree(repo / "reranker" / "1", repo / "reranker" / "2")  # a new version folder

    listed = cli(triton, repo, "list")
    assert listed.returncode == 0, listed.stderr
    assert "no rollout.json" in listed.stdout and "serve the newest READY version (1)" in listed.stdout
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[2:]}
    assert "READY" in rows["1"] and "-" in rows["2"].split()[1]
    assert read_manifest_scoring(repo, "1") in rows["1"]

    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        assert rerank(stub, "first").model_version == "1"

        # Canary: 30% of users on version 2, by bucket.
        done = cli(triton, repo, "canary", "2", "--share", "0.3")
        assert done.returncode == 0, done.stderr
        assert "warmed version 2" in done.stdout
        state = read_state(repo, "reranker")
        assert (state.serving, state.candidate, state.share) == ("1", "2", 0.3)
        time.sleep(1.0)  # the gateway reads the file at its next poll (0.2 s)
        users = [f"canary-user-{u}" for u in range(400)]
        got = {u: rerank(stub, u, k).model_version for k, u in enumerate(users)}
        want = {u: "2" if routes_to_candidate(SALT, u, 0.3) else "1" for u in users}
        assert got == want
        assert 0.25 < sum(v == "2" for v in got.values()) / len(users) < 0.35

        s = scrape(metrics_port)
        assert sample(s, "rerankd_rerank_version_requests_total", version="2", outcome="ok") >= 100
        assert sample(s, "rerankd_rerank_version_duration_seconds_count", version="1") >= 200
        assert sample(s, "rerankd_model_canary_share", version="2") == pytest.approx(0.3)

        # The serving version cannot be unloaded.
        refused = cli(triton, repo, "unload", "1")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert refused.stderr.strip() == ("error: version: version 1 is serving: promote or roll back "
                                          "to another first")

        # Promote, then roll back, under a light steady load.
        with SteadyLoad(addr) as load:
            time.sleep(0.5)
            promoted = cli(triton, repo, "promote", "2")
            assert promoted.returncode == 0, promoted.stderr
            wait_serving(stub, "2")
            time.sleep(0.5)
            back = cli(triton, repo, "rollback")
            assert back.returncode == 0, back.stderr
            wait_serving(stub, "1")
            time.sleep(0.5)
        assert load.failed == [] and load.degraded == 0
        assert load.versions.get("1", 0) > 0 and load.versions.get("2", 0) > 0
        state = read_state(repo, "reranker")
        assert (state.serving, state.candidate, state.previous) == ("1", "", ())
        r = Rollout(triton.grpc_url, repo, "reranker")
        try:
            assert r.ready() == ["1"]  # version 2 unloaded, kept on disk
        finally:
            r.close()
        assert (repo / "reranker" / "2" / "manifest.json").is_file()
        assert "specific: { versions: [ 1 ] }" in (repo / "reranker" / "config.pbtxt").read_text()

    listed = cli(triton, repo, "list")
    assert listed.returncode == 0 and "serving 1 (updated" in listed.stdout
