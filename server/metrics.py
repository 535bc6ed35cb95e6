"""Prometheus-style metrics through OpenTelemetry: RPCs by method and status code, Rerank
latency and per-stage time, the caches' hit rates, admission and Triton call state.

Served as Prometheus text on ``http://<metrics_host>:<metrics_port>/metrics`` (the OpenTelemetry
Prometheus exporter, on a registry of this object's own: no process-global state).

The request path stays cheap: counts and stage times go into plain Python counters on the event
loop, read by observable instruments only when Prometheus scrapes; the one per-request SDK call
is the Rerank latency histogram (~7 µs). Sources such as the caches register a callback with
``observe`` and are read at scrape time too (from the exporter's HTTP thread: they must only
read numbers).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger(__name__)

# Rerank latency buckets (seconds): the gateway's own overhead is milliseconds, a request
# with Triton tens of milliseconds, overload seconds.
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
REFUSED_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)

Reading = float | Iterable[tuple[float, Mapping[str, str]]]


class Metrics:
    """Off (every call a no-op but the counters) unless ``enabled``; ``serve`` starts the endpoint."""

    def __init__(self, enabled: bool, service_name: str = "rerankd"):
        self.enabled = enabled
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, status code) -> calls
        self.stage_ms: Counter[str] = Counter()  # stage -> total ms
        self.stage_calls: Counter[str] = Counter()
        # (model version, outcome: ok | degraded | error) -> Rerank replies (canary comparisons)
        self.by_version: Counter[tuple[str, str]] = Counter()
        self._server = None
        self._provider = None
        self._duration = self._refused = self._version_duration = None
        self._broken: set[str] = set()
        if not enabled:
            return
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import (
            ExplicitBucketHistogramAggregation,
            View,
        )
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self._provider = MeterProvider(
            metric_readers=[reader], resource=Resource.create({"service.name": service_name}),
            views=[View(instrument_name="rerankd.rerank.duration",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S)),
                   View(instrument_name="rerankd.rerank.refused.duration",
                        aggregation=ExplicitBucketHistogramAggregation(REFUSED_BUCKETS_S)),
                   View(instrument_name="rerankd.rerank.version.duration",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S))])
        self.meter = self._provider.get_meter("rerankd")
        self._duration = self.meter.create_histogram(
            "rerankd.rerank.duration", unit="s", description="Rerank latency in the gateway (handler), OK replies")
        self._refused = self.meter.create_histogram(
            "rerankd.rerank.refused.duration", unit="s",
            description="Rerank latency in the gateway (handler) of calls refused with RESOURCE_EXHAUSTED")
        self._version_duration = self.meter.create_histogram(
            "rerankd.rerank.version.duration", unit="s",
            description="Rerank latency in the gateway by model version (OK replies, degraded included)")
        self.meter.create_observable_counter(
            "rerankd.rerank.version.requests", callbacks=[self._observe_versions],
            description="Rerank replies by model version and outcome (ok, degraded, error)")
        self.meter.create_observable_counter(
            "rerankd.requests", callbacks=[self._observe_requests],
            description="RPCs answered, by method and gRPC status code")
        self.meter.create_observable_counter(
            "rerankd.stage.time", unit="s", callbacks=[self._observe_stage_time],
            description="Time spent in each Rerank pipeline stage, summed over requests")
        self.meter.create_observable_counter(
            "rerankd.stage.calls", callbacks=[self._observe_stage_calls],
            description="Rerank requests that ran each pipeline stage")

    # -- the request path ---------------------------------------------------------------
    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        """One RPC answered with ``code`` ("OK", "INVALID_ARGUMENT", ...) after ``seconds``."""
        self.requests[(method, code)] += 1
        if self._duration is not None and method == "Rerank":
            if code == "OK":
                self._duration.record(seconds)
            elif code == "RESOURCE_EXHAUSTED":  # load shed or at the in-flight limit: must be fast
                self._refused.record(seconds)

    def rerank_version(self, version: str, outcome: str, seconds: float) -> None:
        """One Rerank resolved to model ``version``: ``outcome`` ok, degraded or error."""
        self.by_version[(version, outcome)] += 1
        if self._version_duration is not None and outcome != "error":
            self._version_duration.record(seconds, {"version": version})

    def stages(self, timings_ms: Mapping[str, float]) -> None:
        """Per-stage times of one Rerank (its ``timings_ms``)."""
        for stage, ms in timings_ms.items():
            self.stage_ms[stage] += ms
            self.stage_calls[stage] += 1

    # -- sources read at scrape time -------------------------------------------------------
    def observe(self, name: str, read: Callable[[], Reading], *, description: str, kind: str = "gauge",
                unit: str = "") -> None:
        """Export ``read()`` (a number, or (value, labels) pairs) as ``name`` at each scrape.
        ``kind``: "gauge" (a level) or "counter" (a running total)."""
        if not self.enabled:
            return

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            try:
                got = read()
            except Exception:  # a broken source must not break the scrape (logged once)
                if name not in self._broken:
                    self._broken.add(name)
                    log.exception("metric %s could not be read", name)
                return []
            if isinstance(got, (int, float)):
                return [Observation(got)]
            return [Observation(v, dict(labels)) for v, labels in got]

        create = {"gauge": self.meter.create_observable_gauge,
                  "counter": self.meter.create_observable_counter}[kind]
        create(name, callbacks=[callback], unit=unit, description=description)

    def _observe_requests(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"method": m, "code": c}) for (m, c), n in list(self.requests.items())]

    def _observe_versions(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"version": v, "outcome": o}) for (v, o), n in list(self.by_version.items())]

    def _observe_stage_time(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(ms / 1000.0, {"stage": s}) for s, ms in list(self.stage_ms.items())]

    def _observe_stage_calls(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"stage": s}) for s, n in list(self.stage_calls.items())]

    # -- endpoint --------------------------------------------------------------------------
    def serve(self, host: str, port: int, authorize: Callable[[str | None], int] | None = None) -> int | None:
        """Serve ``/metrics`` on ``host:port`` (0: a free port); returns the port, or None when
        metrics are off or the port cannot be bound (logged: the gateway serves on without).
        ``authorize``: the request's ``Authorization`` header -> HTTP status (200 lets it through)."""
        if not self.enabled:
            return None
        from prometheus_client import make_wsgi_app, start_http_server

        try:
            if authorize is None:
                self._server, _ = start_http_server(port, addr=host, registry=self.registry)  # (server, thread)
            else:
                self._server = _serve_guarded(host, port, make_wsgi_app(self.registry), authorize)
        except OSError as exc:
            log.error("metrics endpoint %s:%s not started: %s (the gateway serves without it)", host, port, exc)
            return None
        return self._server.server_port

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None


_REASONS = {401: "Unauthorized", 403: "Forbidden"}


def _serve_guarded(host: str, port: int, app, authorize: Callable[[str | None], int]):
    """``app`` (WSGI) on a daemon thread, each request first passed by ``authorize``; returns the server."""
    import socket
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    def guarded(environ, start_response):
        status = authorize(environ.get("HTTP_AUTHORIZATION"))
        if status == 200:
            return app(environ, start_response)
        reason = _REASONS.get(status, "Forbidden")
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="rerankd metrics"'))
        start_response(f"{status} {reason}", headers)
        return [f"{reason}: send 'Authorization: Bearer <key>' with a key holding the 'metrics' or "
                "'admin' scope\n".encode()]

    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # scrapes are not news
            pass

    httpd = make_server(sockaddr[0], port, guarded, Server, handler_class=Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
