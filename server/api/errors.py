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

from server.errors import RerankdError

log = logging.getLogger(__name__)

STATUS_BY_NAME: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


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
