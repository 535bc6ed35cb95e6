"""server/triton/launcher.py: ports, /proc parsing, backoff, the supervisor's decisions.

The supervisor's server is faked here; tests/integration/test_launcher.py runs it on a real
tritonserver (stubs killed, restart, signals).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from server.triton.install import TritonInstall
from server.triton.launcher import (
    TritonPorts,
    TritonServer,
    TritonSupervisor,
    backoff_delay,
    free_port,
    group_members,
    parse_stat,
    port_is_free,
    processes,
)


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



def test_parse_stat_reads_fields_after_a_comm_with_spaces_and_parentheses():
    info = parse_stat("4242 (triton_python_b) S 4200 4200 4200 0 -1 4194560 1 2 3")
    assert (info.pid, info.comm, info.state, info.ppid, info.pgid) == (4242, "triton_python_b", "S", 4200, 4200)
    odd = parse_stat("7 (a) b (c)) Z 1 99 99 0")
    assert (odd.comm, odd.state, odd.ppid, odd.pgid) == ("a) b (c)", "Z", 1, 99)


def _fake_proc(root: Path, pid: int, comm: str, state: str, ppid: int, pgid: int) -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} {ppid} {pgid} {pgid} 0 -1 0\n")


def test_group_members_finds_a_group_in_a_proc_tree(tmp_path):
    _fake_proc(tmp_path, 100, "tritonserver", "Z", 50, 100)
    _fake_proc(tmp_path, 101, "triton_python_b", "S", 1, 100)
    _fake_proc(tmp_path, 102, "triton_python_b", "R", 1, 100)
    _fake_proc(tmp_path, 200, "bash", "S", 1, 200)
    (tmp_path / "self").mkdir()  # not a pid
    (tmp_path / "300").mkdir()   # vanished while read: no stat
    assert sorted(p.pid for p in processes(tmp_path)) == [100, 101, 102, 200]
    assert sorted(p.pid for p in group_members(100, tmp_path)) == [100, 101, 102]
    assert group_members(999, tmp_path) == []


def test_group_members_on_the_real_proc_includes_this_process():
    assert os.getpid() in {p.pid for p in group_members(os.getpgid(0))}


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(a, 1.0, 30.0) for a in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(10_000, 0.5, 10.0) == 10.0


def test_the_shared_memory_prefix_is_per_server_and_in_the_command(tmp_path):
    inst = TritonInstall.at(tmp_path)
    a = TritonServer(inst, tmp_path, ports=TritonPorts(1, 2, 3), log_path=tmp_path / "t.log")
    b = TritonServer(inst, tmp_path, ports=TritonPorts(1, 2, 3), log_path=tmp_path / "t.log")
    assert a.shm_prefix.startswith("rerankd_triton_2_") and a.shm_prefix != b.shm_prefix
    assert f"--backend-config=python,shm-region-prefix-name={a.shm_prefix}" in a.command()


class FakeServer:
    """Stands in for TritonServer: ``die()`` makes the running 'process' exit."""

    def __init__(self, fail_starts: int = 0):
        self.lock = threading.Lock()
        self.alive = True
        self.starts = 0
        self.reaps = 0
        self.stops = 0
        self.fail_starts = fail_starts
        self.start_times: list[float] = []
        self.pid = 1
        self.started_at = time.monotonic()
        self.grpc_url = "127.0.0.1:1"
        self.log_path = Path("t.log")

    def die(self):
        with self.lock:
            self.alive = False

    def exited(self):
        with self.lock:
            return not self.alive

    def reap(self):
        with self.lock:
            self.reaps += 1
        return -9

    def start(self):
        with self.lock:
            self.start_times.append(time.monotonic())
            if self.fail_starts:
                self.fail_starts -= 1
                raise RuntimeError("port in use")
            self.starts += 1
            self.started_at = time.monotonic()
            self.alive = True

    def ready(self):
        return True

    def stop(self):
        with self.lock:
            self.stops += 1
            self.alive = False


def _until(pred, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_supervisor_reaps_and_restarts_after_an_unexpected_exit():
    fake = FakeServer(fail_starts=1)
    sup = TritonSupervisor(fake, restart=True, backoff_s=0.05, backoff_max_s=0.1, poll_s=0.01).start()
    try:
        died = time.monotonic()
        fake.die()
        _until(lambda: sup.restarts == 1)
        assert fake.reaps == 1 and fake.starts == 1 and not fake.exited()
        # one failed start (port still held), then a doubled delay before the next try
        first, second = fake.start_times
        assert first - died >= 0.05 and second - first >= 0.1
        assert sup.running and not sup.gave_up
    finally:
        sup.stop()
    assert not sup.running and fake.stops >= 1


def test_supervisor_without_restart_reaps_and_gives_up():
    fake = FakeServer()
    sup = TritonSupervisor(fake, restart=False, poll_s=0.01).start()
    fake.die()
    _until(lambda: not sup.running)
    assert sup.gave_up and fake.reaps == 1 and fake.starts == 0 and sup.restarts == 0
    sup.stop()


def test_supervisor_stop_stops_triton_and_never_restarts_it():
    fake = FakeServer()
    sup = TritonSupervisor(fake, restart=True, backoff_s=0.01, poll_s=0.01).start()
    sup.stop()
    assert not sup.running and fake.stops >= 1
    assert fake.starts == 0 and fake.reaps == 0 and sup.restarts == 0
