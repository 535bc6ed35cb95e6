"""``rerank.v1.Reranker`` over grpc.aio: convert, call the pipeline, convert back."""

from __future__ import annotations

import time

import grpc

from server.api import convert
from server.api.errors import grpc_errors
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.core.pipeline import Pipeline
from server.metrics import Metrics
from server.telemetry import Telemetry


class RerankerServicer(pb_grpc.RerankerServicer):
    def __init__(self, pipeline: Pipeline, telemetry: Telemetry, metrics: Metrics | None = None):
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.metrics = metrics or Metrics(False)

    @grpc_errors
    async def Rerank(self, request, context: grpc.aio.ServicerContext, request_id: str):
        t0 = time.perf_counter()
        req = convert.rerank_request(request, request_id=request_id, timeout_s=context.time_remaining())
        result = await self.pipeline.rerank(req)
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
