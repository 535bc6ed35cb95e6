"""Fuzz: thousands of malformed requests, raw garbage bodies and garbage on the socket.

One real gateway process (the session's Triton, its own SQLite store, the example rules file
so that rule sets and overrides are reachable) is sent, through real gRPC clients:

* hypothesis-generated requests of every method, well-formed protobuf with hostile values
  (empty / blank / huge / control-character ids, NaN and infinite numbers, negative
  ``top_n``, duplicates, too many candidates or events, unknown event types, future and
  negative timestamps, unknown rule sets, garbage rule overrides...);
* raw bytes as the request body of each method (a generic call whose serializer is the
  identity): mutations of valid messages and random bytes;
* garbage written straight to the TCP port (HTTP/1, a broken HTTP/2 preface, random bytes).

No reply may be INTERNAL or UNKNOWN; the gateway must be alive and answer a good Rerank
afterwards. Derandomized (fixed seed): the same examples on every run. ``RERANKD_FUZZ_SCALE``
multiplies the example counts for a longer campaign.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.settings import PROJECT_ROOT
from server.types import EVENT_TYPES
from tests.integration.conftest import MAX_CANDIDATES, gateway_process

pytestmark = pytest.mark.integration

SCALE = float(os.environ.get("RERANKD_FUZZ_SCALE", "1"))
BAD = {"INTERNAL", "UNKNOWN"}
RULES = PROJECT_ROOT / "server" / "rules" / "example_rules.yaml"
KNOWN = [f"fz{i}" for i in range(12)]
METHODS = {
    "Rerank": pb.RerankRequest,
    "RecordEvents": pb.RecordEventsRequest,
    "UpsertItems": pb.UpsertItemsRequest,
    "ForgetUser": pb.ForgetUserRequest,
}


def _settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example,
                                           HealthCheck.function_scoped_fixture], print_blob=True)


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory):
    """(process, address) of a gateway with its own store, the example rules and a small catalogue."""
    logs = tmp_path_factory.mktemp("fuzz")
    with gateway_process(stack.triton, stack.repo, logs / "gateway.log",
                         RERANKD_RULES_PATH=str(RULES)) as (proc, addr):
        with grpc.insecure_channel(addr) as ch:
            pb_grpc.RerankerStub(ch).UpsertItems(pb.UpsertItemsRequest(items=[
                pb.Item(item_id=i, title=f"Fuzz film {i}", attributes={"genres": "Drama|Comedy", "seller": "s1"})
                for i in KNOWN]), timeout=30)
        yield proc, addr


@pytest.fixture(scope="module")
def channel(gateway):
    with grpc.insecure_channel(gateway[1]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.RerankerStub(channel)


def _code(fn, request) -> tuple[str, str]:
    try:
        fn(request, timeout=20)
        return "OK", ""
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""


# -- strategies ---------------------------------------------------------------------------
# Text without surrogates (protobuf strings must be valid UTF-8), control characters included.
# Each strategy mixes plausible values (so that many requests pass validation and reach the
# store, the model and the rules) with hostile ones; ``one_of`` picks its branches evenly.
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
_hostile_ids = st.one_of(
    st.sampled_from(["", " ", "\t\n", "\x00", "a\x00b", "é", "🎬", "..", "fz1 ", "\u202e", "\ufeff"]),
    st.text(min_size=250, max_size=270, alphabet="xyz"),  # around the 256-character limit
)
clean_ids = st.one_of(st.sampled_from(KNOWN), _text.filter(lambda t: bool(t.strip())))
ids = st.one_of(clean_ids, clean_ids, clean_ids, _hostile_ids)
floats32 = st.floats(width=32)  # NaN, infinities, subnormals, -0.0 included
_now = time.time()
floats64 = st.one_of(st.floats(), st.sampled_from([-1.0, 1e-300, 1e300, _now + 1e6]))
timestamps = st.one_of(st.just(0.0), st.floats(_now - 1e8, _now + 200), floats64)
counts = st.one_of(st.integers(0, 20), st.integers(-2**31, 2**31 - 1), st.sampled_from([-1, 0, 1000]))
# An alias bomb (it held a gateway for a minute), nesting past the YAML composer's recursion
# (INTERNAL), an over-long value. Also explicit examples of test_fuzz_rerank.
HOSTILE_VALUES = [
    "[&a [x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b], "
    "&d [*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e], "
    "&g [*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h]]",
    "[" * 1000 + "]" * 1000, "{a: " * 400 + "1" + "}" * 400, "[" + "1," * 3000 + "1]",
]
# What each rule set of example_rules.yaml lets a request override: most override keys are
# drawn from these, so that the values reach the override parser.
OVERRIDABLE = {
    "": ["blend.retrieval_weight", "diversity.genre_cap.max_per_value", "pins", "exclude_interacted.enabled"],
    "homepage": ["pins", "blend", "blend.model_weight", "blend.retrieval_weight"],
    "model_only": [],
}
OVERRIDABLE["default"] = OVERRIDABLE[""]
other_keys = st.one_of(
    st.sampled_from(["blend", "blend.model_weight", "mmr", "", ".", "a..b", "pins.0", "filters", "diversity",
                     "boosts.new_releases", "diversity.genre_cap", "blend.retrieval_weight.x"]),
    _text)
override_values = st.one_of(
    st.sampled_from(["0.3", "nan", "inf", "-1", "1e999", "true", "[", "{", "}", "[]", "{}", "null", "~",
                     "[{item_id: fz1, position: 1}]", "[{item_id: fz1, position: 0}]",
                     "[{item_id: fz1, position: 99999999999}]", "{model_weight: x}", "{a: {b: {c: d}}}",
                     "&a [*a]", "!!python/object:os.system ls", "- - - -", "'", "\"", "2e308", "0x10"]),
    st.sampled_from(HOSTILE_VALUES),
    _text)


@st.composite
def overrides(draw, rule_set: str):
    allowed = st.sampled_from(OVERRIDABLE.get(rule_set) or ["blend"])
    keys = st.one_of(allowed, allowed, other_keys)
    return draw(st.one_of(st.just({}), st.dictionaries(keys, override_values, min_size=1, max_size=3)))


@st.composite
def candidates(draw, clean: bool = False):
    # Now and then more than the gateway accepts (not 0: hypothesis favours the bounds).
    if not clean and draw(st.integers(0, 30)) == 17:
        return [pb.Candidate(item_id=f"many{i}") for i in range(int(MAX_CANDIDATES) + 1)]
    # Mostly distinct ids (duplicates are rejected before anything interesting happens).
    item_ids = draw(st.lists(clean_ids, min_size=1, max_size=12, unique=True) if clean else
                    st.one_of(st.lists(ids, max_size=12, unique=True), st.lists(ids, max_size=4)))
    out = []
    for item_id in item_ids:
        c = pb.Candidate(item_id=item_id, text=draw(st.one_of(st.just(""), _text)))
        if draw(st.booleans()):
            c.retrieval_score = draw(st.floats(-1e6, 1e6, width=32) if clean else floats32)
        out.append(c)
    return out


@st.composite
def rerank_requests(draw):
    # Half the requests hostile everywhere, half valid but for the rule set and overrides.
    clean = draw(st.booleans())
    rule_set = draw(st.one_of(st.sampled_from(sorted(OVERRIDABLE)), st.sampled_from(["nope", "Default"]), _text))
    return pb.RerankRequest(
        user_id=draw(clean_ids if clean else ids), candidates=draw(candidates(clean)),
        top_n=draw(st.integers(0, 20) if clean else counts),
        context=pb.RequestContext(session_item_ids=draw(st.lists(ids, max_size=5)), text=draw(_text)),
        rule_set=rule_set, explain=draw(st.booleans()), rule_overrides=draw(overrides(rule_set)),
    )


@st.composite
def events(draw, clean: bool = False):
    if clean:
        e = pb.Event(user_id=draw(clean_ids), item_id=draw(clean_ids), event_type=draw(st.sampled_from(EVENT_TYPES)),
                     timestamp=draw(st.one_of(st.just(0.0), st.floats(_now - 1e8, _now))),
                     idempotency_key=draw(st.one_of(st.just(""), _text)))
    else:
        e = pb.Event(user_id=draw(ids), item_id=draw(ids),
                     event_type=draw(st.one_of(st.sampled_from(EVENT_TYPES), st.sampled_from(("", "CLICK", "view ")),
                                               _text)),
                     timestamp=draw(timestamps), idempotency_key=draw(st.one_of(st.just(""), _text)))
    if draw(st.booleans()):
        e.value = draw(st.floats(-10, 10) if clean else st.one_of(st.floats(-10, 10), floats64))
    return e


@st.composite
def record_requests(draw):
    if draw(st.integers(0, 40)) == 17:
        return pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i", event_type="view")] * 1001)
    return pb.RecordEventsRequest(events=draw(st.one_of(st.lists(events(clean=True), max_size=4),
                                                        st.lists(events(), max_size=4))))


@st.composite
def upsert_requests(draw):
    item_ids = draw(st.one_of(st.lists(clean_ids, max_size=5, unique=True), st.lists(ids, max_size=5)))
    items = [pb.Item(item_id=item_id, title=draw(_text), text=draw(_text),
                     attributes=draw(st.dictionaries(_text, _text, max_size=3)))
             for item_id in item_ids]
    # Never the catalogue the Rerank examples read: keep their known ids known.
    items = [i for i in items if i.item_id not in KNOWN]
    deletes = [d for d in draw(st.lists(ids, max_size=4)) if d not in KNOWN]
    return pb.UpsertItemsRequest(items=items, delete_item_ids=deletes)


forget_requests = st.builds(pb.ForgetUserRequest, user_id=ids)


# -- structured fuzz ----------------------------------------------------------------------
REPLIES: dict[str, Counter] = {m: Counter() for m in METHODS}


def _check(method: str, code: str, details: str, request) -> None:
    REPLIES[method][code] += 1
    assert code not in BAD, f"{method} answered {code} ({details}) to {request!r}"[:2000]


def _known_bad(key: str, value: str, rule_set: str = "") -> pb.RerankRequest:
    return pb.RerankRequest(user_id="u", candidates=[pb.Candidate(item_id=KNOWN[0])], rule_set=rule_set,
                            rule_overrides={key: value})


@_settings(700)
@given(req=rerank_requests())
@example(req=_known_bad("diversity.genre_cap.max_per_value", HOSTILE_VALUES[0]))
@example(req=_known_bad("pins", HOSTILE_VALUES[1]))
@example(req=_known_bad("blend", HOSTILE_VALUES[2], "homepage"))
@example(req=_known_bad("pins", HOSTILE_VALUES[3]))
def test_fuzz_rerank(stub, req):
    _check("Rerank", *_code(stub.Rerank, req), req)


@_settings(600)
@given(req=record_requests())
def test_fuzz_record_events(stub, req):
    _check("RecordEvents", *_code(stub.RecordEvents, req), req)


@_settings(500)
@given(req=upsert_requests())
def test_fuzz_upsert_items(stub, req):
    _check("UpsertItems", *_code(stub.UpsertItems, req), req)


@_settings(300)
@given(req=forget_requests)
def test_fuzz_forget_user(stub, req):
    _check("ForgetUser", *_code(stub.ForgetUser, req), req)


def test_structured_fuzz_reached_both_valid_and_rejected_paths(stub):
    """The generators are useful only if they produce accepted and rejected requests alike."""
    if not any(REPLIES.values()):  # selected alone: run the campaigns here
        for fuzz in (test_fuzz_rerank, test_fuzz_record_events, test_fuzz_upsert_items, test_fuzz_forget_user):
            fuzz(stub=stub)
    ran = {m: c for m, c in REPLIES.items() if c}
    print("structured fuzz replies:", {m: dict(c) for m, c in ran.items()})
    for method, codes in ran.items():
        assert codes["OK"] > 0 and codes["INVALID_ARGUMENT"] > 0, (method, dict(codes))
    assert REPLIES["Rerank"]["NOT_FOUND"] > 0  # unknown rule sets


# -- raw bodies ---------------------------------------------------------------------------
def _valid_bodies() -> dict[str, bytes]:
    return {
        "Rerank": pb.RerankRequest(user_id="u1", candidates=[pb.Candidate(item_id=KNOWN[0], retrieval_score=0.5)],
                                   rule_overrides={"blend.retrieval_weight": "0.3"}).SerializeToString(),
        "RecordEvents": pb.RecordEventsRequest(events=[pb.Event(user_id="u1", item_id="fz1", event_type="view",
                                                                 value=1.0)]).SerializeToString(),
        "UpsertItems": pb.UpsertItemsRequest(items=[pb.Item(item_id="raw1", attributes={"k": "v"})],
                                             delete_item_ids=["raw2"]).SerializeToString(),
        "ForgetUser": pb.ForgetUserRequest(user_id="u1").SerializeToString(),
    }


@st.composite
def raw_bodies(draw):
    method = draw(st.sampled_from(sorted(METHODS)))
    base = _valid_bodies()[method]
    kind = draw(st.integers(0, 3))
    if kind == 0:  # random bytes
        body = draw(st.binary(max_size=300))
    elif kind == 1:  # a valid message cut short
        body = base[:draw(st.integers(0, max(0, len(base) - 1)))]
    elif kind == 2:  # a valid message with bytes flipped
        body = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        body = bytes(body)
    else:  # a valid message with bytes spliced in (invalid UTF-8, bad wire types, groups)
        at = draw(st.integers(0, len(base)))
        junk = draw(st.sampled_from([b"\xff\xfe", b"\x0b", b"\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x80" * 11,
                                     b"\x12\x02\xc3\x28", b"\x0c"]))
        body = base[:at] + junk + base[at:]
    return method, body


RAW_REPLIES: Counter = Counter()


@_settings(600)
@given(case=raw_bodies())
def test_fuzz_raw_request_bodies(channel, case):
    method, body = case
    call = channel.unary_unary(f"/rerank.v1.Reranker/{method}")  # no serializers: bytes as they are
    code, details = _code(call, body)
    RAW_REPLIES[code] += 1
    assert code not in BAD, f"{method} answered {code} ({details}) to body {body!r}"[:2000]


def test_raw_fuzz_hit_the_decoder(channel):
    if not RAW_REPLIES:  # selected alone: run the campaign here
        test_fuzz_raw_request_bodies(channel=channel)
    print("raw-body fuzz replies:", dict(RAW_REPLIES))
    assert RAW_REPLIES["INVALID_ARGUMENT"] > 100, dict(RAW_REPLIES)


def test_undecodable_bodies_are_invalid_argument_naming_the_body(channel):
    for method in METHODS:
        code, details = _code(channel.unary_unary(f"/rerank.v1.Reranker/{method}"), b"\x0a\x03\xff\xfe\xfd")
        assert code == "INVALID_ARGUMENT" and "request body is not a valid message" in details, (method, code, details)


def test_body_over_the_size_limit_is_the_librarys_resource_exhausted(channel):
    code, _ = _code(channel.unary_unary("/rerank.v1.Reranker/Rerank"), b"\x00" * (17 * 1024 * 1024))
    assert code == "RESOURCE_EXHAUSTED"


def test_unknown_method_is_unimplemented(channel):
    assert _code(channel.unary_unary("/rerank.v1.Reranker/Nope"), b"")[0] == "UNIMPLEMENTED"


# -- garbage on the socket ----------------------------------------------------------------
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SOCKET_GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS ClientHello start
    H2_PREFACE[:10],
    H2_PREFACE + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\xff\xff\xff\xff",  # SETTINGS, window too big
    H2_PREFACE + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a frame longer than allowed
    H2_PREFACE + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # WINDOW_UPDATE of 0
    bytes(range(256)) * 8,
    b"\x00" * 4096,
]


def _good_rerank(addr: str) -> pb.RerankResponse:
    with grpc.insecure_channel(addr) as ch:
        return pb_grpc.RerankerStub(ch).Rerank(pb.RerankRequest(
            user_id="fz-after", candidates=[pb.Candidate(item_id=i) for i in KNOWN[:5]]), timeout=30)


def test_garbage_on_the_socket_does_not_hurt_the_gateway(gateway):
    proc, addr = gateway
    host, port = addr.rsplit(":", 1)
    for garbage in SOCKET_GARBAGE:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(garbage)
            s.settimeout(2)
            try:  # the server answers (an HTTP/2 GOAWAY) or closes; either is fine
                s.recv(4096)
            except (TimeoutError, ConnectionResetError):
                pass
    # Connections opened and dropped without a byte.
    for _ in range(20):
        socket.create_connection((host, int(port)), timeout=5).close()
    assert proc.poll() is None
    resp = _good_rerank(addr)
    assert [i.item_id for i in resp.items] != [] and not any(i.unscored for i in resp.items)


def test_gateway_alive_and_serving_after_the_fuzz(gateway):
    """Runs last in this module: after every fuzz test above."""
    proc, addr = gateway
    assert proc.poll() is None, "the gateway died during the fuzz"
    resp = _good_rerank(addr)
    assert sorted(i.item_id for i in resp.items) == sorted(KNOWN[:5])
