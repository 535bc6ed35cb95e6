"""The Triton launchers (``rerankd triton``, ``rerankd serve --with-triton``) on the real
tritonserver with the tiny model: a SIGKILLed tritonserver leaves no backend stub behind and
comes back on the same port; SIGTERM and SIGINT stop the launcher and all it started.

Processes are found in /proc: tritonserver is the launcher's child, its Python-backend stubs
the members of its process group (comm ``triton_python_b``, the stub's name cut to 15).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.devstack import grpc_health, wait_until
from server.settings import PROJECT_ROOT
from server.triton.launcher import (
    SHM_DIR,
    ProcInfo,
    free_port,
    group_members,
    processes,
)
from tests.integration.conftest import triton_install

pytestmark = pytest.mark.integration

STUB_COMM = "triton_python_b"


def tritonserver_of(launcher_pid: int) -> ProcInfo:
    found = [p for p in processes() if p.ppid == launcher_pid and p.comm == "tritonserver" and p.state != "Z"]
    assert len(found) == 1, f"expected one tritonserver child of {launcher_pid}, found {found}"
    return found[0]


def stubs_of(triton_pid: int) -> list[ProcInfo]:
    return [p for p in group_members(triton_pid) if p.comm == STUB_COMM]


def model_ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/reranker/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def launcher_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", RERANKD_TRITON_LOG_DIR=str(tmp_path / "logs"),
                RERANKD_TRITON_RESTART_BACKOFF_S="0.5", **extra)


def start_launcher(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen:
    with open(out, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env, cwd=PROJECT_ROOT,
                                stdout=f, stderr=subprocess.STDOUT)


def wait_for_output(proc: subprocess.Popen, out: Path, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, out.read_text(errors="replace"))
        if match:
            return match
        assert proc.poll() is None, f"launcher exited with {proc.returncode}:\n{out.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not printed within {timeout_s:.0f}s:\n{out.read_text()}")


def kill_triton_and_check_reaped(launcher: subprocess.Popen) -> tuple[ProcInfo, list[ProcInfo]]:
    """SIGKILL the launcher's tritonserver; within 10 s nothing of its process group is left
    (stubs killed and reaped, not orphaned or zombies). Returns the killed server and stubs."""
    triton = tritonserver_of(launcher.pid)
    stubs = stubs_of(triton.pid)
    assert stubs, f"no backend stub found in tritonserver {triton.pid}'s process group"
    os.kill(triton.pid, signal.SIGKILL)
    killed = time.monotonic()
    while group_members(triton.pid):
        left = group_members(triton.pid)
        assert time.monotonic() - killed < 10, f"still there 10 s after tritonserver's death: {left}"
        time.sleep(0.1)
    return triton, stubs


def stop_and_check_nothing_left(launcher: subprocess.Popen, sig: int, out: Path) -> None:
    triton = tritonserver_of(launcher.pid)
    assert stubs_of(triton.pid)
    launcher.send_signal(sig)
    try:
        code = launcher.wait(40)
    except subprocess.TimeoutExpired:  # say what was still running, and what the launcher said
        pytest.fail(f"launcher still running 40 s after signal {sig}; tritonserver's group: "
                    f"{group_members(triton.pid)}; output:\n{out.read_text()}")
    assert code == 0, out.read_text()
    assert group_members(triton.pid) == [], "tritonserver or a stub outlived its launcher"
    assert [p for p in processes() if p.ppid == launcher.pid] == []


@pytest.fixture
def launcher_cleanup():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:  # a failed test must not leave Tritons running
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_rerankd_triton_reaps_and_restarts_a_killed_triton_then_stops_on_sigterm(
        tmp_path, model_repo, launcher_cleanup):
    triton_install()
    out = tmp_path / "launcher.out"
    launcher = start_launcher(["triton", "--free-ports", "--model-repository", str(model_repo)],
                              launcher_env(tmp_path), out)
    launcher_cleanup.append(launcher)
    ports = wait_for_output(launcher, out, r"gRPC 127\.0\.0\.1:(\d+), HTTP http://127\.0\.0\.1:(\d+)", 60)
    grpc_port, http_port = int(ports[1]), int(ports[2])
    wait_for_output(launcher, out, "Triton running", 120)

    shm = set(SHM_DIR.glob(f"rerankd_triton_{grpc_port}_*"))
    assert shm, "no Python-backend shared memory of this Triton found"
    old, _ = kill_triton_and_check_reaped(launcher)
    wait_until(lambda: not any(f.exists() for f in shm), 5, "shared memory of the killed Triton removed")
    wait_until(lambda: model_ready(http_port), 60, "Triton ready again on the same port")
    new = tritonserver_of(launcher.pid)
    assert new.pid != old.pid and launcher.poll() is None
    assert "exited unexpectedly" in out.read_text()

    stop_and_check_nothing_left(launcher, signal.SIGTERM, out)


def test_rerankd_triton_stops_on_sigint(tmp_path, model_repo, launcher_cleanup):
    triton_install()
    out = tmp_path / "launcher.out"
    launcher = start_launcher(["triton", "--free-ports", "--model-repository", str(model_repo)],
                              launcher_env(tmp_path), out)
    launcher_cleanup.append(launcher)
    wait_for_output(launcher, out, "Triton running", 120)
    stop_and_check_nothing_left(launcher, signal.SIGINT, out)


def test_serve_with_triton_restarts_triton_and_the_gateway_serves_again(tmp_path, model_repo, launcher_cleanup):
    triton_install()
    port = free_port()
    env = launcher_env(
        tmp_path, RERANKD_SERVER_PORT=str(port), RERANKD_TRITON_HTTP_PORT=str(free_port()),
        RERANKD_TRITON_GRPC_PORT=str(free_port()), RERANKD_TRITON_METRICS_PORT=str(free_port()),
        RERANKD_TRITON_POLL_INTERVAL_S="0.2", RERANKD_TELEMETRY_METRICS_PORT="0",
        RERANKD_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}")
    out = tmp_path / "serve.out"
    launcher = start_launcher(["serve", "--with-triton", "--model-repository", str(model_repo)], env, out)
    launcher_cleanup.append(launcher)
    addr = f"127.0.0.1:{port}"
    wait_for_output(launcher, out, "rerankd listening", 120)
    wait_until(lambda: grpc_health(addr) == "SERVING", 60, "gateway SERVING")

    kill_triton_and_check_reaped(launcher)
    wait_until(lambda: grpc_health(addr) == "SERVING" and model_ready(int(env["RERANKD_TRITON_HTTP_PORT"])),
               60, "gateway SERVING again on the restarted Triton")
    request = pb.RerankRequest(user_id="1", candidates=[pb.Candidate(item_id="a", text="a film"),
                                                       pb.Candidate(item_id="b", text="another film")])
    with grpc.insecure_channel(addr) as ch:  # scored by the model again, not the degraded fallback
        rerank = pb_grpc.RerankerStub(ch).Rerank
        wait_until(lambda: not rerank(request, timeout=10).degraded, 30, "a Rerank scored by the model")
        assert len(rerank(request, timeout=10).items) == 2
    stop_and_check_nothing_left(launcher, signal.SIGTERM, out)
