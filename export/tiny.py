"""A tiny random-weight BERT cross-encoder for fast tests (no download, ~1M parameters)."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files that exist in ``src`` to ``dst``; ``tokenizer.json`` is required."""
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def make_tiny_model(out_dir: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2,
                    seed: int = 0) -> Path:
    """Write a random BertForSequenceClassification (1 label) plus the packaged MiniLM
    tokenizer to ``out_dir`` with ``save_pretrained``; returns ``out_dir``."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    from export.base_model import default_base_model

    out_dir = Path(out_dir)
    src = default_base_model()
    vocab_size = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=512,
        type_vocab_size=2, num_labels=1,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out_dir)
    copy_tokenizer_files(src, out_dir)
    return out_dir
