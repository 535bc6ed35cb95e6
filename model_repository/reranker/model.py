"""Triton Python-backend model: the cross-encoder reranker run by ONNX Runtime on CPU.

``export`` copies this file into every version folder next to ``model.onnx``. Triton's
dynamic batcher hands ``execute`` several callers' requests at once; we run them as one
ONNX Runtime call per sequence length and split the scores back.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

# The backend stub embeds an isolated interpreter that ignores PYTHONPATH; the launcher
# (server.triton.launcher) puts the gateway's venv there, so honour it by hand.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_name = config["output"][0]["name"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_param(config, "intra_op_threads", "0"))
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        session_inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n in self.input_names if n not in session_inputs]
        if missing:
            raise pb_utils.TritonModelException(f"model.onnx lacks inputs {missing}")

    def execute(self, requests):
        arrays = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names}
                  for r in requests]
        # Requests with the same sequence length share one engine call.
        groups: dict[int, list[int]] = defaultdict(list)
        for idx, a in enumerate(arrays):
            groups[a[self.input_names[0]].shape[1]].append(idx)
        scores: list[np.ndarray | None] = [None] * len(requests)
        for members in groups.values():
            feed = {n: np.concatenate([arrays[i][n] for i in members]) for n in self.input_names}
            out = self.session.run([self.output_name], feed)[0].astype(np.float32).reshape(-1, 1)
            start = 0
            for i in members:
                rows = arrays[i][self.input_names[0]].shape[0]
                scores[i] = out[start:start + rows]
                start += rows
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, s)]) for s in scores]

    def finalize(self):
        self.session = None
