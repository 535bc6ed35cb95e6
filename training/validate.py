"""Validation of the model being trained, with the evaluation protocol's own functions: the
validation lists scored by the torch model, the retrieval blend chosen on them, and the text
offset calibrated; also the inference speed the budget plans with, and the learning curve.

This module is torch code: it needs the export extra."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from contract.blend import Blend, model_order
from evaluation.protocol import blend_from_scores
from evaluation.scoring import score_lists
from evaluation.text_offset import choose_text_offset
from training.config import TrainConfig
from training.data import TrainingData
from training.encoder import Encoded, TrainEncoder, trim_padding
from training.forward import candidate_scores


def torch_scorer(model, bf16: bool, batch_pairs: int = 256):
    """A function (Encoded) -> float32 scores, in eval mode, no grad, bf16 autocast if asked."""
    def score(enc: Encoded) -> np.ndarray:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if enc.first_token is not None:  # shared prefix: a row holds a list
                return candidate_scores(model, enc, rows_per_pass=16).float().numpy()
            out = []
            for s in range(0, enc.pairs, batch_pairs):
                chunk = trim_padding({k: v[s:s + batch_pairs] for k, v in enc.arrays.items()})
                logits = model(**{k: torch.from_numpy(v) for k, v in chunk.items()}).logits
                out.append(logits[:, 0].float().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    return score


def inference_speed(enc: TrainEncoder, scorer: Callable, valid_lists: Sequence[tuple]) -> float:
    """Pairs per second of ``scorer`` on a few validation lists (after a warm-up call, which
    pays one-off costs); 1000 when there is nothing to validate."""
    if not valid_lists:
        return 1000.0
    probe = enc.encode_lists([(h, c) for _, h, c, _ in valid_lists[:4]])
    scorer(probe)  # warm-up
    t0 = time.monotonic()
    scorer(probe)
    return probe.pairs / max(1e-3, time.monotonic() - t0)


def curve_point(lists: Sequence[tuple], targets: Mapping[str, str], enc: TrainEncoder, scorer: Callable) -> float:
    """Model-alone NDCG@10 over validation ``lists`` (the learning curve of experiments)."""
    scores = score_lists([(h, c) for _, h, c, _ in lists], enc.encode_lists, scorer)
    tot = 0.0
    for (u, _, c, _), s in zip(lists, scores):
        r = model_order(c, s).index(targets[u]) + 1
        tot += 1.0 / math.log2(r + 1) if r <= 10 else 0.0
    return tot / max(1, len(lists))  # NDCG@10 over covered users


def validate(cfg: TrainConfig, data: TrainingData, valid_lists: Sequence[tuple], enc: TrainEncoder,
             scorer: Callable, work_dir: Path, log: Callable[[str], object] = print) -> dict:
    """Validation (train-only retriever, history up to 'valid'): the model alone, the blend
    grid and its best blend, and the text offset; written to ``work_dir/validation.json``."""
    t0 = time.monotonic()
    scores = score_lists([(h, c) for _, h, c, _ in valid_lists], enc.encode_lists, scorer)
    valid = blend_from_scores(valid_lists, scores, data.split.valid, cfg.blend_grid)
    valid["text_offset"] = choose_text_offset(valid_lists, scores, data, enc, scorer, seed=cfg.seed)
    (Path(work_dir) / "validation.json").write_text(json.dumps(valid, indent=1))
    offset = valid["text_offset"]
    log(f"train: validation in {time.monotonic() - t0:.0f}s: model-alone NDCG@10 "
        f"{valid['model']['ndcg@10']:.4f} (random {valid['random']['ndcg@10']:.4f}), retriever "
        f"{valid['retriever']['ndcg@10']:.4f}, best blend {Blend.from_dict(valid['blend']).describe()} -> "
        f"{valid['blend']['metrics']['ndcg@10']:.4f}; text offset {offset['offset']:+.2f} "
        f"(text-read items' top-10 share {offset['share_text']:.4f} -> "
        f"{offset['share_text_calibrated']:.4f}, as tokens {offset['share_token']:.4f})")
    return valid
