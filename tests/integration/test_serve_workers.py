"""``rerankd serve --workers 2`` (``RERANKD_SERVER_WORKERS``): two gateway processes on one
port in front of the real Triton; both answer, and SIGTERM stops every one of them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.devstack import local_stack
from tests.integration.conftest import triton_install

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def test_two_gateway_processes_share_the_port_and_stop_together(tmp_path, model_repo):
    install = triton_install()
    with local_stack(install, model_repo, tmp_path / "logs", RERANKD_SERVER_WORKERS="2",
                     RERANKD_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}") as stack:
        workers = children(stack.gateway.pid)
        assert len(workers) >= 2, workers  # two workers (and a spawn helper, perhaps)
        # Each new channel is a new connection, which the kernel gives to either worker;
        # answers come back from both (their request ids count per process, so only the
        # reply matters here: every call succeeds).
        for _ in range(8):
            with grpc.insecure_channel(stack.addr) as ch:
                resp = pb_grpc.RerankerStub(ch).Rerank(pb.RerankRequest(
                    user_id="1", candidates=[pb.Candidate(item_id="1", text="a film"),
                                             pb.Candidate(item_id="2", text="another film")]), timeout=30)
                assert len(resp.items) == 2
        stack.gateway.send_signal(signal.SIGTERM)
        stack.gateway.wait(30)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if alive(p)], "workers still running after SIGTERM"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
