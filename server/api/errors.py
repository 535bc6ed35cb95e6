"""The one table from core errors to gRPC status codes, and the per-RPC wrapper that applies
it (and opens the RPC's trace span, joined to the caller's ``traceparent``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from server.errors import InvalidArgument, RerankdError

log = logging.getLogger(__name__)

STATUS_BY_NAME: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def status_code_of(exc: RerankdError) -> grpc.StatusCode:
    """The gRPC status of a typed error (INTERNAL for a status the table lacks)."""
    return STATUS_BY_NAME.get(exc.status, grpc.StatusCode.INTERNAL)


class MalformedRequest:
    """What a request body that does not parse as its message deserializes to (see
    ``add_servicer``); ``grpc_errors`` answers it INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error


def _tolerant(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # DecodeError: truncated, bad wire type, invalid UTF-8...
            return MalformedRequest(f"request body is not a valid message ({type(exc).__name__}: {exc})")

    return deserialize


class _Capture:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self):
        self.service = ""
        self.handlers: dict = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def add_servicer(add_to_server, servicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as ``add_to_server`` (a generated ``add_*Servicer_to_server``)
    would, but with request parsing that cannot fail: grpc's own answer to an undecodable
    body is UNKNOWN, raised before any servicer code runs; this makes it INVALID_ARGUMENT."""
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {name: h._replace(request_deserializer=_tolerant(h.request_deserializer))
                for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-request-id`` metadata, or a fresh id."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:128]
    return uuid.uuid4().hex


def grpc_errors(method):
    """Map typed errors to their status; anything else becomes INTERNAL without a traceback.

    The servicer's ``telemetry`` opens a SERVER span per call in the caller's trace.
    """

    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        t0 = time.perf_counter()
        request_id = request_id_of(context)
        telemetry, metrics = self.telemetry, self.metrics

        # Counted before the status goes out: ``context.abort`` sends it at once, and a caller
        # that scrapes the metrics right after its error must find the error counted.
        def done(code: str) -> None:
            metrics.rpc_done(name, code, time.perf_counter() - t0)

        with telemetry.tracer.start_as_current_span(
                f"rerank.v1.Reranker/{name}", kind=SpanKind.SERVER,
                context=telemetry.extract(context.invocation_metadata())) as span:
            span.set_attribute("rerank.request_id", request_id)
            try:
                if type(request) is MalformedRequest:
                    raise InvalidArgument(request.error, field="request")
                result = await method(self, request, context, request_id)
            except RerankdError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.status))
                code = exc.status if exc.status in STATUS_BY_NAME else "INTERNAL"
                done(code)
                await context.abort(STATUS_BY_NAME[code], str(exc))
            except grpc.aio.AbortError:  # the method aborted with a status of its own
                done(getattr(context.code(), "name", "UNKNOWN"))
                raise
            except asyncio.CancelledError:  # the caller went away (or its deadline passed)
                done("CANCELLED")
                raise
            except Exception:
                span.set_status(Status(StatusCode.ERROR, "INTERNAL"))
                log.exception("internal error in %s (request id %s)", name, request_id)
                done("INTERNAL")
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
            done("OK")
            return result

    return wrapper
