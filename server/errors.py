"""The few typed errors the core raises.

The core never imports gRPC: each error names its status as a plain string, and
``server.api.errors`` maps those names to gRPC status codes in one table.
"""

from __future__ import annotations


class RerankdError(Exception):
    """Base class. ``status`` is the name of the gRPC status code it maps to."""

    status = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(RerankdError):
    status = "INVALID_ARGUMENT"


class NotFound(RerankdError):
    status = "NOT_FOUND"


class Overloaded(RerankdError):
    status = "RESOURCE_EXHAUSTED"


class LoadShed(Overloaded):
    """Refused by load shedding: the queue would make the model miss the request's deadline
    (degraded mode answers such a request with the fallback order instead)."""


class Unavailable(RerankdError):
    status = "UNAVAILABLE"


class DeadlineExceeded(RerankdError):
    status = "DEADLINE_EXCEEDED"


class Unauthenticated(RerankdError):
    """No credentials, or credentials the gateway does not know."""

    status = "UNAUTHENTICATED"


class PermissionDenied(RerankdError):
    """Known credentials without the scope the call needs."""

    status = "PERMISSION_DENIED"


class InferenceFailed(Unavailable):
    """An inference call failed: ``unreachable`` when Triton could not be reached (connection
    refused or lost), else Triton answered with an error. Degraded mode tells the two apart."""

    def __init__(self, message: str, *, unreachable: bool, field: str | None = None):
        super().__init__(message, field=field)
        self.unreachable = unreachable
