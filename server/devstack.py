"""A local Triton + gateway pair as child processes, on free ports.

One implementation for everything that needs the real stack in-process-tree: the
integration tests, ``rerankd eval`` (served path) and the perf suite.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.settings import PROJECT_ROOT
from server.triton.install import TritonInstall
from server.triton.launcher import TritonPorts, TritonServer, free_port

if TYPE_CHECKING:
    import grpc

MODEL = "reranker"


def grpc_health(addr: str, credentials: grpc.ChannelCredentials | None = None) -> str:
    """``SERVING`` / ``NOT_SERVING`` from grpc.health.v1, or ``DOWN`` if nothing answers.
    ``credentials``: TLS (``server.api.tls``) for a gateway with ``security.tls_*`` set."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from server.api.tls import open_channel

    with open_channel(addr, credentials) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout_s:.0f}s")


@contextlib.contextmanager
def gateway_process(triton_url: str, repo: Path, log_path: Path, *, serving: bool = True,
                    cwd: Path = PROJECT_ROOT, credentials: grpc.ChannelCredentials | None = None,
                    **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``rerankd serve`` on a free port (settings through ``RERANKD_*`` variables in ``env``);
    yields (process, address). With ``serving`` it waits until the model is ready. ``cwd``:
    the source tree the gateway runs from (another checkout, for before/after comparisons).
    ``credentials``: what the health checks use, for a gateway with TLS settings in ``env``."""
    port = free_port()
    # Metrics off unless asked for: several gateways here would contend for one default port.
    full_env = dict(os.environ, RERANKD_SERVER_PORT=str(port), RERANKD_TRITON_URL=triton_url,
                    RERANKD_TRITON_MODEL_REPOSITORY=str(repo), RERANKD_TRITON_POLL_INTERVAL_S="0.2",
                    RERANKD_TELEMETRY_METRICS_PORT="0")
    full_env.update(env)
    log = open(log_path, "ab")
    # ``-m cli``; a checkout from before the CLI had its own package runs ``-m server``.
    entry = "cli" if (Path(cwd) / "cli" / "__main__.py").is_file() else "server"
    proc = subprocess.Popen([sys.executable, "-m", entry, "serve"], env=full_env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=cwd)
    addr = f"127.0.0.1:{port}"

    def state(wanted: Sequence[str]) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with code {proc.returncode}; see {log_path}")
        return grpc_health(addr, credentials) in wanted

    try:
        wait_until(lambda: state(("SERVING", "NOT_SERVING")), 60, f"gateway up (log {log_path})")
        if serving:
            wait_until(lambda: state(("SERVING",)), 120, f"gateway SERVING (log {log_path})")
        yield proc, addr
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


@dataclass
class LocalStack:
    triton: TritonServer
    gateway: subprocess.Popen
    addr: str
    repo: Path
    logs: Path
    # Gateway health seen before the model was loaded (only when started with load=False).
    health_before_load: str = ""


@contextlib.contextmanager
def local_stack(install: TritonInstall, repo: Path, logs: Path, *, load_first: bool = True,
                **gateway_env: str) -> Iterator[LocalStack]:
    """Triton on ``repo`` + one gateway. ``load_first=False`` starts the gateway before the
    model is loaded (to observe NOT_SERVING), then loads it. Both stop on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(install, repo, ports=TritonPorts.free(), log_path=logs / "triton.log",
                          load_models=[MODEL] if load_first else [])
    triton.start()
    try:
        triton.wait_ready(300)
        with gateway_process(triton.grpc_url, repo, logs / "gateway.log", serving=load_first,
                             **gateway_env) as (proc, addr):
            before = ""
            if not load_first:
                import tritonclient.grpc as tc

                before = grpc_health(addr)
                tc.InferenceServerClient(triton.grpc_url).load_model(MODEL)
                wait_until(lambda: grpc_health(addr) == "SERVING", 120, f"gateway SERVING (logs {logs})")
            yield LocalStack(triton, proc, addr, repo, logs, before)
    finally:
        triton.stop()
