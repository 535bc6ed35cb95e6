"""Start, supervise and stop a local ``tritonserver`` process on the project's model repository.

Triton runs in its own session (process group), and its Python-backend stubs inherit that
group. The stubs ignore SIGTERM and SIGINT and, while tritonserver is an unreaped zombie,
never notice that it died; so whatever is left of the group once tritonserver has exited
is SIGKILLed (``TritonServer.reap``). ``TritonSupervisor`` does that when Triton dies on its
own and starts it again on the same ports.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.triton.install import TritonInstall

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Resolved here, not in the forked child: a dlopen between fork and exec can deadlock.
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl

# Python-backend shared memory (tmpfs) that a killed tritonserver leaves behind.
SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"


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


@dataclass(frozen=True)
class ProcInfo:
    """One line of ``/proc/<pid>/stat``, the fields the launcher needs."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int


def parse_stat(text: str) -> ProcInfo:
    """Parse ``/proc/<pid>/stat``; ``comm`` may itself hold spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    state, ppid, pgid = rest.split()[:3]
    return ProcInfo(int(pid), comm, state, int(ppid), int(pgid))


def processes(proc_root: Path = Path("/proc")) -> list[ProcInfo]:
    """Every process visible now (those that vanish while being read are skipped)."""
    out = []
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            try:
                out.append(parse_stat((entry / "stat").read_text()))
            except (OSError, ValueError):
                continue
    return out


def group_members(pgid: int, proc_root: Path = Path("/proc")) -> list[ProcInfo]:
    """Processes of process group ``pgid``, zombies included."""
    return [p for p in processes(proc_root) if p.pgid == pgid]


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``):
    the stubs of a tritonserver that died are re-parented here, not to init, so the launcher
    reaps them itself whatever init does. For the long-lived launcher commands only."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _die_with_parent(parent_pid: int):
    """``preexec_fn``: SIGKILL the child when the thread that started it ends (even if the
    launcher itself is SIGKILLed), so no tritonserver outlives its launcher."""
    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os._exit(1)
    return preexec


def backoff_delay(attempt: int, first_s: float, max_s: float) -> float:
    """Seconds to wait before restart number ``attempt`` (0-based): doubling, capped."""
    return min(max_s, first_s * 2 ** min(attempt, 32))


class TritonServer:
    """A ``tritonserver`` child process in explicit model-control mode.

    ``die_with_parent``: tritonserver gets SIGKILL when the *thread* that called ``start``
    ends (``PR_SET_PDEATHSIG``); start it from a thread that outlives it.
    """

    def __init__(self, install: TritonInstall, model_repository: Path, *, ports: TritonPorts,
                 log_path: Path, load_models: Sequence[str] = (), extra_args: Sequence[str] = (),
                 die_with_parent: bool = True):
        self.install = install
        self.model_repository = Path(model_repository)
        self.ports = ports
        self.log_path = Path(log_path)
        self.load_models = tuple(load_models)
        self.extra_args = tuple(extra_args)
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0  # time.monotonic() of the last start
        self.shm_prefix = self._new_shm_prefix()
        self._reaped_pid: int | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def _new_shm_prefix(self) -> str:
        """Names of one run's Python-backend shared-memory regions start with this: unique per
        start, so cleaning up after a dead run never touches a newer one on the same ports."""
        return f"rerankd_triton_{self.ports.grpc}_{secrets.token_hex(4)}_"

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
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
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
        log_file = open(self.log_path, "ab")
        # Own session: Ctrl-C in the terminal reaches only us and we stop Triton in order; the
        # group (tritonserver + its stubs) is what reap() kills.
        preexec = _die_with_parent(os.getpid()) if self.die_with_parent else None
        self.shm_prefix = self._new_shm_prefix()
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                         env=self.environment(), start_new_session=True,
                                         preexec_fn=preexec)
        finally:
            log_file.close()
        self.started_at = time.monotonic()
        self._reaped_pid = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exited(self) -> bool:
        """Whether tritonserver has exited, without reaping it: while it is a zombie its pid
        (the group id) cannot be reused, so killing the group stays safe."""
        proc = self.proc
        if proc is None:
            return False
        if proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped by someone else
            return True

    def _wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self, timeout_s: float = 8.0) -> int | None:
        """Once tritonserver has exited: SIGKILL what is left of its process group (orphaned
        backend stubs), wait until none runs (reaping those re-parented to us), remove its
        shared memory, then collect its exit status. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        if self._reaped_pid == proc.pid:
            return proc.returncode
        pgid = proc.pid
        deadline = time.monotonic() + timeout_s
        while True:
            members = [p for p in group_members(pgid) if p.pid != pgid]
            running = [p for p in members if p.state not in ("Z", "X")]
            if running:
                self._kill_group()
            for p in members:
                try:
                    os.waitpid(p.pid, os.WNOHANG)
                except ChildProcessError:  # not our child (init reaps it)
                    pass
            if not running or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if running:
            log.error("backend stub(s) %s of tritonserver %d still running after SIGKILL",
                      [p.pid for p in running], pgid)
        code = proc.wait()
        self._reaped_pid = proc.pid
        for leftover in SHM_DIR.glob(self.shm_prefix + "*"):
            leftover.unlink(missing_ok=True)
        return code

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

    def ready(self, models: Sequence[str] | None = None) -> bool:
        """Live, and ``models`` (default: those loaded at start) ready."""
        models = self.load_models if models is None else tuple(models)
        return self.is_live() and all(self.model_ready(m) for m in models)

    def wait_ready(self, timeout_s: float = 120.0, models: Sequence[str] | None = None) -> None:
        """Block until the server is live and ``models`` (default: those loaded at start) are ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exited():
                raise RuntimeError(f"tritonserver exited with code {self.reap()}; see {self.log_path}")
            if self.ready(models):
                return
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM to tritonserver (it drains in-flight requests and unloads its models, whose
        stubs then end), SIGKILL to its whole group if it lingers; then ``reap()``."""
        if self.proc is None:
            return None
        if not self.exited():
            self.proc.send_signal(signal.SIGTERM)
            if not self._wait_exit(timeout_s):
                log.warning("tritonserver %d ignored SIGTERM for %.0fs: killing it", self.proc.pid, timeout_s)
                self._kill_group()
                self._wait_exit(5)
        return self.reap()


