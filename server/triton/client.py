"""The gateway's one long-lived gRPC channel to Triton, and the scoring call over it.

Inference calls are never cancelled. Triton 2.51's gRPC front end can crash (SIGSEGV) when a
client cancels an inference call that is in flight, whether by a gRPC deadline or by dropping the
call (triton-inference-server/server#7368 and #8034; fixed only in later releases). So a call
carries no gRPC deadline: the gateway stops waiting at the caller's deadline, and the abandoned
call runs to its end in the background, its answer discarded. (Triton's own queue timeouts would
drop late calls earlier, but they stall its batcher: see ``ModelSpec``.) ``close`` lets open
calls finish before it closes the channel.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from contract.model_spec import ModelSpec
from contract.shared_prefix import PrefixBatch
from contract.tokenize import EncodedBatch
from server.errors import DeadlineExceeded, InferenceFailed, RerankdError

# tritonclient's own channel options, plus a short reconnect backoff: gRPC's default grows to
# 120 s, so after a Triton outage of ~15 s the channel could wait ~10 s more before it tried the
# restarted server (degraded replies meanwhile). Reconnecting to a local port is cheap.
_KEEPALIVE = grpcclient.KeepAliveOptions()
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", int(_KEEPALIVE.keepalive_permit_without_calls)),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _translate(exc: InferenceServerException) -> RerankdError:
    # Never DEADLINE_EXCEEDED: calls carry no gRPC deadline (see the module docstring).
    status = str(exc.status() or "")
    return InferenceFailed(f"inference failed: {status.removeprefix('StatusCode.')}: {exc.message()}",
                           unreachable=status == "StatusCode.UNAVAILABLE")


class TritonScorer:
    """Scores encoded pairs on a Triton model; splits batches over ``max_batch_size``."""

    def __init__(self, url: str, credentials: grpc.ChannelCredentials | None = None):
        """``credentials``: TLS to Triton (``server.api.tls.triton_credentials``); None: plaintext."""
        self.url = url
        self.tls = credentials is not None
        self._client = grpcclient.InferenceServerClient(url=url, creds=credentials, channel_args=_CHANNEL_ARGS)
        self._inflight: set[asyncio.Future] = set()
        # Calls whose caller stopped waiting (deadline) while Triton still runs them: work that
        # no request holds, which admission control counts (``Admission(backlog=...)``).
        self._abandoned: set[asyncio.Future] = set()
        # Whether Triton answered the last model-state check (``ready_versions``): a degraded
        # reply without a ready model says "triton_unavailable" rather than "model_not_ready".
        self.reachable = True
        # Inference calls Triton answered (per-endpoint metrics, ``server.triton.pool``).
        self.answered_calls = 0

    async def ready_versions(self, model_name: str, timeout_s: float = 2.0) -> list[str]:
        """Versions of ``model_name`` that Triton reports READY (empty if none or unreachable)."""
        try:
            # Bounded: a Triton that is down must not stall the watcher (or start-up).
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            self.reachable = str(exc.status() or "") != "StatusCode.UNAVAILABLE"
            return []
        self.reachable = True
        return [m.get("version", "") for m in index.get("models", [])
                if m.get("name") == model_name and m.get("state") == "READY"]

    async def score(self, batch: EncodedBatch | PrefixBatch, spec: ModelSpec, version: str,
                    timeout_s: float | None = None, headers: dict[str, str] | None = None) -> np.ndarray:
        """One score per candidate of ``batch`` (float32 [n candidates]), in its order.

        Chunks of at most ``max_batch_size`` rows go out concurrently; Triton's dynamic
        batcher may merge them with other callers' chunks. The model's outputs (a score per
        row, or per token of a shared-prefix row) are joined in row order and read by the
        batch itself (``batch.scores``): a pair row is one candidate, a shared-prefix
        candidate's score sits at its first token.
        """
        step = spec.max_batch_size
        if len(batch) <= step:  # the usual case: one call, no task to schedule
            return batch.scores(await self._infer(batch.arrays, spec, version, timeout_s, headers))
        chunks = [self._infer(batch.rows(i, i + step), spec, version, timeout_s, headers)
                  for i in range(0, len(batch), step)]
        parts = await asyncio.gather(*chunks)
        return batch.scores(np.concatenate(parts) if parts else np.zeros(0, np.float32))

    async def _infer(self, arrays: dict[str, np.ndarray], spec: ModelSpec, version: str,
                     timeout_s: float | None, headers: dict[str, str] | None) -> np.ndarray:
        inputs = []
        for name in spec.input_names:
            arr = arrays[name]
            t = grpcclient.InferInput(name, list(arr.shape), "INT64")
            t.set_data_from_numpy(arr)
            inputs.append(t)
        outputs = [grpcclient.InferRequestedOutput(spec.output_name)]
        call = asyncio.ensure_future(self._client.infer(
            spec.name, inputs, model_version=version, outputs=outputs, headers=headers or None))
        self._inflight.add(call)
        call.add_done_callback(self._settled)
        try:
            # shield: neither our deadline nor a cancelled caller may cancel the call itself.
            async with asyncio.timeout(timeout_s):
                result = await asyncio.shield(call)
        except TimeoutError:
            self._abandon(call)
            raise DeadlineExceeded("Triton did not answer before the deadline") from None
        except asyncio.CancelledError:  # the caller hung up or its gRPC deadline passed first
            self._abandon(call)
            raise
        except InferenceServerException as exc:
            raise _translate(exc) from None
        self.answered_calls += 1
        # [rows, 1] (a score per row) or [rows, width] (per token): the batch reads it.
        return result.as_numpy(spec.output_name).astype(np.float32)

    def _abandon(self, call: asyncio.Future) -> None:
        if not call.done():
            self._abandoned.add(call)

    def _settled(self, call: asyncio.Future) -> None:
        self._inflight.discard(call)
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # an abandoned call's error is expected: mark it retrieved

    @property
    def open_calls(self) -> int:
        """Inference calls still open on the channel (including those nobody waits for)."""
        return len(self._inflight)

    @property
    def abandoned_calls(self) -> int:
        """Calls still running in Triton whose caller gave up waiting (past its deadline)."""
        return len(self._abandoned)

    async def close(self, drain_s: float = 10.0) -> None:
        """Close the channel once open inference calls end (up to ``drain_s``): closing it
        with calls in flight would cancel them (see the module docstring)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=drain_s)
        await self._client.close()
