"""The gateway's one long-lived gRPC channel to Triton, and the scoring call over it."""

from __future__ import annotations

import asyncio

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from server.core.model_spec import ModelSpec
from server.core.tokenize import EncodedBatch
from server.errors import DeadlineExceeded, RerankdError, Unavailable


def _translate(exc: InferenceServerException) -> RerankdError:
    status = str(exc.status() or "")
    if "DEADLINE_EXCEEDED" in status:
        return DeadlineExceeded("Triton did not answer before the deadline")
    return Unavailable(f"inference failed: {status.removeprefix('StatusCode.')}: {exc.message()}")


class TritonScorer:
    """Scores encoded pairs on a Triton model; splits batches over ``max_batch_size``."""

    def __init__(self, url: str):
        self.url = url
        self._client = grpcclient.InferenceServerClient(url=url)

    async def ready_versions(self, model_name: str) -> list[str]:
        """Versions of ``model_name`` that Triton reports READY (empty if none or unreachable)."""
        try:
            # Bounded: a Triton that is down must not stall the watcher (or start-up).
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=2.0)
        except InferenceServerException:
            return []
        return [m.get("version", "") for m in index.get("models", [])
                if m.get("name") == model_name and m.get("state") == "READY"]

    async def server_live(self) -> bool:
        try:
            return await self._client.is_server_live(client_timeout=2.0)
        except InferenceServerException:
            return False

    async def score(self, batch: EncodedBatch, spec: ModelSpec, version: str,
                    timeout_s: float | None = None, headers: dict[str, str] | None = None) -> np.ndarray:
        """Scores for every row of ``batch`` (float32 [n]).

        Chunks of at most ``max_batch_size`` rows go out concurrently; Triton's dynamic
        batcher may merge them with other callers' chunks.
        """
        step = spec.max_batch_size
        if len(batch) <= step:  # the usual case: one call, no task to schedule
            return await self._infer(batch.arrays, spec, version, timeout_s, headers)
        chunks = [self._infer(batch.rows(i, i + step), spec, version, timeout_s, headers)
                  for i in range(0, len(batch), step)]
        parts = await asyncio.gather(*chunks)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    async def _infer(self, arrays: dict[str, np.ndarray], spec: ModelSpec, version: str,
                     timeout_s: float | None, headers: dict[str, str] | None) -> np.ndarray:
        inputs = []
        for name in spec.input_names:
            arr = arrays[name]
            t = grpcclient.InferInput(name, list(arr.shape), "INT64")
            t.set_data_from_numpy(arr)
            inputs.append(t)
        outputs = [grpcclient.InferRequestedOutput(spec.output_name)]
        try:
            result = await self._client.infer(
                spec.name, inputs, model_version=version, outputs=outputs,
                client_timeout=timeout_s, headers=headers or None)
        except InferenceServerException as exc:
            raise _translate(exc) from None
        return result.as_numpy(spec.output_name).reshape(-1).astype(np.float32)

    async def inference_statistics(self, model_name: str) -> dict:
        return await self._client.get_inference_statistics(model_name, as_json=True)

    async def load_model(self, model_name: str) -> None:
        await self._client.load_model(model_name)

    async def close(self) -> None:
        await self._client.close()