class TritonSupervisor:
    """Keeps a started ``TritonServer`` up from a thread of its own: when tritonserver exits
    without being asked to, its stubs are killed (``reap``), the exit is logged and, with
    ``restart``, it is started again on the same ports (same models) after a doubling delay,
    capped; the delay starts over once a run lasted ``stable_s``. ``stop()`` stops Triton from
    that thread, which is also the parent thread of any Triton it restarted."""

    def __init__(self, server: TritonServer, *, restart: bool = True, backoff_s: float = 1.0,
                 backoff_max_s: float = 30.0, stable_s: float = 60.0, poll_s: float = 0.25):
        self.server = server
        self.restart = restart
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.restarts = 0
        # Set when tritonserver died and restart is off: the supervisor has ended.
        self.gave_up = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "TritonSupervisor":
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop supervising and stop Triton and its stubs; returns once they are gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._thread is None or not self._thread.is_alive():
            self.server.stop()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:
            log.exception("Triton supervisor failed")
        finally:
            self.server.stop()

    def _wait_for_exit(self) -> bool:
        """Poll until tritonserver exits (True) or stop is asked (False); log readiness once."""
        announced = self.restarts == 0
        while not self._stop.is_set():
            if self.server.exited():
                return True
            if not announced and self.server.ready():
                announced = True
                log.warning("tritonserver ready again on %s (restart %d)", self.server.grpc_url, self.restarts)
            self._stop.wait(self.poll_s)
        return False

    def _watch(self) -> None:
        attempt = 0
        while True:
            if not self._wait_for_exit():
                return
            ran_s = time.monotonic() - self.server.started_at
            pid = self.server.pid
            code = self.server.reap()
            log.error("tritonserver (pid %s) exited unexpectedly with code %s after %.0fs; its backend "
                      "stubs were killed; log: %s", pid, code, ran_s, self.server.log_path)
            if not self.restart:
                self.gave_up = True
                return
            if ran_s >= self.stable_s:
                attempt = 0
            while True:
                delay = backoff_delay(attempt, self.backoff_s, self.backoff_max_s)
                attempt += 1
                log.warning("restarting tritonserver on %s in %.1fs", self.server.grpc_url, delay)
                if self._stop.wait(delay):
                    return
                try:
                    self.server.start()
                    break
                except (RuntimeError, OSError) as exc:  # a port still held, the binary gone
                    log.error("cannot restart tritonserver: %s", exc)
            self.restarts += 1
