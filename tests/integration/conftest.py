"""Real Triton + real gateway process, started once per test session.

A tiny random-weight BERT goes through the same ``export`` code as the real model, into a
temporary model repository; Triton loads it in explicit mode; the gateway runs as a
``rerankd serve`` subprocess and is called through the generated stubs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from server.settings import PROJECT_ROOT, load_settings
from server.triton.install import TritonInstall
from server.triton.launcher import TritonPorts, TritonServer, free_port

MODEL = "reranker"
BACKEND_SRC = PROJECT_ROOT / "model_repository" / "reranker" / "model.py"


def triton_install() -> TritonInstall:
    inst = TritonInstall.at(load_settings(env={}).triton.install_dir)
    if not inst.is_complete():
        pytest.skip("Triton binary not installed: run `make test`, which installs it")
    return inst


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from export.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, tiny_model_dir) -> Path:
    from export.pipeline import run_export

    repo = tmp_path_factory.mktemp("model_repository")
    run_export(tiny_model_dir, repo, backend_src=BACKEND_SRC, log=lambda *a: None)
    return repo


@dataclass
class Stack:
    triton: TritonServer
    gateway: subprocess.Popen
    addr: str
    repo: Path
    db_path: Path
    health_before_load: str
    log_dir: Path

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.addr)

    def health(self) -> str:
        return _health(self.addr)


def _health(addr: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def _wait(predicate, timeout_s: float, what: str, logs: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout_s}s; logs in {logs}")


@contextlib.contextmanager
def gateway_process(triton: TritonServer, repo: Path, log_path: Path, *, serving: bool = True,
                    **env_overrides: str):
    """A ``rerankd serve`` subprocess on a free port; yields (process, address).

    With ``serving`` it also waits until the gateway reports SERVING (model ready)."""
    port = free_port()
    env = dict(os.environ,
               RERANKD_SERVER_PORT=str(port),
               RERANKD_TRITON_URL=triton.grpc_url,
               RERANKD_TRITON_MODEL_REPOSITORY=str(repo),
               RERANKD_TRITON_POLL_INTERVAL_S="0.2",
               RERANKD_SERVER_MAX_CANDIDATES="300",
               **env_overrides)
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    addr = f"127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is not None or _health(addr) != "DOWN", 60, "gateway did not start", log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}; see {log_path}")
        if serving:
            _wait(lambda: _health(addr) == "SERVING", 60, "gateway did not report SERVING", log_path)
        yield proc, addr
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@contextlib.contextmanager
def launch_stack(repo: Path, logs: Path):
    """Triton (model not loaded yet) + a gateway; loads the model once the gateway is up,
    so its NOT_SERVING state is observed first. Yields a ``Stack``."""
    inst = triton_install()
    triton = TritonServer(inst, repo, ports=TritonPorts.free(), log_path=logs / "triton.log")
    triton.start()
    try:
        triton.wait_ready(60, models=())
        db_path = logs / "store.db"
        with gateway_process(triton, repo, logs / "gateway.log", serving=False,
                             RERANKD_STORE_URL=f"sqlite:///{db_path}") as (gateway, addr):
            before = _health(addr)
            import tritonclient.grpc as tc

            tc.InferenceServerClient(triton.grpc_url).load_model(MODEL)
            _wait(lambda: _health(addr) == "SERVING", 120, "gateway did not report SERVING", logs)
            yield Stack(triton, gateway, addr, repo, db_path, before, logs)
    finally:
        triton.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, model_repo) -> Stack:
    with launch_stack(model_repo, tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="session")
def stub(stack):
    from server.api.pb import reranker_pb2_grpc

    with stack.channel() as ch:
        yield reranker_pb2_grpc.RerankerStub(ch)
