"""The prod overlay's gateway probe (an exec of ``rerankd client ... health``: the kubelet's grpc
probe cannot speak TLS), run as written in the rendered manifest against a real TLS gRPC health
service: it must pass on SERVING only. Only the TLS directory and the port are swapped for
this machine's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.tls_certs import SKIP_REASON, _leaf, make_pki, openssl_available
from tests.unit.deploy.test_manifests import GATEWAY, KUBE, one, render

pytestmark = pytest.mark.skipif(not openssl_available(), reason=SKIP_REASON)
TLS_DIR = "/etc/rerankd/tls"


@pytest.fixture(scope="module")
def probe_command() -> str:
    c = one(render(KUBE / "overlays" / "prod"), "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"][0]
    command = c["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return command[2]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory) -> Path:
    """What the rerankd-gateway-tls Secret holds: tls.crt, tls.key, ca.crt, for rerankd-gateway."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    _leaf(pki.dir, "gw", "/CN=rerankd-gateway", "subjectAltName=DNS:rerankd-gateway\n"
          "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    d = tmp_path_factory.mktemp("tls")
    shutil.copy(pki.dir / "gw.pem", d / "tls.crt")
    shutil.copy(pki.dir / "gw.key", d / "tls.key")
    shutil.copy(pki.ca, d / "ca.crt")
    return d


def run_probe(command: str, tls_dir: Path, port: int) -> int:
    assert "127.0.0.1:50051" in command and TLS_DIR in command
    command = command.replace("127.0.0.1:50051", f"127.0.0.1:{port}").replace(TLS_DIR, str(tls_dir))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["/bin/sh", "-c", command], env=env, timeout=30, capture_output=True).returncode


def health_server(tls_dir: Path | None):
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if tls_dir is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = grpc.ssl_server_credentials([((tls_dir / "tls.key").read_bytes(), (tls_dir / "tls.crt").read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, servicer, port


def test_the_probe_passes_on_serving_only(probe_command, tls_dir):
    server, servicer, port = health_server(tls_dir)
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run_probe(probe_command, tls_dir, port) == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert run_probe(probe_command, tls_dir, port) != 0
    finally:
        server.stop(0)


def test_the_probe_fails_against_a_plaintext_server(probe_command, tls_dir):
    server, servicer, port = health_server(None)
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run_probe(probe_command, tls_dir, port) != 0
    finally:
        server.stop(0)
