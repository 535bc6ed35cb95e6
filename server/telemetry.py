"""OpenTelemetry traces: one span per RPC, joined to the caller's W3C ``traceparent``
(gRPC metadata), one child span per pipeline stage, and the trace context passed on to
Triton in the inference request's headers so Triton's own spans (``--trace-config
mode=opentelemetry``) land in the same trace.

The provider is owned by this object (not the process-global one) and built from
settings; with ``traces = "none"`` every call is a no-op.

User ids never go into a span: ``tag_user`` records the keyed hash (``server.privacy``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.privacy import UserIdHasher

_PROPAGATOR = TraceContextTextMapPropagator()
EXPORTERS = ("none", "console")
USER_ATTRIBUTE = "rerank.user"  # the keyed hash of the user id, never the id


class Telemetry:
    def __init__(self, exporter: str = "none", service_name: str = "rerankd", *, user_id_hash_key: str = ""):
        if exporter not in EXPORTERS:
            raise ValueError(f"unknown trace exporter {exporter!r} (expected one of {EXPORTERS})")
        self.enabled = exporter != "none"
        # What stands for a user id in spans and log lines (``privacy.user_id_hash_key``).
        self.user_ref = UserIdHasher(user_id_hash_key)
        if self.enabled:
            self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            # Batched: exporting never sits on a request's path.
            self._provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
            self.tracer = self._provider.get_tracer("rerankd")
        else:
            self._provider = None
            self.tracer = trace.NoOpTracer()

    @staticmethod
    def extract(metadata: Iterable[tuple[str, str]] | None) -> Context:
        """The caller's trace context from gRPC metadata (``traceparent``, ``tracestate``)."""
        return _PROPAGATOR.extract({k: v for k, v in (metadata or ()) if isinstance(v, str)})

    def headers(self) -> dict[str, str]:
        """``traceparent`` for the current span, to send downstream (empty when disabled)."""
        carrier: dict[str, str] = {}
        if self.enabled:
            _PROPAGATOR.inject(carrier)
        return carrier

    def tag_user(self, user_id: str) -> None:
        """Mark the current span with the user's keyed hash (nothing for an empty id)."""
        if self.enabled and user_id:
            trace.get_current_span().set_attribute(USER_ATTRIBUTE, self.user_ref(user_id))

    def record_stages(self, stages: Mapping[str, tuple[float, float]]) -> None:
        """Child spans of the current span for stages timed with ``time.perf_counter``."""
        if not self.enabled:
            return
        # perf_counter -> wall-clock nanoseconds, via one reading of each clock.
        offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        for name, (start, end) in stages.items():
            span = self.tracer.start_span(f"rerank.{name}", start_time=offset_ns + int(start * 1e9))
            span.end(end_time=offset_ns + int(end * 1e9))

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
