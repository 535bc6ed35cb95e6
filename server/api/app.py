"""Assemble the gateway: store, Triton client, model watcher, pipeline, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.api import tls
from server.api.auth import AuthInterceptor, KeyStore, exposure_warnings
from server.api.collector import IdleCollector
from server.api.errors import add_servicer
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.api.servicer import RerankerServicer
from server.core import breaker as circuit
from server.core import fallback
from server.core.admission import Admission
from server.core.impressions import ImpressionLog
from server.core.pipeline import Pipeline, PipelineConfig
from server.core.score_cache import ScoreCache
from server.errors import InvalidArgument
from server.features import open_store
from server.features.cache import ItemCache
from server.features.invalidation import Invalidation
from server.metrics import Metrics
from server.rules import RulesProvider
from server.settings import Settings, parse_weights
from server.telemetry import Telemetry
from server.triton.models import ModelWatcher
from server.triton.pool import endpoint_stats, open_scorer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reranker"].full_name
# Health of full service (the model scoring), apart from the service's own (see _set_health).
MODEL_HEALTH_NAME = f"{SERVICE_NAME}/model"


def pipeline_config(settings: Settings) -> PipelineConfig:
    s = settings
    return PipelineConfig(
        max_candidates=s.server.max_candidates,
        max_events_per_call=s.server.max_events_per_call,
        max_items_per_call=s.server.max_items_per_call,
        history_len=s.store.history_len,
        history_in_text=s.model.history_in_text,
        default_timeout_s=s.server.default_timeout_s,
        event_weights=parse_weights(s.model.event_weights),
        on_model_failure=_on_model_failure(s.resilience.on_model_failure),
        deadline_reserve_s=s.resilience.deadline_reserve_ms / 1000.0,
    )


def _on_model_failure(value: str) -> str:
    if value not in ("degrade", "fail"):
        raise InvalidArgument(f"expected degrade or fail, got {value!r}", field="resilience.on_model_failure")
    return value


class Gateway:
    """The rerankd gRPC server and the background task that follows Triton's model state."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # TLS files are checked first: a bad one fails start-up naming its setting.
        self.server_credentials = tls.server_credentials(settings.security)
        triton_credentials = tls.triton_credentials(settings.triton)
        for name in ("log_top_k", "queue_size"):  # checked before anything is opened
            if getattr(settings.online, name) < 1:
                raise InvalidArgument("must be at least 1", field=f"online.{name}")
        self.store = open_store(settings.store.url, history_len=settings.store.history_len,
                                impression_retention_s=settings.online.retention_s)
        # Online evaluation: each OK Rerank's top items, queued and written off the request path.
        online = settings.online
        self.impressions = (ImpressionLog(self.store, top_k=online.log_top_k, queue_size=online.queue_size)
                            if online.log_impressions else None)
        # One URL: a TritonScorer; a comma-separated list: a TritonPool over them (server.triton.pool).
        self.scorer = open_scorer(settings.triton.url, triton_credentials, settings.triton.model_name)
        self.models = ModelWatcher(self.scorer, settings.triton.model_repository,
                                   settings.triton.model_name,
                                   pinned_version=settings.triton.model_version,
                                   canary_salt=settings.triton.canary_salt)
        self.rules = RulesProvider(settings.rules.path or None)
        self.telemetry = Telemetry(settings.telemetry.traces, settings.telemetry.service_name,
                                   user_id_hash_key=settings.privacy.user_id_hash_key)
        self.item_cache = ItemCache(self.store, settings.store.item_cache_size,
                                    ttl_s=settings.store.item_cache_ttl_s or None)
        self.pipeline = Pipeline(pipeline_config(settings), self.store, self.scorer, self.models,
                                 Admission(settings.server.max_in_flight,
                                           backlog=lambda: self.scorer.abandoned_calls,
                                           shed=settings.server.load_shedding,
                                           headroom=settings.server.shed_headroom), items=self.item_cache,
                                 score_cache=ScoreCache(settings.server.score_cache_size),
                                 rules=self.rules, telemetry=self.telemetry,
                                 breaker=circuit.CircuitBreaker(settings.resilience.breaker_failures,
                                                                settings.resilience.breaker_open_s),
                                 impressions=self.impressions)
        # Gateways sharing a Redis store drop what the others change (server.features.invalidation).
        self.invalidation = (Invalidation(self.store, on_items=self.item_cache.invalidate,
                                          on_forget=self._forgotten_elsewhere,
                                          on_resync=self.item_cache.clear)
                             if getattr(self.store, "changes_channel", None) else None)
        self._invalidation_task: asyncio.Task | None = None
        self._served_once = False  # a model version was ready at some point (health, degraded mode)
        self.metrics = Metrics(settings.telemetry.metrics_port > 0, settings.telemetry.service_name)
        self._register_metrics()
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer()
        # API keys (None: none configured, every RPC open, no interceptor on the request path).
        sec = settings.security
        self.api_keys = KeyStore.from_settings(sec)
        interceptors = ([AuthInterceptor(self.api_keys, open_health=sec.open_health,
                                         open_reflection=sec.open_reflection, metrics=self.metrics)]
                        if self.api_keys is not None else [])
        srv = settings.server
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # A bounded connection age makes DNS-balancing clients re-resolve (server.max_connection_age_s).
            *([("grpc.max_connection_age_ms", int(srv.max_connection_age_s * 1000)),
               ("grpc.max_connection_age_grace_ms", int(srv.max_connection_age_grace_s * 1000))]
              if srv.max_connection_age_s > 0 else []),
        ])
        self.port: int | None = None
        self._watch_task: asyncio.Task | None = None
        self._rules_task: asyncio.Task | None = None
        self._gc_task: asyncio.Task | None = None
        self.collector: IdleCollector | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        # A body that does not parse is INVALID_ARGUMENT (grpc alone would answer UNKNOWN).
        add_servicer(pb_grpc.add_RerankerServicer_to_server,
                     RerankerServicer(self.pipeline, self.telemetry, self.metrics), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        await self._set_health()
        for warning in exposure_warnings(self.settings.server.host, keys=self.api_keys is not None,
                                         tls=bool(self.settings.security.tls_cert),
                                         metrics_host=(self.settings.telemetry.metrics_host
                                                       if self.settings.telemetry.metrics_port > 0 else None)):
            log.warning("%s", warning)
        address = f"{self.settings.server.host}:{self.settings.server.port}"
        self.port = (self.server.add_secure_port(address, self.server_credentials)
                     if self.server_credentials is not None else self.server.add_insecure_port(address))
        if not self.port:
            raise RuntimeError(f"cannot bind {address}")
        await self.server.start()
        tel = self.settings.telemetry
        if tel.metrics_port > 0:
            # With API keys, scrapes need one with the ``metrics`` (or ``admin``) scope.
            self.metrics_port = self.metrics.serve(tel.metrics_host, tel.metrics_port,
                                                   authorize=self.api_keys.http_check if self.api_keys else None)
        await self.models.refresh()
        await self._set_health()
        # Full garbage collections only when idle (or overdue): see server.api.collector.
        srv = self.settings.server
        if srv.gc_idle_every_s > 0:
            self.collector = IdleCollector(lambda: self.pipeline.admission.in_flight == 0,
                                           idle_every_s=srv.gc_idle_every_s, max_delay_s=srv.gc_max_delay_s,
                                           deep_every_s=srv.gc_deep_every_s)
            self.collector.install()
            self._gc_task = asyncio.create_task(self.collector.run())
        self._watch_task = asyncio.create_task(self._watch_models())
        if self.invalidation is not None:
            self._invalidation_task = asyncio.create_task(self.invalidation.run())
        if self.impressions is not None:
            self.impressions.start()
        self._rules_task = (asyncio.create_task(self.rules.watch(self.settings.rules.reload_interval_s))
                            if self.settings.rules.path else None)
        return self.port

    def _register_metrics(self) -> None:
        """What the metrics endpoint reads at each scrape (numbers only: it reads from its own thread)."""
        m, p = self.metrics, self.pipeline
        for name, cache in (("score_cache", lambda: p.score_cache), ("item_cache", lambda: self.item_cache)):
            m.observe(f"rerankd.{name}.hits", lambda c=cache: c().hits, kind="counter",
                      description=f"{name.replace('_', ' ')} lookups answered from the cache")
            m.observe(f"rerankd.{name}.misses", lambda c=cache: c().misses, kind="counter",
                      description=f"{name.replace('_', ' ')} lookups that missed")
            m.observe(f"rerankd.{name}.hit_ratio", lambda c=cache: c().stats()["hit_rate"],
                      description=f"{name.replace('_', ' ')} hits / lookups since start")
            m.observe(f"rerankd.{name}.entries", lambda c=cache: c().stats()["size"],
                      description=f"entries in the {name.replace('_', ' ')}")
        m.observe("rerankd.in_flight", lambda: p.admission.in_flight, description="Requests in the pipeline now")
        if self.invalidation is not None:
            inv = self.invalidation
            m.observe("rerankd.invalidation.subscribed", lambda: float(inv.subscribed.is_set()),
                      description="1 while subscribed to the store's change channel (other gateways' writes)")
            m.observe("rerankd.invalidation.received", lambda: inv.received, kind="counter",
                      description="Changes announced by other gateways and applied to this one's caches")
        m.observe("rerankd.admission.rejected", lambda: p.admission.rejected, kind="counter",
                  description="Requests refused at the in-flight limit (RESOURCE_EXHAUSTED)")
        m.observe("rerankd.admission.shed", lambda: p.admission.shed, kind="counter",
                  description="Requests refused because the queue would make them miss their deadline "
                              "(RESOURCE_EXHAUSTED)")
        m.observe("rerankd.admission.expected_ms", p.admission.expected_ms,
                  description="Expected service time of a request admitted now (load shedding's estimate)")
        m.observe("rerankd.triton.open_calls", lambda: self.scorer.open_calls,
                  description="Inference calls open on the channel to Triton")
        m.observe("rerankd.triton.abandoned_calls", lambda: self.scorer.abandoned_calls,
                  description="Inference calls past their caller's deadline, still running in Triton")
        m.observe("rerankd.triton.endpoint.up",
                  lambda: [(float(e.up), {"endpoint": e.url}) for e in endpoint_stats(self.scorer)],
                  description="1 while the Triton endpoint takes calls (reachable, a version READY), else 0")
        m.observe("rerankd.triton.endpoint.open_calls",
                  lambda: [(e.open_calls, {"endpoint": e.url}) for e in endpoint_stats(self.scorer)],
                  description="Inference calls open to each Triton endpoint")
        m.observe("rerankd.triton.endpoint.answered",
                  lambda: [(e.answered_calls, {"endpoint": e.url}) for e in endpoint_stats(self.scorer)],
                  kind="counter", description="Inference calls each Triton endpoint answered")
        m.observe("rerankd.triton.retries", lambda: getattr(self.scorer, "retries", 0), kind="counter",
                  description="Inference calls sent again to another Triton endpoint after theirs was unreachable")
        if self.impressions is not None:
            imp = self.impressions
            m.observe("rerankd.impressions.written", lambda: imp.written, kind="counter",
                      description="Impressions (what a Rerank reply showed) written to the feature store")
            m.observe("rerankd.impressions.dropped", lambda: imp.dropped + imp.failed, kind="counter",
                      description="Impressions not written: the queue was full, or the store refused the write")
            m.observe("rerankd.impressions.queued", lambda: imp.queued,
                      description="Impressions waiting to be written")
        m.observe("rerankd.model.serving", self._serving,
                  description="1 with the served model version as labels; 0 while no version is ready")
        m.observe("rerankd.model.canary_share", self._canary,
                  description="Share of users routed to the canary candidate version (labels), 0 without one")
        m.observe("rerankd.rerank.degraded",
                  lambda: [(p.degraded.get(r, 0), {"reason": r}) for r in fallback.REASONS], kind="counter",
                  description="Rerank replies answered with the fallback order (degraded), by reason")
        m.observe("rerankd.breaker.state",
                  lambda: [(float(p.breaker.state == s), {"state": s}) for s in circuit.STATES],
                  description="The circuit breaker in front of Triton: 1 for its current state")
        m.observe("rerankd.breaker.opened", lambda: p.breaker.transitions[circuit.OPEN], kind="counter",
                  description="Times the circuit breaker opened (failed probes included)")

    def _forgotten_elsewhere(self, user: str) -> None:
        """Another gateway erased ``user``: drop this one's cached scores and queued impressions
        (one being written at that moment can still land: a repeated ForgetUser erases it)."""
        self.pipeline.score_cache.forget(user)
        if self.impressions is not None:
            self.impressions.drop_queued(user)

    def _serving(self) -> list[tuple[float, dict[str, str]]]:
        current = self.models.current  # read once: the watcher may swap it meanwhile
        if current is None:
            return [(0.0, {"model": self.settings.triton.model_name, "version": ""})]
        return [(1.0, {"model": current.name, "version": current.version})]

    def _canary(self) -> list[tuple[float, dict[str, str]]]:
        candidate, share = self.models.candidate, self.models.share  # read once
        if candidate is None:
            return [(0.0, {"model": self.settings.triton.model_name, "version": ""})]
        return [(share, {"model": candidate.name, "version": candidate.version})]

    async def _set_health(self) -> None:
        """``""`` and the service: SERVING while Rerank answers OK. In degrade mode that is from
        the first time a model version is ready on (outages then answer degraded); with
        ``fail`` it follows model readiness. ``<service>/model``: SERVING only at full service
        (a version ready and the circuit breaker closed)."""
        ready = self.models.current is not None
        self._served_once |= ready
        degrade = self.settings.resilience.on_model_failure == "degrade"
        up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        status = up if (self._served_once if degrade else ready) else down
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        full = ready and self.pipeline.breaker.state == circuit.CLOSED
        await self.health.set(MODEL_HEALTH_NAME, up if full else down)

    async def _watch_models(self) -> None:
        while True:
            try:
                await self.models.refresh()
                await self._set_health()
            except Exception:  # a dead watcher would freeze the served model: keep going
                log.exception("model refresh failed")
            await asyncio.sleep(self.settings.triton.poll_interval_s)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace_s``), close clients."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for task in (self._watch_task, self._rules_task, self._gc_task, self._invalidation_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.impressions is not None:  # after the drain: what the last replies showed
            await self.impressions.close()
        if self.collector is not None:
            self.collector.uninstall()
        await self.scorer.close()
        await self.store.close()
        self.telemetry.shutdown()
        self.metrics.shutdown()

    async def wait(self) -> None:
        await self.server.wait_for_termination()
