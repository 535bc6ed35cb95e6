"""TLS end to end: a real Triton serving gRPC over mutual TLS, gateway processes serving TLS and
mTLS, and three clients (Python stubs, ``rerankd client``, and a Node ``@grpc/grpc-js`` client that
reads only the .proto). Certificates come from a CA made for the test (``tests/tls_certs.py``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import grpc
import pytest

from server.api import tls
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.devstack import MODEL, gateway_process
from server.settings import PROJECT_ROOT, TritonSettings
from server.triton.client import TritonScorer
from server.triton.launcher import TritonPorts, TritonServer
from tests.integration.conftest import triton_install
from tests.tls_certs import SKIP_REASON, make_pki, openssl_available

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not openssl_available(), reason=SKIP_REASON)]

NODE_DIR = PROJECT_ROOT / "tests" / "node"
ITEMS = {"t1": "Toy Story", "t2": "GoldenEye", "t3": "Four Rooms", "t4": "Get Shorty", "t5": "Copycat"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    """An unrelated CA: its certificates must not be accepted anywhere."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), name="some other CA")


@pytest.fixture(scope="module")
def tls_triton(model_repo, pki, tmp_path_factory):
    """Triton whose gRPC endpoint requires mutual TLS (its HTTP readiness endpoint stays plain)."""
    server = TritonServer(triton_install(), model_repo, ports=TritonPorts.free(),
                          log_path=tmp_path_factory.mktemp("tls-triton") / "triton.log", load_models=[MODEL],
                          extra_args=["--grpc-use-ssl-mutual=true", f"--grpc-server-cert={pki.server_cert}",
                                      f"--grpc-server-key={pki.server_key}", f"--grpc-root-cert={pki.ca}"])
    server.start()
    try:
        server.wait_ready(300)
        yield server
    finally:
        server.stop()


def _triton_env(pki) -> dict[str, str]:
    return {"RERANKD_TRITON_TLS_CA": str(pki.ca), "RERANKD_TRITON_TLS_CERT": str(pki.client_cert),
            "RERANKD_TRITON_TLS_KEY": str(pki.client_key)}


def _creds(ca, cert=None, key=None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                        cert.read_bytes() if cert else None)


def _rerank(channel: grpc.Channel) -> pb.RerankResponse:
    return pb_grpc.RerankerStub(channel).Rerank(
        pb.RerankRequest(user_id="u1", candidates=[pb.Candidate(item_id=i) for i in ITEMS]), timeout=30)


def _upsert(channel: grpc.Channel) -> None:
    pb_grpc.RerankerStub(channel).UpsertItems(
        pb.UpsertItemsRequest(items=[pb.Item(item_id=i, title=t) for i, t in ITEMS.items()]), timeout=30)


