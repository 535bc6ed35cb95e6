"""The load generator against an in-process fake gateway (real grpc.aio, no Triton)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from perf.loadgen import Run, build_messages, closed_loop, open_loop
from perf.workload import Request

pb_mod = pytest.importorskip("server.api.pb")


def _base():
    from server.api.pb import reranker_pb2_grpc

    return reranker_pb2_grpc.RerankerServicer


class FakeReranker(_base()):
    def __init__(self, fail_every: int = 0):
        self.n = 0
        self.fail_every = fail_every

    async def Rerank(self, request, context):
        from server.api.pb import reranker_pb2 as pb

        self.n += 1
        if self.fail_every and self.n % self.fail_every == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        await asyncio.sleep(0.002)
        return pb.RerankResponse(items=[pb.ScoredItem(item_id=c.item_id) for c in request.candidates],
                                 timings=[pb.StageTiming(stage="infer", ms=1.5)])


async def _serve(servicer):
    from server.api.pb import reranker_pb2_grpc

    server = grpc.aio.server()
    reranker_pb2_grpc.add_RerankerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _msgs():
    return build_messages([Request("1", ("1", "2", "3")), Request("2", ("4", "5"))])


def test_closed_loop_counts_pairs_codes_and_stage_timings():
    async def main():
        server, addr = await _serve(FakeReranker(fail_every=5))
        try:
            return await closed_loop(addr, _msgs(), 3, 0.5, warmup_s=0.1, candidates=3)
        finally:
            await server.stop(0)

    s = asyncio.run(main()).summary()
    assert s["requests_ok"] > 10 and s["pairs_per_s"] > s["rps"]
    assert "RESOURCE_EXHAUSTED=" in s["errors_by_code"]
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert s["gw_infer_p50_ms"] == pytest.approx(1.5)


def test_open_loop_offers_about_the_rate():
    async def main():
        server, addr = await _serve(FakeReranker())
        try:
            return await open_loop(addr, _msgs(), 200.0, 0.5, seed=1, candidates=3)
        finally:
            await server.stop(0)

    run = asyncio.run(main())
    assert 60 <= run.offered <= 160  # Poisson(100)
    assert run.codes["OK"] == run.offered


def test_open_loop_sheds_beyond_max_outstanding():
    async def main():
        server, addr = await _serve(FakeReranker())
        try:
            return await open_loop(addr, _msgs(), 2000.0, 0.2, max_outstanding=1, candidates=3)
        finally:
            await server.stop(0)

    run = asyncio.run(main())
    assert run.codes["CLIENT_OVERLOAD"] > 0


def test_summary_of_an_empty_run_is_safe():
    s = Run("closed", 1, 10).summary()
    assert s["requests_ok"] == 0 and s["rps"] == 0.0
