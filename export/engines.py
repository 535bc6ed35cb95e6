"""CPU engine variants made from an exported fp32 ONNX file, and their acceptance check.

An engine variant is an export option (``run_export(..., engine=...)``): the version folder
keeps ``model.onnx`` (fp32, the reference) and gains the variant's own files; the backend
``model.py`` picks the engine named by the ``engine`` parameter of ``config.pbtxt``.

=====================  =========================  ==========================================
engine                 files added                how it is made
=====================  =========================  ==========================================
onnxruntime            (none)                     fp32 ONNX Runtime (the default)
onnxruntime_int8       model.int8.onnx            ORT dynamic quantization, int8 weights
openvino               (none)                     OpenVINO reads model.onnx; bf16 at run time
openvino_int8          openvino_int8/model.{xml,  NNCF post-training static quantization
                       bin}                       (transformer preset) calibrated on rendered
                                                  MovieLens pairs; bf16 for the rest
=====================  =========================  ==========================================

A variant is accepted only if its scores rank the candidates of held-out requests like
fp32 does (``AGREEMENT_TOLERANCE``); validation ranking quality (NDCG vs fp32 on the
validation split) is checked by the evaluation once a fine-tuned model exists.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.model_spec import SHARED_PREFIX

ENGINES = ("onnxruntime", "onnxruntime_int8", "openvino", "openvino_int8")
# Engine-specific config.pbtxt parameters written with a variant (others keep model.py defaults).
ENGINE_PARAMETERS: dict[str, dict[str, str]] = {
    "onnxruntime": {},
    "onnxruntime_int8": {},
    "openvino": {"precision": "bf16"},
    "openvino_int8": {"precision": "bf16"},
}
# Minimum agreement with fp32 over held-out requests (mean per request) to accept a variant.
AGREEMENT_TOLERANCE = {"spearman_min": 0.95, "top10_overlap_min": 0.8}


class EngineCheckError(RuntimeError):
    """A variant's scores disagree with fp32 beyond ``AGREEMENT_TOLERANCE``."""


def load_backend(backend_src: Path):
    """The backend ``model.py`` as a module (its engines and ``load_scorer``), outside Triton."""
    spec = importlib.util.spec_from_file_location("rerankd_backend_model", str(backend_src))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- requests to calibrate and check on ----------------------------------------------------
def movielens_requests(n_requests: int, candidates: int, *, seed: int = 0,
                       data_dir: Path | None = None, renderer=None) -> list[tuple[str, list[str]]] | None:
    """``(user_text, item_texts)`` for ``n_requests`` MovieLens users (history up to the test
    item, 10 items) with ``candidates`` random catalog items each, rendered by ``renderer``
    (the version's ``contract.render.Renderer``; default: plain text); None if the data
    set is not in the local cache (export never downloads it)."""
    from contract.render import render_item, render_user
    from interactions.movielens import (
        CACHE_DIR,
        CHECKSUMS,
        leave_one_out,
        load_interactions,
        load_items,
    )

    folder = Path(data_dir) if data_dir else CACHE_DIR / "ml-100k"
    if not all((folder / n).is_file() for n in CHECKSUMS):
        return None
    items = {it.item_id: it for it in load_items(folder)}
    split = leave_one_out(load_interactions(folder))
    rng = random.Random(seed)
    users = rng.sample(split.users, min(n_requests, len(split.users)))
    ids = sorted(items)
    out = []
    for u in users:
        hist = [items[i] for i in split.history(u, "test")[:10] if i in items]
        user_fn, item_fn = (renderer.user, renderer.item) if renderer is not None else (render_user, render_item)
        out.append((user_fn(hist), [item_fn(items[i]) for i in rng.sample(ids, candidates)]))
    return out


def fallback_requests() -> list[tuple[str, list[str]]]:
    """The eight sample pairs of ``export.verify`` grouped by user (no data set needed)."""
    from export.verify import sample_pairs

    by_user: dict[str, list[str]] = {}
    for user, item in sample_pairs():
        by_user.setdefault(user, []).append(item)
    return list(by_user.items())


def encode_requests(tokenizer, requests: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, np.ndarray]]:
    return [tokenizer.encode(user, list(items)).arrays for user, items in requests]


def encode_batches(tokenizer, requests: Sequence[tuple[str, Sequence[str]]]) -> list:
    """The encoded requests themselves (``EncodedBatch`` or ``PrefixBatch``): their arrays
    plus ``.scores`` to read one score per candidate from the engine's output."""
    return [tokenizer.encode(user, list(items)) for user, items in requests]


