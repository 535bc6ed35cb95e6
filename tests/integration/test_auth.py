"""API keys on a real gateway process (the session's real Triton): codes per key and scope,
rotation through the keys file without a restart, open health, the guarded metrics endpoint,
the `rerankd client --api-key` path and the start-up warning."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.auth import hash_key
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.triton.launcher import free_port
from tests.integration.conftest import gateway_process
from tests.prometheus_text import fetch as fetch_metrics

pytestmark = pytest.mark.integration

KEYS = {"ranker": ("rk_int-ranker", ["rerank"]), "ingest": ("rk_int-ingest", ["events:write"]),
        "ops": ("rk_int-ops", ["admin"]), "rot-old": ("rk_int-rot-old", ["rerank"])}
S = grpc.StatusCode


def write_keys(path, keys: dict) -> None:
    """Replace the file at once, as an operator's tooling should (no half-written file is read)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"name": n, "sha256": hash_key(k), "scopes": s}) + "\n"
                           for n, (k, s) in keys.items()))
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    keys_file = tmp / "keys.jsonl"
    write_keys(keys_file, KEYS)
    metrics_port = free_port()
    log_path = tmp / "gw.log"
    # Bound beyond loopback, with keys and without TLS: the start-up warning names the clear text.
    with gateway_process(stack.triton, stack.repo, log_path, RERANKD_SERVER_HOST="0.0.0.0",
                         RERANKD_SECURITY_API_KEYS_FILE=str(keys_file),
                         RERANKD_TELEMETRY_METRICS_PORT=str(metrics_port)) as (_, addr):
        yield addr, keys_file, metrics_port, log_path


def code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return S.OK


def call_all(addr: str, key: str | None) -> dict[str, grpc.StatusCode]:
    md = [("authorization", f"Bearer {key}")] if key else None
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RerankerStub(ch)
        return {
            "upsert": code(lambda: stub.UpsertItems(pb.UpsertItemsRequest(items=[
                pb.Item(item_id="auth-1", title="a guarded film"),
                pb.Item(item_id="auth-2", title="another guarded film")]), metadata=md, timeout=30)),
            "events": code(lambda: stub.RecordEvents(pb.RecordEventsRequest(events=[
                pb.Event(user_id="u-auth", item_id="auth-1", event_type="click", timestamp=time.time())]),
                metadata=md, timeout=30)),
            "rerank": code(lambda: stub.Rerank(pb.RerankRequest(user_id="u-auth", candidates=[
                pb.Candidate(item_id="auth-1"), pb.Candidate(item_id="auth-2")]), metadata=md, timeout=30)),
            "health": code(lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)),
        }


def test_codes_by_key_and_scope(gateway):
    addr = gateway[0]
    assert call_all(addr, KEYS["ops"][0]) == dict.fromkeys(("upsert", "events", "rerank", "health"), S.OK)
    assert call_all(addr, None) == {"upsert": S.UNAUTHENTICATED, "events": S.UNAUTHENTICATED,
                                    "rerank": S.UNAUTHENTICATED, "health": S.OK}  # health open by default
    assert call_all(addr, "rk_int-wrong") == {"upsert": S.UNAUTHENTICATED, "events": S.UNAUTHENTICATED,
                                              "rerank": S.UNAUTHENTICATED, "health": S.OK}
    assert call_all(addr, KEYS["ranker"][0]) == {"upsert": S.PERMISSION_DENIED, "events": S.PERMISSION_DENIED,
                                                 "rerank": S.OK, "health": S.OK}
    assert call_all(addr, KEYS["ingest"][0]) == {"upsert": S.PERMISSION_DENIED, "events": S.OK,
                                                 "rerank": S.PERMISSION_DENIED, "health": S.OK}
    with grpc.insecure_channel(addr) as ch:  # ForgetUser needs admin (whatever its handler answers)
        forget = pb_grpc.RerankerStub(ch).ForgetUser
        assert code(lambda: forget(pb.ForgetUserRequest(user_id="u-x"), timeout=10,
                                   metadata=[("authorization", f"Bearer {KEYS['ranker'][0]}")])) == S.PERMISSION_DENIED


def test_rotation_without_restart(gateway):
    addr, keys_file, _, _ = gateway
    old, new = KEYS["rot-old"][0], "rk_int-rot-new"
    assert call_all(addr, old)["rerank"] == S.OK
    rotated = {n: v for n, v in KEYS.items() if n != "rot-old"} | {"rot-new": (new, ["rerank"])}
    write_keys(keys_file, rotated)
    t0 = time.monotonic()
    while call_all(addr, old)["rerank"] == S.OK:
        assert time.monotonic() - t0 < 2.5, "old key still accepted 2.5 s after the rotation"
        time.sleep(0.1)
    refused_after = time.monotonic() - t0
    assert call_all(addr, old)["rerank"] == S.UNAUTHENTICATED
    assert call_all(addr, new)["rerank"] == S.OK
    print(f"old key refused {refused_after:.2f} s after the file was replaced")


def test_metrics_endpoint_needs_an_admin_key_and_counts_refusals(gateway):
    addr, _, port, _ = gateway
    call_all(addr, None)
    assert fetch_metrics(port, None)[0] == 401
    assert fetch_metrics(port, KEYS["ranker"][0])[0] == 403
    status, text = fetch_metrics(port, KEYS["ops"][0])
    assert status == 200
    refused = [line for line in text.splitlines()
               if line.startswith("rerankd_requests_total") and 'code="UNAUTHENTICATED"' in line]
    assert any('method="Rerank"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in refused), refused


def test_client_cli_sends_its_api_key(gateway, capsys, monkeypatch):
    from cli.main import main

    addr = gateway[0]
    argv = ["client", "--addr", addr, "rerank", "--user", "u-auth", "--items", "auth-1,auth-2"]
    monkeypatch.delenv("RERANKD_CLIENT_API_KEY", raising=False)
    assert main(argv) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(argv + ["--api-key", KEYS["ranker"][0]]) == 0
    assert "auth-1" in capsys.readouterr().out
    monkeypatch.setenv("RERANKD_CLIENT_API_KEY", KEYS["ops"][0])
    assert main(["client", "--addr", addr, "events", "--user", "u-auth", "--items", "auth-2"]) == 0


def test_start_up_warns_about_clear_text_keys_and_never_logs_keys(gateway):
    log = gateway[3].read_text()
    assert "not loopback) without TLS: requests and API keys travel in clear text" in log
    assert "with no API keys" not in log
    assert not any(key in log for key, _ in KEYS.values()) and "rk_int-rot-new" not in log
