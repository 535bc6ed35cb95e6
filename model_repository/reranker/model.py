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

A version whose manifest spec says ``scoring: shared_prefix`` (``contract/shared_prefix.py``)
is read differently: its rows are ``[CLS] user [SEP] cand_1 ... cand_m`` with inputs
``input_ids``/``cand_index``/``positions``, and the engine returns a score per token. Rows of
the batch's requests are joined, padded to the widest with padding that only attends
padding (``input_ids`` 0, ``cand_index`` -1, ``positions`` 0: the scores of real tokens do
not change), sorted by real length and run in sub-batches of similar width trimmed to their
longest row; each request gets back its own ``[rows, width]`` of per-token scores, which
the gateway reads at each candidate's first token (``PrefixBatch.scores``).

Importable outside Triton (perf, tests): ``load_scorer(version_dir, params)`` gives the
exact engine and batching the server runs (for either layout).
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

# The two layouts a version's manifest may name (``contract.model_spec.ModelSpec.scoring``);
# this file stands alone inside Triton, so the names are repeated here.
PAIRWISE, SHARED_PREFIX = "pairwise", "shared_prefix"
PAIRWISE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SHARED_PREFIX_INPUTS = ("input_ids", "cand_index", "positions")
# What a shared-prefix row is padded with: padding tokens (``cand_index`` -1) attend only to
# padding, so no real token's score depends on them (``contract.shared_prefix``).
PREFIX_PADDING = {"input_ids": 0, "cand_index": -1, "positions": 0}
# Shared-prefix sub-batches: a row starts a new engine call once its (rounded) length is more
# than this many times the call's shortest row, so a 32-token row is not run 512 wide.
WIDTH_RATIO = 2


class EngineError(RuntimeError):
    """The configured engine cannot be loaded (unknown name, missing file or package)."""


def _params(config: dict) -> dict[str, str]:
    """The parameters ``config.pbtxt`` sets (only those; the rest take their defaults)."""
    given = config.get("parameters", {})
    return {k: given[k]["string_value"] for k in DEFAULTS if "string_value" in given.get(k, {})}


