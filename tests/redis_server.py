"""Start a real ``redis-server`` for tests and benchmarks.

    proc = start_redis(tmp_path)          # durable: AOF with fsync on every write
    store = RedisStore(proc.url)
    proc.kill(); proc.restart()           # SIGKILL, then start again on the same dir and port

The binary comes from the Debian package (``apt-get install -y redis-server``) or from
``$REDIS_SERVER_BIN``; when it is absent ``start_redis`` raises ``RedisServerNotInstalled``
and test fixtures skip with ``SKIP_REASON``.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SKIP_REASON = "redis-server binary not installed: run make test, which installs it"
START_TIMEOUT_S = 10.0


class RedisServerNotInstalled(RuntimeError):
    """No ``redis-server`` binary on PATH (nor at ``$REDIS_SERVER_BIN``)."""


class RedisServerError(RuntimeError):
    """``redis-server`` did not start or did not answer PING in time."""


def redis_server_binary() -> str:
    """Path of the ``redis-server`` binary, or raise ``RedisServerNotInstalled``."""
    path = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not path or not os.access(path, os.X_OK):
        raise RedisServerNotInstalled(
            "redis-server binary not found on PATH (install it: apt-get install -y redis-server)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: SIGKILL the server if the test process dies without cleaning up.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One ``redis-server`` child process bound to 127.0.0.1; see ``start_redis``."""

    def __init__(self, binary: str, data_dir: Path, port: int, appendonly: bool):
        self.binary = binary
        self.dir = data_dir
        self.port = port
        self.appendonly = appendonly
        self.log = data_dir / "redis.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log),
        ]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self, timeout_s: float = START_TIMEOUT_S) -> RedisProcess:
        """Start (or restart) the server and wait until it answers PING."""
        if self.running:
            raise RedisServerError(f"redis-server already running on port {self.port}")
        self._proc = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RedisServerError(
                    f"redis-server exited with status {self._proc.returncode} on port "
                    f"{self.port}: {err.strip()} {self._log_tail()}"
                )
            if _ping(self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within {timeout_s:.0f} s. "
            f"{self._log_tail()}"
        )

    restart = start

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM); SIGKILL if it takes longer than ``timeout_s``."""
        if self.running:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as in a crash: only what was already fsynced survives."""
        if self.running:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return "Log tail:\n" + "\n".join(lines) if lines else ""

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_redis(tmp_dir: str | Path, *, appendonly: bool = True) -> RedisProcess:
    """Start ``redis-server`` on a free loopback port with its data in ``tmp_dir``.

    ``appendonly=True`` (durable): AOF with ``appendfsync always``, so every acknowledged
    write survives a SIGKILL. Never snapshots (``save ""``). The server is stopped at
    interpreter exit if the caller has not stopped it.
    """
    binary = redis_server_binary()
    data_dir = Path(tmp_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probing and binding
        proc = RedisProcess(binary, data_dir, _free_port(), appendonly)
        try:
            proc.start()
        except RedisServerError as exc:
            last = exc
            continue
        atexit.register(proc.kill)
        return proc
    raise last  # type: ignore[misc]
