"""load -> ONNX export -> verify -> write a new model version, with progress lines."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from contract.blend import Blend
from contract.model_spec import SHARED_PREFIX, Manifest, ModelSpec
from export.write_repo import existing_versions, write_version

DEFAULT_BACKEND_SRC = Path(__file__).resolve().parent.parent / "model_repository" / "reranker" / "model.py"
TORCH_THREADS = 2


def has_version(repo: Path, name: str) -> bool:
    """Whether ``<repo>/<name>/`` holds at least one numbered version with a model."""
    return any((Path(repo) / name / str(v) / "model.onnx").is_file()
               for v in existing_versions(repo, name))


def run_export(hf_dir: Path | None, repo: Path, *, spec: ModelSpec | None = None,
               backend_src: Path = DEFAULT_BACKEND_SRC, tolerance: float = 1e-3,
               training: dict | None = None, metrics: dict | None = None,
               render: dict | None = None, extra_pairs: list[tuple[str, str]] | None = None,
               base_model: str | None = None, item_tokens: Sequence[str] = (), text_offset: float = 0.0,
               blend: Blend | None = None,
               log: Callable[[str], None] = print, engine: str = "onnxruntime",
               parameters: dict[str, str] | None = None, scoring: str | None = None) -> tuple[int, float]:
    """Export the Hugging Face cross-encoder in ``hf_dir`` (default: packaged MiniLM-L6) as a
    new version of ``repo``; returns (version, max abs torch/ONNX score difference).

    ``render`` (``RenderOptions.to_dict()``) goes into the manifest: the gateway renders
    text for this version with it. ``extra_pairs`` are verified too (e.g. pairs rendered
    with the model's own options, so its added tokens are exercised). ``base_model`` labels
    the manifest (default: described from ``hf_dir``; a fine-tune names its own base).

    Raises ExportVerificationError (and writes nothing) when the difference on the sample
    pairs exceeds ``tolerance``.

    ``engine`` (see ``export.engines``) adds that engine's files to the version, checks its
    scores against fp32 (EngineCheckError, nothing written, beyond tolerance) and names it in
    ``config.pbtxt``; ``parameters`` override config.pbtxt parameters (threads, sub_batch...).

    The layout comes from ``spec.scoring`` (default spec: ``pairwise``, a row per pair).
    ``scoring="shared_prefix"`` without a ``spec`` takes ``ModelSpec.shared_prefix()`` (as
    does passing that spec): any BERT-style folder is exported as the shared-prefix graph
    (``export.shared_prefix``: inputs input_ids / cand_index / positions, a score per
    token), verified on the sample requests laid out by ``PrefixTokenizer``
    (``export.verify.verify_requests``), and written with ``scoring`` in its manifest spec
    and config.pbtxt. An engine that cannot build or run that graph fails its check
    (EngineCheckError).
    """
    import onnxruntime
    import torch

    from contract.shared_prefix import PrefixTokenizer
    from contract.tokenize import PairTokenizer
    from export.base_model import (
        default_base_model,
        describe_base_model,
        load_for_export,
    )
    from export.to_onnx import export_onnx
    from export.verify import sample_pairs, verify_pairs, verify_requests

    if spec is None:
        spec = ModelSpec.shared_prefix() if scoring == SHARED_PREFIX else ModelSpec()
    if scoring is not None and scoring != spec.scoring:
        raise ValueError(f"scoring={scoring!r} but the spec says {spec.scoring!r}")
    shared = spec.scoring == SHARED_PREFIX
    hf_dir = Path(hf_dir) if hf_dir is not None else default_base_model()
    backend_src = Path(backend_src)
    if not (hf_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no tokenizer.json")
    if not backend_src.is_file():
        raise FileNotFoundError(f"backend model.py not found: {backend_src}")
    torch.set_num_threads(TORCH_THREADS)
    opset = 17

    def step(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        log(f"export: {name} ...")
        result = fn(*args, **kwargs)
        log(f"export: {name} done in {time.perf_counter() - t0:.1f}s")
        return result

    model = step(f"load {hf_dir}", load_for_export, hf_dir)
    max_pos = getattr(model.config, "max_position_embeddings", spec.max_seq_len)
    if max_pos < spec.max_seq_len:
        raise ValueError(f"model supports {max_pos} positions < spec.max_seq_len {spec.max_seq_len}")
    with tempfile.TemporaryDirectory(prefix="rerankd-export-") as tmp:
        pairs = sample_pairs() + list(extra_pairs or [])
        if shared:
            onnx_path = step("onnx export (shared prefix)", _export_shared_prefix, model, spec,
                             Path(tmp) / "model.onnx", opset=opset)
            tokenizer = PrefixTokenizer.from_file(hf_dir / "tokenizer.json", spec)
            diff = step(f"verify on {len(pairs)} sample pairs (shared prefix)", verify_requests, model,
                        onnx_path, tokenizer, pairs, tolerance=tolerance)
        else:
            onnx_path = step("onnx export", export_onnx, model, spec, Path(tmp) / "model.onnx", opset=opset)
            tokenizer = PairTokenizer.from_file(hf_dir / "tokenizer.json", spec)
            diff = step(f"verify on {len(pairs)} sample pairs", verify_pairs, model, onnx_path,
                        tokenizer, pairs, tolerance=tolerance)
        log(f"export: max abs diff torch vs onnxruntime = {diff:.3g} (tolerance {tolerance:g})")
        from export.engines import ENGINE_PARAMETERS, prepare_engine
        from export.write_repo import DEFAULT_PARAMETERS

        # The engine belongs to the version (its files, its manifest), not to config.pbtxt,
        # which all versions share: the backend reads it from the manifest, so rolling back to
        # an older version with another engine needs no config change.
        config_parameters = {**DEFAULT_PARAMETERS, **(parameters or {})} if parameters else None
        engine_files, engine_check = step(f"engine {engine}", prepare_engine, engine, onnx_path,
                                          tokenizer, Path(tmp), backend_src,
                                          params={**ENGINE_PARAMETERS[engine], **(config_parameters or {}),
                                                  "engine": engine},
                                          render=render, log=log)
        manifest = Manifest(
            spec=spec, base_model=base_model or describe_base_model(hf_dir), engine=engine,
            training=dict(training or {}), metrics=dict(metrics or {}), render=dict(render or {}),
            item_tokens=list(item_tokens), text_offset=float(text_offset), blend=blend,
            export_check={"max_abs_diff": diff, "tolerance": tolerance, "pairs": len(pairs),
                          **({"scoring": spec.scoring} if shared else {}),
                          "opset": opset, "torch": torch.__version__,
                          "onnxruntime": onnxruntime.__version__,
                          **({"engine_check": engine_check} if engine_check else {})},
        )
        version = step(f"write version in {Path(repo) / spec.name}", write_version, repo, spec,
                       onnx_path, hf_dir, manifest, backend_src=backend_src,
                       parameters=config_parameters, extra_files=engine_files)
    log(f"export: wrote {Path(repo) / spec.name / str(version)}")
    return version, diff


def _export_shared_prefix(model, spec: ModelSpec, out_path: Path, *, opset: int = 17) -> Path:
    """The shared-prefix graph (``export.shared_prefix.export_onnx``), its signature checked
    against ``spec`` like the pair graph's."""
    from export.shared_prefix import export_onnx
    from export.to_onnx import check_onnx

    path = export_onnx(model, out_path, opset=opset, output_name=spec.output_name)
    check_onnx(path, spec)
    return path
