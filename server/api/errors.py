"""The one table from core errors to gRPC status codes, and the handler that applies it."""

from __future__ import annotations

import functools
import logging
import uuid

import grpc

from server.errors import RerankdError

log = logging.getLogger(__name__)

STATUS_BY_NAME: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-request-id`` metadata, or a fresh id."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:128]
    return uuid.uuid4().hex


def grpc_errors(method):
    """Map typed errors to their status; anything else becomes INTERNAL without a traceback."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        request_id = request_id_of(context)
        try:
            return await method(self, request, context, request_id)
        except RerankdError as exc:
            await context.abort(STATUS_BY_NAME.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s (request id %s)", method.__name__, request_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")

    return wrapper
