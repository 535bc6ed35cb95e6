"""Start and stop a local ``tritonserver`` process on the project's model repository."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.triton.install import TritonInstall


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> "TritonPorts":
        return cls(free_port(), free_port(), free_port())


class TritonServer:
    """A ``tritonserver`` child process in explicit model-control mode."""

    def __init__(self, install: TritonInstall, model_repository: Path, *, ports: TritonPorts,
                 log_path: Path, load_models: Sequence[str] = (), extra_args: Sequence[str] = ()):
        self.install = install
        self.model_repository = Path(model_repository)
        self.ports = ports
        self.log_path = Path(log_path)
        self.load_models = tuple(load_models)
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def command(self) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.install.backend_dir}",
            "--model-control-mode=explicit",
            f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
            # A model that fails to load must not take the server (and other models) down.
            "--exit-on-error=false",
            "--log-verbose=0",
        ]
        cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.install.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        # model.py runs in the backend stub's interpreter: give it our venv and our code.
        project_root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (sysconfig.get_paths()["purelib"], str(project_root), env.get("PYTHONPATH", "")) if p)
        return env

    def start(self) -> None:
        """Start the process. A port already in use is an error here: otherwise the readiness
        checks would be answered by whatever holds the port (e.g. a Triton still stopping)."""
        taken = [p for p in (self.ports.http, self.ports.grpc, self.ports.metrics) if not port_is_free(p)]
        if taken:
            raise RuntimeError(f"cannot start Triton: port(s) {', '.join(map(str, taken))} on 127.0.0.1 "
                               "already in use (another Triton still running?)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # Own process group: Ctrl-C in the terminal reaches us, and we stop Triton in order.
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     env=self.environment(), start_new_session=True)
        log.close()

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def is_live(self) -> bool:
        return self._get("/v2/health/live") == 200

    def model_ready(self, name: str) -> bool:
        return self._get(f"/v2/models/{name}/ready") == 200

    def wait_ready(self, timeout_s: float = 120.0, models: Sequence[str] | None = None) -> None:
        """Block until the server is live and ``models`` (default: those loaded at start) are ready."""
        models = self.load_models if models is None else tuple(models)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode}; see {self.log_path}")
            if self.is_live() and all(self.model_ready(m) for m in models):
                return
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
