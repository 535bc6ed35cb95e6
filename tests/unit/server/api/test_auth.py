"""API keys: hashing, the key file and its reloads, scope checks, the gRPC interceptor on a real
in-process grpc.aio server, and the guarded metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from server.api.auth import (
    ANY_KEY,
    AuthInterceptor,
    KeyStore,
    append_key,
    bearer_token,
    exposure_warnings,
    hash_key,
    is_loopback,
    new_key,
    parse_env_keys,
    parse_key_file,
    remove_key,
    required_scope,
)
from server.api.errors import STATUS_BY_NAME
from server.errors import InvalidArgument, PermissionDenied, Unauthenticated
from server.settings import load_settings
from tests.prometheus_text import fetch as fetch_metrics

RERANK_KEY, EVENTS_KEY, ADMIN_KEY = "rk_rerank-only", "rk_events-only", "rk_the-admin"


def line(name: str, key: str, scopes: list[str]) -> str:
    return json.dumps({"name": name, "sha256": hash_key(key), "scopes": scopes}) + "\n"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys.jsonl"
    path.write_text("# rerankd API keys\n" + line("ranker", RERANK_KEY, ["rerank"])
                    + "\n" + line("ingest", EVENTS_KEY, ["events:write"]) + line("ops", ADMIN_KEY, ["admin"]))
    return path


def test_keys_are_random_and_stored_as_their_sha256():
    a, b = new_key(), new_key()
    assert a != b and len(a) >= 40
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_the_errors_map_to_their_grpc_codes():
    assert STATUS_BY_NAME[Unauthenticated.status] == grpc.StatusCode.UNAUTHENTICATED
    assert STATUS_BY_NAME[PermissionDenied.status] == grpc.StatusCode.PERMISSION_DENIED


def test_environment_keys_keep_scopes_that_hold_a_colon():
    h = hash_key("k1")
    keys = parse_env_keys(f"svc:{h}:rerank|events:write, ops:{hash_key('k2')}:admin")
    assert [(k.name, sorted(k.scopes)) for k in keys] == [("svc", ["events:write", "rerank"]), ("ops", ["admin"])]
    for bad in ("svc:nothex:rerank", f"svc:{h}:rerank|fly", f"svc:{h}", f"a:{h}:rerank,a:{h}:admin"):
        with pytest.raises(InvalidArgument) as err:
            parse_env_keys(bad)
        assert err.value.field == "security.api_keys"


def test_key_file_errors_name_the_line(keys_file):
    assert [k.name for k in parse_key_file(keys_file.read_text(), "f")] == ["ranker", "ingest", "ops"]
    for text, message in [("{not json\n", "not JSON"),
                          (line("x", "k", ["rerank", "write"]), "scopes must be among"),
                          (line("x", "k", []), "scopes must be among"),
                          (json.dumps({"name": "x", "sha256": "abc", "scopes": ["rerank"]}), "64 hex"),
                          (line("x", "k", ["rerank"]) + line("x", "j", ["admin"]), "appears twice")]:
        with pytest.raises(InvalidArgument) as err:
            parse_key_file("# header\n" + text, "keys.jsonl")
        assert message in str(err.value)
        assert err.value.field.startswith("keys.jsonl")
    with pytest.raises(InvalidArgument) as err:
        parse_key_file("\n\n{oops\n", "keys.jsonl")
    assert err.value.field == "keys.jsonl:3"


def test_authenticate_and_authorize(keys_file):
    store = KeyStore(keys_file)
    assert store.authorize(RERANK_KEY, "rerank").name == "ranker"
    assert store.authorize(ADMIN_KEY, "items:write").name == "ops"  # admin implies every scope
    assert store.authorize(EVENTS_KEY, ANY_KEY).name == "ingest"
    with pytest.raises(PermissionDenied, match="'ranker' lacks scope 'events:write'"):
        store.authorize(RERANK_KEY, "events:write")
    with pytest.raises(Unauthenticated, match="missing"):
        store.authorize(None, "rerank")
    with pytest.raises(Unauthenticated, match="unknown API key") as err:
        store.authorize("rk_guess", "rerank")
    assert "rk_guess" not in str(err.value)  # keys never echoed
    with pytest.raises(Unauthenticated):
        store.authorize(hash_key(RERANK_KEY), "rerank")  # the stored hash is not a key


def test_environment_and_file_keys_together(keys_file):
    fixed = parse_env_keys(f"env-svc:{hash_key('rk_env')}:items:write")
    store = KeyStore(keys_file, fixed)
    assert store.authorize("rk_env", "items:write").name == "env-svc"
    assert store.authorize(RERANK_KEY, "rerank").name == "ranker"


def test_from_settings(keys_file):
    assert KeyStore.from_settings(load_settings(env={}).security) is None  # no keys: open gateway
    sec = load_settings(env={"RERANKD_SECURITY_API_KEYS_FILE": str(keys_file),
                             "RERANKD_SECURITY_OPEN_HEALTH": "false",
                             "RERANKD_SECURITY_API_KEYS_RELOAD_INTERVAL_S": "0.5"}).security
    store = KeyStore.from_settings(sec)
    assert store.reload_interval_s == 0.5 and not sec.open_health and sec.open_reflection
    assert store.authorize(RERANK_KEY, "rerank").name == "ranker"
    env_only = KeyStore.from_settings(load_settings(
        env={"RERANKD_SECURITY_API_KEYS": f"a:{hash_key('rk_a')}:rerank"}).security)
    assert env_only.authorize("rk_a", "rerank").name == "a"
    with pytest.raises(InvalidArgument, match="not found"):
        KeyStore.from_settings(load_settings(
            env={"RERANKD_SECURITY_API_KEYS_FILE": str(keys_file.with_name("missing"))}).security)


def test_rotation_follows_the_file_after_the_reload_interval(keys_file, caplog):
    clock = Clock()
    store = KeyStore(keys_file, reload_interval_s=1.0, clock=clock)
    keys_file.write_text(line("ranker-2", "rk_new", ["rerank"]))  # old keys revoked, one new
    clock.now += 0.5
    assert store.authorize(RERANK_KEY, "rerank").name == "ranker"  # not checked yet
    clock.now += 0.6
    with pytest.raises(Unauthenticated):
        store.authorize(RERANK_KEY, "rerank")
    assert store.authorize("rk_new", "rerank").name == "ranker-2"
    # A broken rewrite is logged and the keys in force stay.
    keys_file.write_text(line("ranker-3", "rk_newer", ["rerank"]) + "{half a line")
    clock.now += 1.1
    with caplog.at_level(logging.ERROR, logger="server.api.auth"):
        assert store.authorize("rk_new", "rerank").name == "ranker-2"
    assert "not reloaded" in caplog.text and "rk_new" not in caplog.text
    # ... and so does a vanished file; it is read again when it comes back.
    keys_file.unlink()
    clock.now += 1.1
    assert store.authorize("rk_new", "rerank").name == "ranker-2"
    keys_file.write_text(line("ranker-4", "rk_4", ["rerank"]))
    clock.now += 1.1
    assert store.authorize("rk_4", "rerank").name == "ranker-4"
    with pytest.raises(Unauthenticated):
        store.authorize("rk_new", "rerank")


def test_an_empty_key_file_refuses_everyone(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(Unauthenticated):
        KeyStore(path).authorize(ADMIN_KEY, "rerank")


def test_method_scopes():
    kw = dict(open_health=True, open_reflection=True)
    assert required_scope("/rerank.v1.Reranker/Rerank", **kw) == "rerank"
    assert required_scope("/rerank.v1.Reranker/RecordEvents", **kw) == "events:write"
    assert required_scope("/rerank.v1.Reranker/UpsertItems", **kw) == "items:write"
    assert required_scope("/rerank.v1.Reranker/ForgetUser", **kw) == "admin"
    assert required_scope("/rerank.v1.Reranker/SomethingNew", **kw) == "admin"  # closed by default
    assert required_scope("/grpc.health.v1.Health/Check", **kw) is None
    assert required_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **kw) is None
    closed = dict(open_health=False, open_reflection=False)
    assert required_scope("/grpc.health.v1.Health/Watch", **closed) == ANY_KEY
    assert required_scope("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", **closed) == ANY_KEY


def test_bearer_token():
    assert bearer_token("Bearer rk_x") == "rk_x"
    assert bearer_token("bearer   rk_x ") == "rk_x"
    assert bearer_token("Basic dXNlcg==") is None
    assert bearer_token("Bearer ") is None and bearer_token(None) is None and bearer_token("rk_x") is None


def test_key_file_edits_by_the_cli_helpers(tmp_path):
    path = tmp_path / "keys.jsonl"
    key = new_key()
    append_key(path, "svc", hash_key(key), ["rerank", "events:write"])
    append_key(path, "ops", hash_key("rk_ops"), ["admin"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key not in path.read_text()
    store = KeyStore(path)
    assert store.authorize(key, "events:write").name == "svc"
    with pytest.raises(InvalidArgument, match="exists already"):
        append_key(path, "svc", hash_key("rk_other"), ["rerank"])
    with pytest.raises(InvalidArgument, match="scopes"):
        append_key(path, "bad", hash_key("rk_b"), ["root"])
    remove_key(path, "svc")
    assert [k.name for k in parse_key_file(path.read_text(), "f")] == ["ops"]
    with pytest.raises(InvalidArgument, match="no key named"):
        remove_key(path, "svc")


def test_keys_cli_prints_the_key_once_and_stores_its_hash(tmp_path, capsys):
    from cli.main import main

    path = tmp_path / "k.jsonl"
    assert main(["keys", "new", "svc", "--scopes", "rerank,events:write", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert KeyStore(path).authorize(key, "events:write").name == "svc"
    assert main(["keys", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["svc", "events:write", "rerank"]
    assert main(["keys", "new", "x", "--scopes", "superuser", "--file", str(path)]) == 2  # typed error
    assert main(["keys", "revoke", "svc", "--file", str(path)]) == 0
    assert parse_key_file(path.read_text(), "f") == []


def test_exposure_warnings():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    assert exposure_warnings("127.0.0.1", keys=False, tls=False, metrics_host="127.0.0.1") == []
    open_wide = exposure_warnings("0.0.0.0", keys=False, tls=False)
    assert len(open_wide) == 2 and "no API keys" in open_wide[0] and "without TLS" in open_wide[1]
    assert ["API keys travel in clear text" in w for w in exposure_warnings("0.0.0.0", keys=True, tls=False)] == [True]
    assert exposure_warnings("0.0.0.0", keys=True, tls=True, metrics_host="0.0.0.0") == []
    assert "metrics endpoint" in exposure_warnings("127.0.0.1", keys=False, tls=False, metrics_host="0.0.0.0")[0]


# -- the interceptor on a real grpc.aio server ------------------------------------------------------

class Metrics:
    def __init__(self):
        self.done = []

    def rpc_done(self, method, code, seconds):
        self.done.append((method, code))


async def _serve(store, metrics, **kw):
    from server.api.pb import reranker_pb2 as pb
    from server.api.pb import reranker_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.RerankerServicer):
        async def Rerank(self, request, context):
            return pb.RerankResponse(request_id="served")

        async def RecordEvents(self, request, context):
            return pb.RecordEventsResponse(accepted=len(request.events))

    server = grpc.aio.server(interceptors=[AuthInterceptor(store, metrics=metrics, **kw)])
    pb_grpc.add_RerankerServicer_to_server(Servicer(), server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(("rerank.v1.Reranker", reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_interceptor_checks_key_and_scope_and_counts_refusals(keys_file):
    from cli.client import with_api_key
    from server.api.pb import reranker_pb2 as pb
    from server.api.pb import reranker_pb2_grpc as pb_grpc

    async def scenario():
        metrics = Metrics()
        server, addr = await _serve(KeyStore(keys_file), metrics)
        try:
            def calls(key):
                with grpc.insecure_channel(addr) as raw:
                    ch = with_api_key(raw, key)
                    stub = pb_grpc.RerankerStub(ch)
                    rerank = _code(lambda: stub.Rerank(pb.RerankRequest(user_id="u"), timeout=5))
                    events = _code(lambda: stub.RecordEvents(pb.RecordEventsRequest(), timeout=5))
                    hc = _code(lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                                            timeout=5))
                    return rerank, events, hc

            got = await asyncio.to_thread(lambda: {k: calls(k) for k in (None, "rk_wrong", RERANK_KEY, ADMIN_KEY)})
        finally:
            await server.stop(None)
        return got, metrics.done

    got, done = asyncio.run(scenario())
    S = grpc.StatusCode
    assert got[None] == (S.UNAUTHENTICATED, S.UNAUTHENTICATED, S.OK)  # health open by default
    assert got["rk_wrong"] == (S.UNAUTHENTICATED, S.UNAUTHENTICATED, S.OK)
    assert got[RERANK_KEY] == (S.OK, S.PERMISSION_DENIED, S.OK)
    assert got[ADMIN_KEY] == (S.OK, S.OK, S.OK)
    assert done.count(("Rerank", "UNAUTHENTICATED")) == 2 and ("RecordEvents", "PERMISSION_DENIED") in done
    assert all(m in ("Rerank", "RecordEvents") for m, _ in done)  # health is not a Reranker method


def test_closed_health_and_reflection_need_a_key_streaming_calls_too(keys_file):
    from cli.client import with_api_key

    async def scenario():
        server, addr = await _serve(KeyStore(keys_file), None, open_health=False, open_reflection=False)
        try:
            def calls(key):
                with grpc.insecure_channel(addr) as raw:
                    ch = with_api_key(raw, key)
                    hc = _code(lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                                            timeout=5))
                    watch = _code(lambda: next(iter(health_pb2_grpc.HealthStub(ch).Watch(
                        health_pb2.HealthCheckRequest(), timeout=5))))
                    refl = _code(lambda: list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)))
                    return hc, watch, refl

            return await asyncio.to_thread(lambda: (calls(None), calls(EVENTS_KEY)))
        finally:
            await server.stop(None)

    without, with_any_key = asyncio.run(scenario())
    S = grpc.StatusCode
    assert without == (S.UNAUTHENTICATED,) * 3
    assert with_any_key == (S.OK,) * 3


# -- the metrics endpoint ------------------------------------------------------------------------

def test_metrics_endpoint_needs_a_metrics_or_admin_key(keys_file):
    from server.metrics import Metrics as RealMetrics

    keys_file.write_text(keys_file.read_text() + line("prom", "rk_prom", ["metrics"]))
    m = RealMetrics(True)
    m.rpc_done("Rerank", "OK", 0.01)
    port = m.serve("127.0.0.1", 0, authorize=KeyStore(keys_file).http_check)
    try:
        assert port
        assert fetch_metrics(port, None)[0] == 401
        assert fetch_metrics(port, "rk_wrong")[0] == 401
        status, body = fetch_metrics(port, RERANK_KEY)
        assert status == 403 and "metrics" in body
        for key in ("rk_prom", ADMIN_KEY):
            status, body = fetch_metrics(port, key)
            assert status == 200 and 'rerankd_requests_total{code="OK",method="Rerank"}' in body
    finally:
        m.shutdown()
