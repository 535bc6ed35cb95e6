"""``rerank.v1.Reranker`` over grpc.aio: convert, call the pipeline, convert back."""

from __future__ import annotations

import logging
import time

import grpc

from server.api import convert
from server.api.errors import grpc_errors
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.core.pipeline import SERVED_VERSION, Pipeline
from server.metrics import Metrics
from server.telemetry import Telemetry

log = logging.getLogger(__name__)


class RerankerServicer(pb_grpc.RerankerServicer):
    def __init__(self, pipeline: Pipeline, telemetry: Telemetry, metrics: Metrics | None = None):
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.metrics = metrics or Metrics(False)

    @grpc_errors
    async def Rerank(self, request, context: grpc.aio.ServicerContext, request_id: str):
        t0 = time.perf_counter()
        req = convert.rerank_request(request, request_id=request_id, timeout_s=context.time_remaining())
        self.telemetry.tag_user(req.user_id)
        try:
            result = await self.pipeline.rerank(req)
        except BaseException:
            if version := SERVED_VERSION.get():  # resolved to a version, then failed
                self.metrics.rerank_version(version, "error", time.perf_counter() - t0)
            raise
        if result.model_version:
            self.metrics.rerank_version(result.model_version, "degraded" if result.degraded_reason else "ok",
                                        time.perf_counter() - t0)
        self.metrics.stages(result.timings_ms)
        resp = convert.rerank_response(result)
        # "handler": this method, conversions included; the caller's latency minus it is the
        # transport (both gRPC stacks and the network).
        resp.timings.add(stage="handler", ms=(time.perf_counter() - t0) * 1000.0)
        return resp

    @grpc_errors
    async def RecordEvents(self, request, context: grpc.aio.ServicerContext, request_id: str):
        result = await self.pipeline.record_events(convert.events(request))
        return pb.RecordEventsResponse(accepted=result.accepted, duplicates=result.duplicates)

    @grpc_errors
    async def UpsertItems(self, request, context: grpc.aio.ServicerContext, request_id: str):
        upserted, deleted = await self.pipeline.upsert_items(convert.items(request),
                                                             list(request.delete_item_ids))
        return pb.UpsertItemsResponse(upserted=upserted, deleted=deleted)

    @grpc_errors
    async def ForgetUser(self, request, context: grpc.aio.ServicerContext, request_id: str):
        """Scope ``admin`` (checked by the API-key layer, not here)."""
        self.telemetry.tag_user(request.user_id)
        events, cached = await self.pipeline.forget_user(request.user_id)
        # An audit line: the keyed hash stands for the user, never the id itself.
        log.info("ForgetUser %s: %d events and %d cached scores removed (request id %s)",
                 self.telemetry.user_ref(request.user_id), events, cached, request_id)
        return pb.ForgetUserResponse(events_removed=events, cached_scores_removed=cached)
