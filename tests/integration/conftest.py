"""Real Triton + real gateway process, started once per test session.

A tiny random-weight BERT goes through the same ``export`` code as the real model, into a
temporary model repository; Triton loads it in explicit mode; the gateway runs as a
``rerankd serve`` subprocess (``server.devstack``) and is called through the generated stubs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import pytest

from server.devstack import gateway_process as _gateway_process
from server.devstack import local_stack
from server.settings import PROJECT_ROOT, load_settings
from server.triton.install import TritonInstall
from server.triton.launcher import TritonServer

BACKEND_SRC = PROJECT_ROOT / "model_repository" / "reranker" / "model.py"
# The gateways under test accept up to 300 candidates (the bad-input tests send 301).
MAX_CANDIDATES = "300"


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
    from export.build import run_export

    repo = tmp_path_factory.mktemp("model_repository")
    run_export(tiny_model_dir, repo, backend_src=BACKEND_SRC, log=lambda *a: None)
    return repo


@contextlib.contextmanager
def gateway_process(triton: TritonServer, repo: Path, log_path: Path, *, serving: bool = True, **env: str):
    """A gateway on the test session's Triton; yields (process, address). Its own SQLite store
    next to ``log_path`` unless ``RERANKD_STORE_URL`` is given (never the developer's default one)."""
    env.setdefault("RERANKD_STORE_URL", f"sqlite:///{log_path.with_suffix('.db')}")
    with _gateway_process(triton.grpc_url, repo, log_path, serving=serving,
                          RERANKD_SERVER_MAX_CANDIDATES=MAX_CANDIDATES, **env) as pair:
        yield pair


@contextlib.contextmanager
def launch_stack(repo: Path, logs: Path):
    """Triton + a SQLite-backed gateway started before the model loads (NOT_SERVING is observed)."""
    db_path = logs / "store.db"
    with local_stack(triton_install(), repo, logs, load_first=False,
                     RERANKD_SERVER_MAX_CANDIDATES=MAX_CANDIDATES,
                     RERANKD_STORE_URL=f"sqlite:///{db_path}") as stack:
        yield stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory, model_repo):
    with launch_stack(model_repo, tmp_path_factory.mktemp("logs")) as s:
        yield s


@contextlib.contextmanager
def queue_delay(triton: TritonServer, microseconds: int, model: str = "reranker"):
    """Reload ``model`` with a dynamic-batching window of ``microseconds``, then restore it from
    its file. The reload replaces the instance, so its statistics start again from zero."""
    import json

    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(triton.grpc_url)
    cfg = client.get_model_config(model, as_json=True)["config"]
    cfg["dynamic_batching"]["max_queue_delay_microseconds"] = str(microseconds)
    client.load_model(model, config=json.dumps(cfg))
    try:
        yield client
    finally:
        client.load_model(model)
        client.close()


def inference_counts(client, model: str = "reranker") -> tuple[int, int]:
    """(rows inferred, engine executions) so far, from Triton's statistics."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.fixture(scope="session")
def stub(stack):
    from server.api.pb import reranker_pb2_grpc

    with grpc.insecure_channel(stack.addr) as ch:
        yield reranker_pb2_grpc.RerankerStub(ch)
