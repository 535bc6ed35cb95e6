"""``TritonScorer`` against the session's real Triton: scores, chunking, error mapping."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from contract.model_spec import Manifest
from contract.tokenize import PairTokenizer
from server.errors import DeadlineExceeded, Unavailable
from server.triton.client import TritonScorer
from server.triton.launcher import free_port
from tests.integration.conftest import inference_counts, queue_delay

pytestmark = pytest.mark.integration


def _model(stack):
    folder = stack.repo / "reranker" / "1"
    spec = Manifest.read(folder / "manifest.json").spec
    return folder, spec, PairTokenizer.from_file(folder / "tokenizer.json", spec)


async def _score(url, batch, spec, **kwargs):
    scorer = TritonScorer(url)
    try:
        return await scorer.score(batch, spec, "1", **kwargs)
    finally:
        await scorer.close()


def test_scores_equal_onnxruntime_and_chunks_keep_order(stack):
    folder, spec, tok = _model(stack)
    texts = [f"film number {i} | genres: drama" for i in range(spec.max_batch_size + 7)]
    batch = tok.encode("a user who likes dramas", texts)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = sess.run(["score"], batch.arrays)[0].reshape(-1)
    # More rows than max_batch_size: two chunks, sent concurrently, joined in order.
    got = asyncio.run(_score(stack.triton.grpc_url, batch, spec, timeout_s=30,
                             headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}))
    assert got.dtype == np.float32 and got.shape == (len(texts),)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_a_deadline_too_short_is_deadline_exceeded(stack):
    _, spec, tok = _model(stack)
    batch = tok.encode("u", ["x"] * 64)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(_score(stack.triton.grpc_url, batch, spec, timeout_s=1e-6))


def test_deadlines_that_expire_mid_call_leave_triton_running(stack):
    """Triton 2.51 crashed (SIGSEGV) on gRPC calls cancelled in flight: about one in 150 of
    these calls did it before the scorer stopped cancelling them. Now none is cancelled."""
    _, spec, tok = _model(stack)
    batch = tok.encode("u", ["x"] * 64)

    async def many():
        scorer = TritonScorer(stack.triton.grpc_url)
        outcomes = []
        try:
            for _ in range(100):
                for timeout_s in (1e-6, 1e-4, 3e-4, 1e-3, 3e-3):
                    try:
                        await scorer.score(batch, spec, "1", timeout_s=timeout_s)
                        outcomes.append("ok")
                    except DeadlineExceeded:
                        outcomes.append("late")
            return outcomes, await scorer.score(batch, spec, "1", timeout_s=30)
        finally:
            await scorer.close()
            assert scorer.open_calls == 0  # close waited for the abandoned calls

    outcomes, scores = asyncio.run(many())
    assert outcomes.count("late") >= 100, outcomes.count("late")
    assert stack.triton.proc.poll() is None, f"Triton exited: see {stack.triton.log_path}"
    assert scores.shape == (64,) and np.isfinite(scores).all()


async def _settled(scorer: TritonScorer, within_s: float = 2.0) -> None:
    """Wait for the scorer's open calls to end; none may stay open or abandoned."""
    for _ in range(int(within_s / 0.02)):
        if scorer.open_calls == 0:
            break
        await asyncio.sleep(0.02)
    assert scorer.open_calls == 0 and scorer.abandoned_calls == 0


@pytest.mark.parametrize("how", ["deadline", "hang_up"])
def test_a_call_nobody_waits_for_is_abandoned_not_cancelled(stack, how):
    """Past its deadline, or when its caller hangs up, a call stays open and runs to its end in
    Triton (its answer dropped); until then it counts as abandoned (admission control)."""
    _, spec, tok = _model(stack)
    batch = tok.encode("u", ["x"] * 4)

    async def abandon_then_call():
        scorer = TritonScorer(stack.triton.grpc_url)
        try:
            # A 200 ms batching window holds the call in Triton's queue past its 20 ms deadline.
            if how == "deadline":
                with pytest.raises(DeadlineExceeded):
                    await scorer.score(batch, spec, "1", timeout_s=0.02)
            else:
                waiting = asyncio.create_task(scorer.score(batch, spec, "1", timeout_s=30))
                await asyncio.sleep(0.05)
                waiting.cancel()  # what grpc.aio does to a handler whose caller went away
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            assert scorer.open_calls == 1  # still open: nothing was cancelled
            assert scorer.abandoned_calls == 1  # and nobody waits for it: admission counts it
            await _settled(scorer)  # it ends when Triton answers; the answer is dropped
            return await scorer.score(batch, spec, "1", timeout_s=30)
        finally:
            await scorer.close()

    with queue_delay(stack.triton, 200_000) as client:
        before = inference_counts(client)
        scores = asyncio.run(abandon_then_call())
        after = inference_counts(client)
    assert scores.shape == (4,)
    assert after[0] - before[0] == 8  # both calls ran: Triton was never told to stop the first


def test_no_triton_listening_is_unavailable(stack):
    _, spec, tok = _model(stack)
    with pytest.raises(Unavailable, match="UNAVAILABLE"):
        asyncio.run(_score(f"127.0.0.1:{free_port()}", tok.encode("u", ["x"]), spec, timeout_s=5))


def test_unknown_model_or_output_is_unavailable_with_the_reason(stack):
    _, spec, tok = _model(stack)
    batch = tok.encode("u", ["x", "y"])
    with pytest.raises(Unavailable, match="no-such-model"):
        asyncio.run(_score(stack.triton.grpc_url, batch, dataclasses.replace(spec, name="no-such-model"),
                           timeout_s=5))
    with pytest.raises(Unavailable):
        asyncio.run(_score(stack.triton.grpc_url, batch, dataclasses.replace(spec, output_name="nope"),
                           timeout_s=5))
