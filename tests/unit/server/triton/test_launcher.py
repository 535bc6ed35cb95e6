"""server/triton/launcher.py: a port in use stops the start before any process is spawned."""

from __future__ import annotations

import socket

import pytest

from server.triton.launcher import TritonPorts, TritonServer, free_port, port_is_free


def test_a_port_in_use_is_refused_before_triton_starts(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        assert not port_is_free(busy)
        ports = TritonPorts(http=free_port(), grpc=busy, metrics=free_port())
        server = TritonServer(None, tmp_path, ports=ports, log_path=tmp_path / "t.log")
        with pytest.raises(RuntimeError, match=f"port\\(s\\) {busy} .* already in use"):
            server.start()
        assert server.proc is None
    assert port_is_free(busy)
