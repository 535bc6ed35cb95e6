"""Triton Python-backend model: the cross-encoder reranker on CPU.

``export`` copies this file into every version folder next to ``model.onnx`` (and the
engine's own files, see ``export/engines.py``). Triton's dynamic batcher hands ``execute``
several callers' requests at once; we join their rows, sort them by real length, and run
the engine on length-homogeneous sub-batches trimmed to their own longest row, then split
the scores back.

The engine is the version's own: ``engine`` in its ``manifest.json`` (written by the export
that built the engine's files), unless ``config.pbtxt`` names one. Parameters (all optional):

    engine            onnxruntime (default, model.onnx, fp32) | onnxruntime_int8
                      (model.int8.onnx, dynamic int8) | openvino (model.onnx read by
                      OpenVINO) | openvino_int8 (openvino_int8/model.xml, static int8)
    precision         OpenVINO inference precision: bf16 (default) | f32
    intra_op_threads  engine threads (0: the engine's default)
    sub_batch         rows per engine call after sorting by length (default 32; 0: one
                      call for all rows, trimmed to the longest)
    trim_padding      true (default) | false: cut trailing all-padding columns
    allow_spinning    ONNX Runtime worker spin-wait: 1 (ORT default) | 0
    cpu_pinning       OpenVINO thread pinning: false (default here) | true (OpenVINO's default)

Importable outside Triton (perf, tests): ``load_scorer(version_dir, params)`` gives the
exact engine and batching the server runs.
"""

from __future__ import annotations

import json
import os
import sys

# The backend stub embeds an isolated interpreter that ignores PYTHONPATH; the launcher
# (server.triton.launcher) puts the gateway's venv there, so honour it by hand.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402

try:  # only inside Triton's backend stub
    import triton_python_backend_utils as pb_utils  # noqa: E402
except ImportError:  # imported by perf/ and tests for the engines
    pb_utils = None

# engine name -> file it needs in the version folder
ENGINE_FILES = {
    "onnxruntime": "model.onnx",
    "onnxruntime_int8": "model.int8.onnx",
    "openvino": "model.onnx",
    "openvino_int8": "openvino_int8/model.xml",
}
DEFAULTS = {"engine": "onnxruntime", "precision": "bf16", "intra_op_threads": "0",
            "sub_batch": "32", "trim_padding": "true", "allow_spinning": "1", "cpu_pinning": "false"}
TRIM_MULTIPLE = 8  # trimmed lengths are rounded up to this (fewer distinct shapes)


class EngineError(RuntimeError):
    """The configured engine cannot be loaded (unknown name, missing file or package)."""


def _params(config: dict) -> dict[str, str]:
    """The parameters ``config.pbtxt`` sets (only those; the rest take their defaults)."""
    given = config.get("parameters", {})
    return {k: given[k]["string_value"] for k in DEFAULTS if "string_value" in given.get(k, {})}


def version_engine(version_dir: str) -> str:
    """The engine the version was exported with (its manifest), else ONNX Runtime fp32."""
    try:
        with open(os.path.join(version_dir, "manifest.json")) as f:
            return json.load(f).get("engine") or DEFAULTS["engine"]
    except (OSError, ValueError):
        return DEFAULTS["engine"]


class OrtEngine:
    def __init__(self, path: str, output_name: str, threads: int, allow_spinning: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not allow_spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.output_name = output_name
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output_name], feed)[0]


class OpenVinoEngine:
    def __init__(self, path: str, output_name: str, threads: int, precision: str = "bf16",
                 cpu_pinning: bool = False):
        import openvino as ov

        core = ov.Core()
        # Pinning (OpenVINO's default on Linux) puts every instance's threads on the same
        # first cores: two Triton instances then share one core while the other idles.
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": "1", "ENABLE_CPU_PINNING": bool(cpu_pinning)}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output = self.compiled.output(0)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.infer(feed)[self.output]