def calibration_feeds(batches: Sequence[dict[str, np.ndarray]], rows: int = 16) -> list[dict[str, np.ndarray]]:
    """Split encoded requests into small feeds (the sizes the engine sees after sorting)."""
    out = []
    for b in batches:
        n = next(iter(b.values())).shape[0]
        out += [{k: v[i:i + rows] for k, v in b.items()} for i in range(0, n, rows)]
    return out


# -- building variants -------------------------------------------------------------------
def quantize_ort_int8(src: Path, dst: Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights (per tensor), int8 activations
    quantized at run time; MatMul/Gemm only (attention softmax and LayerNorm stay fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return dst


def quantize_openvino_int8(src: Path, dst_xml: Path, feeds: Sequence[dict[str, np.ndarray]]) -> Path:
    """NNCF post-training static int8 quantization of the OpenVINO model (transformer preset:
    quantized MatMuls, fp precision kept for softmax / LayerNorm / GELU)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds))
    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dst_xml), compress_to_fp16=False)
    return dst_xml


def build_engine_files(engine: str, onnx_path: Path, out_dir: Path,
                       calibration: Sequence[dict[str, np.ndarray]] = ()) -> dict[str, Path]:
    """Make the files ``engine`` needs from ``onnx_path`` in ``out_dir``; returns
    {name inside the version folder: path}. fp32 engines need nothing beyond model.onnx."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {ENGINES}")
    out_dir = Path(out_dir)
    if engine == "onnxruntime_int8":
        return {"model.int8.onnx": quantize_ort_int8(Path(onnx_path), out_dir / "model.int8.onnx")}
    if engine == "openvino_int8":
        if not calibration:
            raise ValueError("openvino_int8 needs calibration feeds")
        quantize_openvino_int8(Path(onnx_path), out_dir / "openvino_int8" / "model.xml", calibration)
        return {"openvino_int8": out_dir / "openvino_int8"}
    return {}


def stage_version_dir(onnx_path: Path, files: dict[str, Path], out_dir: Path) -> Path:
    """A folder laid out like a version (model.onnx + engine files) for checks and benches."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / "model.onnx").exists():
        shutil.copyfile(onnx_path, out_dir / "model.onnx")
    for name, src in files.items():
        dst = out_dir / name
        if Path(src).resolve() == dst.resolve():
            continue
        if Path(src).is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, dst)
    return out_dir


# -- agreement with fp32 -----------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x), np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 1.0
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    k = min(k, len(a))
    if k == 0:
        return 1.0
    ta = set(np.argsort(-np.asarray(a), kind="stable")[:k])
    tb = set(np.argsort(-np.asarray(b), kind="stable")[:k])
    return len(ta & tb) / k


@dataclass
class Agreement:
    requests: int
    pairs: int
    spearman_mean: float
    spearman_min: float
    top10_overlap_mean: float
    max_abs_diff: float
    score_std: float  # spread of the fp32 scores: a diff means little without it

    def ok(self, tol: dict[str, float] | None = None) -> bool:
        tol = AGREEMENT_TOLERANCE if tol is None else tol
        return (self.spearman_mean >= tol["spearman_min"]
                and self.top10_overlap_mean >= tol["top10_overlap_min"])

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> Agreement:
    sp = [spearman(r, g) for r, g in zip(ref, got)]
    ov = [top_k_overlap(r, g) for r, g in zip(ref, got)]
    allref = np.concatenate(ref)
    return Agreement(
        requests=len(ref), pairs=int(sum(len(r) for r in ref)),
        spearman_mean=float(np.mean(sp)), spearman_min=float(np.min(sp)),
        top10_overlap_mean=float(np.mean(ov)),
        max_abs_diff=float(max(np.max(np.abs(np.asarray(r, np.float64) - g)) for r, g in zip(ref, got))),
        score_std=float(allref.std()),
    )


def check_engine(backend_src: Path, version_dir: Path, engine: str,
                 batches: Sequence, *, threads: int = 2,
                 params: dict[str, str] | None = None,
                 log: Callable[[str], None] = print, scoring: str | None = None) -> Agreement:
    """Score ``batches`` with fp32 ONNX Runtime and with ``engine`` (through the backend's own
    ``load_scorer``) and compare; raise EngineCheckError beyond tolerance.

    ``batches``: arrays keyed by input name (a score per row), or encoded batches
    (``EncodedBatch`` / ``PrefixBatch``: compared per candidate, via their ``.scores``).
    ``scoring``: the version's layout when ``version_dir`` has no manifest yet (staged)."""
    backend = load_backend(backend_src)
    base = {"intra_op_threads": str(threads)}
    layout = {"scoring": scoring} if scoring else {}
    ref_scorer = backend.load_scorer(str(version_dir), {**base, "engine": "onnxruntime", "trim_padding": "false",
                                                        "sub_batch": "0"}, **layout)
    scorer = backend.load_scorer(str(version_dir), {**base, **ENGINE_PARAMETERS[engine],
                                                    **(params or {}), "engine": engine}, **layout)

    def run(s, b) -> np.ndarray:
        if hasattr(b, "scores"):  # an encoded batch: one score per candidate
            return b.scores(s.score(b.arrays))
        return s.score(b)

    ref = [run(ref_scorer, b) for b in batches]
    got = [run(scorer, b) for b in batches]
    result = agreement(ref, got)
    log(f"export: engine {engine} vs fp32 on {result.requests} requests: spearman "
        f"{result.spearman_mean:.4f} (min {result.spearman_min:.4f}), top-10 overlap "
        f"{result.top10_overlap_mean:.3f}, max abs diff {result.max_abs_diff:.3g}")
    if not result.ok():
        raise EngineCheckError(f"engine {engine} disagrees with fp32: {result.as_dict()} "
                               f"(tolerance {AGREEMENT_TOLERANCE})")
    return result


def renderer_for(render: dict | None, tokenizer):
    """The renderer a version with manifest ``render`` options uses (see contract.render)."""
    from contract import render as R

    if not hasattr(R, "RenderOptions"):
        return None
    options = R.RenderOptions.from_dict(render or {})
    return R.Renderer(options, R.vocabulary_lookup(tokenizer) if options.item_tokens else None)


def prepare_engine(engine: str, onnx_path: Path, tokenizer, work_dir: Path, backend_src: Path, *,
                   threads: int = 2, params: dict[str, str] | None = None, render: dict | None = None,
                   log: Callable[[str], None] = print) -> tuple[dict[str, Path], dict]:
    """Build ``engine``'s files from ``onnx_path`` in ``work_dir`` and check them, run with the
    config ``params`` they will be served with, against fp32 on held-out requests (MovieLens
    if cached, else the sample pairs); returns (files, check)."""
    if engine == "onnxruntime":
        return {}, {}
    renderer = renderer_for(render, tokenizer)
    check_requests = movielens_requests(16, 50, seed=0, renderer=renderer)
    calib_requests = movielens_requests(24, 32, seed=1, renderer=renderer)
    source = "movielens-100k"
    if check_requests is None:
        check_requests = calib_requests = fallback_requests()
        source = "export.verify.sample_pairs"
    # Calibration feeds are the engine's own inputs: pairs, or shared-prefix rows (PrefixBatch
    # arrays: input_ids / cand_index / positions) for a shared-prefix version.
    calibration = calibration_feeds(encode_requests(tokenizer, calib_requests))
    served = {k: v for k, v in (params or {}).items() if k not in ("engine", "intra_op_threads")}
    scoring = getattr(getattr(tokenizer, "spec", None), "scoring", None)
    if scoring != SHARED_PREFIX:
        files = build_engine_files(engine, onnx_path, Path(work_dir) / "engine", calibration)
        staged = stage_version_dir(onnx_path, files, Path(work_dir) / "staged")
        result = check_engine(backend_src, staged, engine, encode_requests(tokenizer, check_requests),
                              threads=threads, params=served, log=log)
    else:
        # The shared-prefix graph (a mask built from cand_index in the graph, a score per
        # token) is newer to the engines than the pair graph: an engine that cannot build or
        # run it fails the check, like a variant that disagrees, so a caller that falls back
        # to fp32 on EngineCheckError (training) still publishes a version.
        try:
            files = build_engine_files(engine, onnx_path, Path(work_dir) / "engine", calibration)
            staged = stage_version_dir(onnx_path, files, Path(work_dir) / "staged")
            result = check_engine(backend_src, staged, engine, encode_batches(tokenizer, check_requests),
                                  threads=threads, params=served, log=log, scoring=SHARED_PREFIX)
        except (EngineCheckError, ImportError):
            raise
        except Exception as exc:
            raise EngineCheckError(f"engine {engine} cannot build or run the shared-prefix graph: "
                                   f"{type(exc).__name__}: {exc}") from exc
    return files, {"engine": engine, "data": source, "tolerance": dict(AGREEMENT_TOLERANCE),
                   **({"scoring": SHARED_PREFIX} if scoring == SHARED_PREFIX else {}), **result.as_dict()}
