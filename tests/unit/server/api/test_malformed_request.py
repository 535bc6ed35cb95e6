"""``add_servicer``: a request body that does not parse is INVALID_ARGUMENT, not grpc's UNKNOWN.

A real grpc.aio server and channel, in-process; the servicer is a minimal one (the gateway's
own registration is covered by tests/integration/test_fuzz_grpc.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from server.api.errors import MalformedRequest, add_servicer, grpc_errors
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.metrics import Metrics
from server.telemetry import Telemetry


class _Servicer(pb_grpc.RerankerServicer):
    telemetry = Telemetry("none")
    metrics = Metrics(False)

    def __init__(self):
        self.seen = []

    @grpc_errors
    async def UpsertItems(self, request, context, request_id):
        self.seen.append(request)
        return pb.UpsertItemsResponse(upserted=len(request.items))


async def _calls(bodies: list[bytes]):
    servicer = _Servicer()
    server = grpc.aio.server()
    add_servicer(pb_grpc.add_RerankerServicer_to_server, servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    out = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/rerank.v1.Reranker/UpsertItems")  # raw bytes both ways
            for body in bodies:
                try:
                    out.append(("OK", pb.UpsertItemsResponse.FromString(await call(body, timeout=10))))
                except grpc.aio.AioRpcError as exc:
                    out.append((exc.code().name, exc.details()))
            try:  # a method the servicer does not implement still answers UNIMPLEMENTED
                await ch.unary_unary("/rerank.v1.Reranker/Rerank")(b"\xff", timeout=10)
            except grpc.aio.AioRpcError as exc:
                out.append((exc.code().name, exc.details()))
    finally:
        await server.stop(0)
    return out, servicer.seen


@pytest.mark.parametrize("body", [
    b"\xff\xff\xff",                      # truncated varint tag
    b"\x0a\x05\x0a\x03\xff\xfe\xfd",       # items[0].item_id is not UTF-8
    b"\x0a\x7f\x0a",                       # length prefix past the end
    b"\x0b" * 200,                         # unterminated groups
])
def test_undecodable_body_is_invalid_argument_naming_the_request(body):
    ((code, details), unimplemented), _ = asyncio.run(_calls([body]))
    assert code == "INVALID_ARGUMENT", (code, details)
    assert details.startswith("request: request body is not a valid message (DecodeError")
    assert unimplemented[0] == "UNIMPLEMENTED"


def test_valid_body_still_reaches_the_servicer_parsed():
    good = pb.UpsertItemsRequest(items=[pb.Item(item_id="a"), pb.Item(item_id="b")]).SerializeToString()
    replies, seen = asyncio.run(_calls([good]))
    assert replies[0][0] == "OK" and replies[0][1].upserted == 2
    assert [i.item_id for i in seen[0].items] == ["a", "b"]
    assert not any(isinstance(r, MalformedRequest) for r in seen)