def load_engine(version_dir: str, output_name: str, params: dict[str, str]):
    p = {**DEFAULTS, **params}
    engine, threads = p["engine"], int(p["intra_op_threads"])
    if engine not in ENGINE_FILES:
        raise EngineError(f"unknown engine {engine!r}; known: {sorted(ENGINE_FILES)}")
    path = os.path.join(version_dir, ENGINE_FILES[engine])
    if not os.path.isfile(path):
        raise EngineError(f"engine {engine!r} needs {ENGINE_FILES[engine]} in {version_dir}: "
                          f"export this version with that engine (rerankd export --engine {engine})")
    try:
        if engine.startswith("onnxruntime"):
            return OrtEngine(path, output_name, threads, p["allow_spinning"] != "0")
        return OpenVinoEngine(path, output_name, threads, p["precision"],
                              p["cpu_pinning"].lower() in ("1", "true", "yes"))
    except ImportError as exc:
        raise EngineError(f"engine {engine!r} needs a package that is not installed: {exc}") from None


def row_lengths(mask: np.ndarray) -> np.ndarray:
    """1 + index of the last attended position of each row (0 for an all-padding row)."""
    width = mask.shape[1]
    attended = mask != 0
    last = width - np.argmax(attended[:, ::-1], axis=1)
    return np.where(attended.any(axis=1), last, 0)


class RequestError(Exception):
    """One request of a Triton batch failed on its own; the batch's other requests still run.
    ``code``: the ``TritonError`` code, INVALID_ARG for inputs that cannot be scored,
    INTERNAL when the engine failed on them."""

    def __init__(self, message: str, code: str = "INVALID_ARG"):
        super().__init__(message)
        self.code = code


def check_request(arrays: dict[str, np.ndarray | None], input_names) -> str | None:
    """Why a request's inputs cannot be scored, or None: every input present, integer,
    2-D ``[rows, seq]`` with ``seq >= 1``, all of one shape. (Triton checks names, types and
    the batch dimension against ``config.pbtxt``; the sequence widths of ``dims: [ -1 ]`` are
    per input, so nothing else checks that they agree.)"""
    missing = [n for n in input_names if arrays.get(n) is None]
    if missing:
        return f"missing inputs {missing}"
    first = arrays[input_names[0]]
    for name in input_names:
        a = arrays[name]
        if a.ndim != 2 or a.shape[1] < 1:
            return f"input {name!r} must be [rows, seq >= 1], not {list(a.shape)}"
        if a.shape != first.shape:
            return "inputs differ in shape: " + ", ".join(f"{n} {list(arrays[n].shape)}" for n in input_names)
        if not np.issubdtype(a.dtype, np.integer):
            return f"input {name!r} must be integer, not {a.dtype}"
    return None