def _manifest(version_dir: str) -> dict:
    try:
        with open(os.path.join(version_dir, "manifest.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def version_engine(version_dir: str) -> str:
    """The engine the version was exported with (its manifest), else ONNX Runtime fp32."""
    return _manifest(version_dir).get("engine") or DEFAULTS["engine"]


def version_scoring(version_dir: str) -> str | None:
    """``pairwise`` | ``shared_prefix`` from the version's manifest spec; None without one."""
    spec = _manifest(version_dir).get("spec")
    return (spec.get("scoring") or PAIRWISE) if isinstance(spec, dict) else None


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


class _BatchScorer:
    """Per-request results of a Triton batch; subclasses define ``score`` (one request) and
    ``score_many`` (several requests in as few engine calls as their policy allows)."""

    input_names: list[str]

    def score(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def score_many(self, parts: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        raise NotImplementedError

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


class EngineScorer(_BatchScorer):
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


class PrefixScorer(_BatchScorer):
    """A shared-prefix engine (``contract.shared_prefix``) plus its batching policy: the rows
    of all requests joined and padded to the widest, sorted by real length, run in
    sub-batches of similar width trimmed to their longest row, and split back per request.
    ``score`` gives per-token scores float32 ``[rows, width]`` of one request."""

    def __init__(self, engine, input_names=SHARED_PREFIX_INPUTS, *, sub_batch: int = 32,
                 trim_padding: bool = True, width_ratio: float = WIDTH_RATIO):
        missing = [n for n in SHARED_PREFIX_INPUTS if n not in input_names]
        if missing:
            raise EngineError(f"a shared-prefix version needs inputs {list(SHARED_PREFIX_INPUTS)}; "
                              f"missing {missing}")
        self.engine = engine
        self.input_names = list(input_names)
        self.sub_batch = max(0, int(sub_batch))
        self.trim = bool(trim_padding)
        self.width_ratio = float(width_ratio)

    def score(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Per-token scores float32 ``[rows, width]`` for one request's arrays ``[rows, width]``."""
        return self.score_many([arrays])[0]

    @staticmethod
    def join(parts: list[dict[str, np.ndarray]], names) -> dict[str, np.ndarray]:
        """The requests' rows in one batch, each padded on the right to the widest request
        with padding that attends only to padding (``PREFIX_PADDING``)."""
        width = max(p[names[0]].shape[1] for p in parts)
        return {k: np.concatenate([np.pad(p[k], ((0, 0), (0, width - p[k].shape[1])),
                                          constant_values=PREFIX_PADDING.get(k, 0)) for p in parts])
                for k in names}

    def _groups(self, lengths: np.ndarray, width: int) -> list[tuple[np.ndarray, int]]:
        """(rows, width to run them at) per engine call."""
        n = len(lengths)
        if not self.trim:
            step = self.sub_batch or n
            return [(np.arange(s, min(s + step, n)), width) for s in range(0, n, step)]
        order = np.argsort(lengths, kind="stable")
        rounded = np.minimum(width, np.maximum(-(-lengths[order] // TRIM_MULTIPLE) * TRIM_MULTIPLE,
                                               TRIM_MULTIPLE))
        groups, start = [], 0
        for i in range(1, n + 1):
            if (i == n or (self.sub_batch and i - start >= self.sub_batch)
                    or rounded[i] > self.width_ratio * rounded[start]):
                groups.append((order[start:i], int(rounded[i - 1])))
                start = i
        return groups

    def score_many(self, parts: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Per-token scores ``[rows_i, width_i]`` for several requests (widths may differ)."""
        names = self.input_names
        first = names[0]
        joined = parts[0] if len(parts) == 1 else self.join(parts, names)
        n, width = joined[first].shape
        out = np.zeros((n, width), np.float32)
        if n:
            lengths = row_lengths(joined["cand_index"] != PREFIX_PADDING["cand_index"])
            for rows, w in self._groups(lengths, width):
                feed = {k: np.ascontiguousarray(joined[k][rows, :w]) for k in names}
                out[rows, :w] = np.asarray(self.engine.run(feed), dtype=np.float32).reshape(len(rows), w)
        bounds = np.cumsum([p[first].shape[0] for p in parts])[:-1]
        return [o[:, :p[first].shape[1]] for o, p in zip(np.split(out, bounds), parts)]


def load_scorer(version_dir: str, params: dict[str, str] | None = None, input_names=None,
                output_name: str = "score", *, scoring: str | None = None) -> EngineScorer | PrefixScorer:
    """The engine and batching of a version as Triton runs them. ``scoring`` (default: the
    version's manifest spec; without a manifest, ``shared_prefix`` when the inputs name
    ``cand_index``) picks ``EngineScorer`` (a score per row, ``[rows]``) or ``PrefixScorer``
    (a score per token, ``[rows, width]``); ``input_names`` default to that layout's."""
    scoring = scoring or version_scoring(version_dir)
    if scoring is None:
        scoring = SHARED_PREFIX if input_names is not None and "cand_index" in input_names else PAIRWISE
    if scoring not in (PAIRWISE, SHARED_PREFIX):
        raise EngineError(f"unknown scoring {scoring!r} in {version_dir}")
    if input_names is None:
        input_names = SHARED_PREFIX_INPUTS if scoring == SHARED_PREFIX else PAIRWISE_INPUTS
    p = {**DEFAULTS, "engine": version_engine(version_dir), **(params or {})}
    engine = load_engine(version_dir, output_name, p)
    missing = [n for n in input_names if n not in engine.input_names]
    if missing:
        raise EngineError(f"{ENGINE_FILES[p['engine']]} lacks inputs {missing}")
    trim = p["trim_padding"].lower() in ("1", "true", "yes")
    if scoring == SHARED_PREFIX:
        return PrefixScorer(engine, input_names, sub_batch=int(p["sub_batch"]), trim_padding=trim)
    return EngineScorer(engine, input_names, sub_batch=int(p["sub_batch"]), trim_padding=trim)


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
                # A score per row -> [rows, 1]; a shared-prefix version's per-token scores
                # are already [rows, width] (the request's own width).
                out = result.reshape(-1, 1) if result.ndim == 1 else result
                tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(out, dtype=np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.scorer = None