def _assert_refused(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _rerank(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def _assert_scored_by_triton(resp: pb.RerankResponse) -> None:
    """Every item scored by the model, not the fallback order: the gateway reached TLS Triton."""
    assert not resp.degraded, resp.degraded_reason
    assert resp.model_version == "1"
    assert sorted(it.item_id for it in resp.items) == sorted(ITEMS)
    assert all(not it.unscored and it.scored_from == pb.SCORED_FROM_TEXT for it in resp.items)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "client", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


def _node(addr: str, ca, cert=None, key=None) -> dict:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node/npm not installed: the Node @grpc/grpc-js client cannot run")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        # What `make test` runs (its node-client step); here when the suite is run by hand.
        subprocess.run(["npm", "ci", "--prefix", str(NODE_DIR), "--ignore-scripts", "--no-audit", "--no-fund",
                        "--loglevel=error"], check=True, timeout=300)
    cmd = ["node", str(NODE_DIR / "rerank_client.js"), "--addr", addr, "--ca", str(ca),
           "--user", "u1", "--items", ",".join(ITEMS)]
    if cert:
        cmd += ["--cert", str(cert), "--key", str(key)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip(), proc.stderr
    return {"rc": proc.returncode, **json.loads(proc.stdout.strip().splitlines()[-1])}


def test_the_scorer_reaches_a_mutual_tls_triton_only_with_a_client_certificate(tls_triton, pki, other_pki):
    async def versions(creds):
        scorer = TritonScorer(tls_triton.grpc_url, creds)
        try:
            return await scorer.ready_versions(MODEL)
        finally:
            await scorer.close()

    assert asyncio.run(versions(None)) == []  # plaintext against TLS
    assert asyncio.run(versions(tls.channel_credentials(str(pki.ca)))) == []  # no client certificate
    assert asyncio.run(versions(tls.channel_credentials(
        str(pki.ca), str(other_pki.client_cert), str(other_pki.client_key)))) == []  # wrong CA
    full = tls.triton_credentials(TritonSettings(tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                                                     tls_key=str(pki.client_key)))
    assert asyncio.run(versions(full)) == ["1"]


def test_tls_gateway_serves_tls_clients_and_refuses_plaintext(tls_triton, model_repo, pki, other_pki, tmp_path):
    env = {"RERANKD_SECURITY_TLS_CERT": str(pki.server_cert), "RERANKD_SECURITY_TLS_KEY": str(pki.server_key),
           "RERANKD_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}", **_triton_env(pki)}
    with gateway_process(tls_triton.grpc_url, model_repo, tmp_path / "gateway.log",
                         credentials=_creds(pki.ca), **env) as (_, addr):
        with grpc.secure_channel(addr, _creds(pki.ca)) as ch:
            _upsert(ch)
            resp = _rerank(ch)
        _assert_scored_by_triton(resp)
        expected = [it.item_id for it in resp.items]

        with grpc.insecure_channel(addr) as ch:
            _assert_refused(ch)
        with grpc.secure_channel(addr, _creds(other_pki.ca)) as ch:  # the gateway's cert is not from this CA
            _assert_refused(ch)
        # The certificate names 127.0.0.1 and localhost: either address verifies.
        port = addr.rsplit(":", 1)[1]
        with grpc.secure_channel(f"localhost:{port}", _creds(pki.ca)) as ch:
            assert [it.item_id for it in _rerank(ch).items] == expected

        out = _cli("rerank", "--addr", addr, "--tls-ca", str(pki.ca), "--user", "u1", "--items", ",".join(ITEMS),
                   "--json")
        assert out.returncode == 0, out.stderr
        assert [it["itemId"] for it in json.loads(out.stdout)["items"]] == expected
        plain = _cli("health", "--addr", addr, "--timeout", "3")
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr

        node = _node(addr, pki.ca)
        assert node["rc"] == 0 and node["model_version"] == "1"
        assert [it["item_id"] for it in node["items"]] == expected
        assert [it["rank"] for it in node["items"]] == list(range(1, len(ITEMS) + 1))


def test_mtls_gateway_requires_a_client_certificate_from_its_ca(tls_triton, model_repo, pki, other_pki, tmp_path):
    env = {"RERANKD_SECURITY_TLS_CERT": str(pki.server_cert), "RERANKD_SECURITY_TLS_KEY": str(pki.server_key),
           "RERANKD_SECURITY_TLS_CLIENT_CA": str(pki.ca),
           "RERANKD_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}", **_triton_env(pki)}
    client = _creds(pki.ca, pki.client_cert, pki.client_key)
    with gateway_process(tls_triton.grpc_url, model_repo, tmp_path / "gateway.log",
                         credentials=client, **env) as (_, addr):
        with grpc.secure_channel(addr, _creds(pki.ca)) as ch:  # TLS, but no client certificate
            _assert_refused(ch)
        with grpc.secure_channel(addr, _creds(pki.ca, other_pki.client_cert, other_pki.client_key)) as ch:
            _assert_refused(ch)
        with grpc.secure_channel(addr, client) as ch:
            _upsert(ch)
            resp = _rerank(ch)
        _assert_scored_by_triton(resp)

        tls_args = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        out = _cli("health", "--addr", addr, *tls_args)
        assert (out.returncode, out.stdout.strip()) == (0, "SERVING"), out.stderr
        refused = _cli("health", "--addr", addr, "--timeout", "3", "--tls-ca", str(pki.ca))
        assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr

        assert _node(addr, pki.ca)["error"] == "UNAVAILABLE"
        node = _node(addr, pki.ca, pki.client_cert, pki.client_key)
        assert node["rc"] == 0
        assert [it["item_id"] for it in node["items"]] == [it.item_id for it in resp.items]


def test_serve_stops_at_start_naming_a_key_that_does_not_match(pki, other_pki, tmp_path):
    import os

    env = dict(os.environ, RERANKD_SECURITY_TLS_CERT=str(pki.server_cert),
               RERANKD_SECURITY_TLS_KEY=str(other_pki.server_key), RERANKD_SERVER_PORT="0",
               RERANKD_TELEMETRY_METRICS_PORT="0", RERANKD_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}")
    proc = subprocess.run([sys.executable, "-m", "cli", "serve"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"security.tls_key: {other_pki.server_key} is not the private key of security.tls_cert" in proc.stderr