class EngineScorer:
    """An engine plus the batching policy: join, sort by length, trim, run, unsort."""

    def __init__(self, engine, input_names, *, sub_batch: int = 32, trim_padding: bool = True,
                 mask_name: str = "attention_mask"):
        self.engine = engine
        self.input_names = list(input_names)
        self.sub_batch = max(0, int(sub_batch))
        self.mask_name = mask_name if (trim_padding and mask_name in self.input_names) else None

    def score(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Scores float32 ``[n]`` for int64 arrays ``[n, seq]`` keyed by input name."""
        n = arrays[self.input_names[0]].shape[0]
        out = np.empty(n, np.float32)
        if n == 0:
            return out
        if self.mask_name is None:
            order = np.arange(n)
            lengths = np.full(n, arrays[self.input_names[0]].shape[1])
        else:
            lengths = row_lengths(arrays[self.mask_name])
            order = np.argsort(lengths, kind="stable")
        step = self.sub_batch or n
        for start in range(0, n, step):
            rows = order[start:start + step]
            width = arrays[self.input_names[0]].shape[1]
            if self.mask_name is not None:
                longest = max(int(lengths[rows].max()), 1)
                width = min(width, -(-longest // TRIM_MULTIPLE) * TRIM_MULTIPLE)
            feed = {k: np.ascontiguousarray(arrays[k][rows, :width]) for k in self.input_names}
            out[rows] = np.asarray(self.engine.run(feed), dtype=np.float32).reshape(-1)
        return out

    def score_many(self, parts: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Scores for several requests at once (possibly of different padded widths)."""
        first = self.input_names[0]
        if len(parts) == 1:
            return [self.score(parts[0])]
        if self.mask_name is None:
            # Without trimming, padding a shorter request to a longer one would only cost
            # compute: join requests of equal width only.
            groups: dict[int, list[int]] = {}
            for i, p in enumerate(parts):
                groups.setdefault(p[first].shape[1], []).append(i)
        else:
            groups = {0: list(range(len(parts)))}
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(parts)
        for members in groups.values():
            width = max(parts[i][first].shape[1] for i in members)
            joined = {k: np.concatenate([np.pad(parts[i][k], ((0, 0), (0, width - parts[i][k].shape[1])))
                                         for i in members]) for k in self.input_names}
            scores = self.score(joined)
            sizes = np.cumsum([parts[i][first].shape[0] for i in members])[:-1]
            for i, s in zip(members, np.split(scores, sizes)):
                out[i] = s
        return out

    def score_requests(self, parts: list[dict[str, np.ndarray | None]]) -> list[np.ndarray | RequestError]:
        """Scores per request of a Triton batch, or the request's own error.

        Requests with invalid inputs (``check_request``) get an error and stay out of the
        engine call; the valid ones run together (``score_many``: one engine call). Should
        that call fail (an input only the engine rejects, such as a token id outside the
        vocabulary), each valid request runs alone, so only the bad one gets the error."""
        out: list[np.ndarray | RequestError | None] = [None] * len(parts)
        valid = []
        for i, arrays in enumerate(parts):
            problem = check_request(arrays, self.input_names)
            if problem is None:
                valid.append(i)
            else:
                out[i] = RequestError(problem)
        if valid:
            try:
                for i, s in zip(valid, self.score_many([parts[i] for i in valid])):
                    out[i] = s
            except Exception as exc:
                if len(valid) == 1:
                    out[valid[0]] = RequestError(f"inference failed: {exc}", "INTERNAL")
                else:
                    for i in valid:
                        try:
                            out[i] = self.score(parts[i])
                        except Exception as one:
                            out[i] = RequestError(f"inference failed: {one}", "INTERNAL")
        return out


def load_scorer(version_dir: str, params: dict[str, str] | None = None,
                input_names=("input_ids", "attention_mask", "token_type_ids"),
                output_name: str = "score") -> EngineScorer:
    p = {**DEFAULTS, "engine": version_engine(version_dir), **(params or {})}
    engine = load_engine(version_dir, output_name, p)
    missing = [n for n in input_names if n not in engine.input_names]
    if missing:
        raise EngineError(f"{ENGINE_FILES[p['engine']]} lacks inputs {missing}")
    return EngineScorer(engine, input_names, sub_batch=int(p["sub_batch"]),
                  trim_padding=p["trim_padding"].lower() in ("1", "true", "yes"))


def _as_numpy(tensor) -> np.ndarray | None:
    return tensor.as_numpy() if tensor is not None else None


def _triton_error(error: RequestError):
    """The request's ``TritonError`` with its code (a stub without codes: its default)."""
    code = getattr(pb_utils.TritonError, error.code, None)
    return pb_utils.TritonError(str(error)) if code is None else pb_utils.TritonError(str(error), code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_name = config["output"][0]["name"]
        params = _params(config)
        try:
            self.scorer = load_scorer(version_dir, params, self.input_names, self.output_name)
        except EngineError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None

    def execute(self, requests):
        """One response per request: its scores, or its own error (a request with invalid
        inputs does not fail the other requests the dynamic batcher put in its batch)."""
        parts = [{n: _as_numpy(pb_utils.get_input_tensor_by_name(r, n)) for n in self.input_names}
                 for r in requests]
        responses = []
        for result in self.scorer.score_requests(parts):
            if isinstance(result, RequestError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_triton_error(result)))
            else:
                tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(result.reshape(-1, 1)))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.scorer = None
