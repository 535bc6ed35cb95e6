"""A BERT-family sequence classifier run over the shared-prefix layout (``contract.shared_prefix``).

The weights are the cross-encoder's own (embeddings, encoder, pooler, classifier); only the
inputs differ: the graph builds the attention mask from ``cand_index`` (no L x L mask on the
wire), segment ids from it too (0 for the prefix, 1 for candidates, as in a pair), and
returns a score per token, read by the caller at each candidate's first token. Training,
export to ONNX and parity checks all run this module.
"""

from __future__ import annotations

import torch
from torch import nn

from contract.shared_prefix import INPUT_NAMES, PREFIX


def attention_bias(cand_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [rows, 1, L, L]: 0 where ``contract.shared_prefix.attention_allowed``
    holds, the dtype's minimum elsewhere."""
    ci = cand_index.unsqueeze(2)
    cj = cand_index.unsqueeze(1)
    allowed = ((cj == PREFIX) & (ci >= PREFIX)) | (ci == cj)
    zero = torch.zeros((), dtype=dtype)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, blocked).unsqueeze(1)


class SharedPrefixScorer(nn.Module):
    """``(input_ids, cand_index, positions)`` int64 [rows, L] -> float32 score per token [rows, L]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        base = getattr(model, "bert", None) or getattr(model, model.base_model_prefix)
        self.embeddings = base.embeddings
        self.encoder = base.encoder
        self.pooler = base.pooler
        self.dropout = getattr(model, "dropout", nn.Identity())
        self.classifier = model.classifier
        if self.pooler is None:
            raise ValueError("shared-prefix scoring needs the model's pooler (a BERT-style cross-encoder)")

    def forward(self, input_ids: torch.Tensor, cand_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        token_types = (cand_index > PREFIX).to(torch.int64)
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_types, position_ids=positions)
        bias = attention_bias(cand_index, hidden.dtype)
        hidden = self.encoder(hidden, attention_mask=bias).last_hidden_state
        # The pair model's head, applied at every token (the caller reads candidates' first).
        pooled = self.pooler.activation(self.pooler.dense(hidden))
        return self.classifier(self.dropout(pooled))[..., 0].to(torch.float32)


def dummy_inputs(rows: int = 2, seq: int = 16) -> tuple[torch.Tensor, ...]:
    """Example inputs for tracing: a prefix, three candidates and padding in every row."""
    from contract.shared_prefix import pack

    # Small ids: any vocabulary has them (the values do not shape the graph).
    batch = pack([1, 10, 11, 2], [[20], [21, 22], [23]], max_len=seq, buckets=(seq,))
    return tuple(torch.from_numpy(batch.arrays[k]).repeat(rows, 1) for k in INPUT_NAMES)


def export_onnx(model: nn.Module, out_path, *, opset: int = 17, output_name: str = "score"):
    """``SharedPrefixScorer(model)`` to one self-contained ONNX file: inputs ``INPUT_NAMES``
    (INT64 [rows, sequence]), output ``output_name`` (FP32 [rows, sequence])."""
    import warnings
    from pathlib import Path

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = SharedPrefixScorer(model).eval()
    axes = {name: {0: "rows", 1: "sequence"} for name in (*INPUT_NAMES, output_name)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, dummy_inputs(), str(out_path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=[output_name], dynamic_axes=axes,
                          do_constant_folding=True, export_params=True)
    return out_path
