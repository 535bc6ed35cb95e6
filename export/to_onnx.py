"""Hugging Face sequence classifier -> self-contained ONNX file with the spec's signature."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contract.model_spec import ModelSpec


class ScoreModel(nn.Module):
    """Positional inputs in ``spec.input_names`` order -> one float32 score ``[batch, 1]``."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(**dict(zip(self.input_names, inputs))).logits
        return logits[:, :1].to(torch.float32)


def dummy_inputs(spec: ModelSpec, batch: int = 2, seq: int = 16) -> tuple[torch.Tensor, ...]:
    """Example inputs for tracing: padded rows so the mask path is exercised."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g, dtype=torch.int64)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq // 2:] = 0
    types = torch.zeros(batch, seq, dtype=torch.int64)
    types[:, seq // 4:] = 1
    by_name = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return tuple(by_name[name] for name in spec.input_names)


def export_onnx(model: nn.Module, spec: ModelSpec, out_path: Path, *, opset: int = 17) -> Path:
    """Export ``model`` to one ONNX file (weights inside) with inputs ``spec.input_names``
    (INT64, dynamic ``batch`` x ``sequence``) and output ``spec.output_name`` (FP32 ``[batch, 1]``).

    Uses the TorchScript exporter (``dynamo=False``): fast, needs no onnxscript, and keeps
    weights inline below 2 GB.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ScoreModel(model, spec.input_names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in spec.input_names}
    axes[spec.output_name] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter's deprecation notice and tracer warnings about Python-side
        # shape checks in transformers are expected; the graph is verified afterwards.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # transformers' padding mask indexes with aranges (never negative): safe here.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            wrapper, dummy_inputs(spec), str(out_path), dynamo=False, opset_version=opset,
            input_names=list(spec.input_names), output_names=[spec.output_name],
            dynamic_axes=axes, do_constant_folding=True, export_params=True,
        )
    check_onnx(out_path, spec)
    return out_path


def check_onnx(onnx_path: Path, spec: ModelSpec) -> None:
    """Raise if the file is not self-contained or its signature differs from ``spec``."""
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ValueError(f"{onnx_path}: {len(external)} initializers stored outside the file")
    onnx.checker.check_model(str(onnx_path))
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != list(spec.input_names) or outputs != [spec.output_name]:
        raise ValueError(f"{onnx_path}: signature {inputs} -> {outputs} does not match the spec")


def onnx_session(onnx_path: Path, threads: int = 2):
    """An ONNX Runtime CPU session with a bounded thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, arrays: dict[str, np.ndarray], output_name: str = "score") -> np.ndarray:
    """Scores ``[n, 1]`` float32 for int64 input arrays keyed by input name."""
    feeds = {i.name: np.ascontiguousarray(arrays[i.name], dtype=np.int64) for i in session.get_inputs()}
    return session.run([output_name], feeds)[0]
