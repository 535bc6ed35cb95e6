"""Check that the ONNX graph scores like the torch model on the same token ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contract.items import Item
from contract.render import render_item, render_user
from contract.shared_prefix import join_rows
from contract.tokenize import EncodedBatch, PairTokenizer
from export.to_onnx import ScoreModel, onnx_session, run_onnx


class ExportVerificationError(RuntimeError):
    """The exported graph's scores differ from the torch model's by more than the tolerance."""


def torch_scores(model: nn.Module, batch: EncodedBatch, input_names: Sequence[str]) -> np.ndarray:
    """Torch scores ``[n, 1]`` float32 for ``batch`` (inputs taken in ``input_names`` order)."""
    wrapper = ScoreModel(model, tuple(input_names)).eval()
    with torch.no_grad():
        out = wrapper(*(torch.from_numpy(batch.arrays[n]) for n in input_names))
    return out.numpy()


def max_abs_diff(model: nn.Module, onnx_path: Path, batch: EncodedBatch, *, session=None) -> float:
    """Largest |torch - onnxruntime| score over the rows of ``batch``."""
    session = session or onnx_session(onnx_path)
    names = [i.name for i in session.get_inputs()]
    output_name = session.get_outputs()[0].name
    expected = torch_scores(model, batch, names)
    got = run_onnx(session, batch.arrays, output_name)
    if got.shape != expected.shape:
        raise ExportVerificationError(f"ONNX output shape {got.shape} != torch {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def _movie(item_id: str, title: str, year: str, genres: str, text: str = "") -> Item:
    return Item(item_id, title, text, {"year": year, "genres": genres})


_MOVIES = {
    "toy": _movie("1", "Toy Story (1995)", "1995", "Animation|Children's|Comedy"),
    "heat": _movie("6", "Heat (1995)", "1995", "Action|Crime|Thriller"),
    "fargo": _movie("100", "Fargo (1996)", "1996", "Crime|Drama|Thriller"),
    "alien": _movie("183", "Alien (1979)", "1979", "Action|Horror|Sci-Fi|Thriller"),
    "emma": _movie("204", "Emma", "1996", "Comedy|Drama|Romance",
                   "A matchmaker in an English village meddles in her friends' love lives."),
    "babe": _movie("8", "Babe (1995)", "1995", "Children's|Comedy|Drama"),
    "godfather": _movie("127", "Godfather, The (1972)", "1972", "Action|Crime|Drama"),
    "casablanca": _movie("483", "Casablanca (1942)", "1942", "Drama|Romance|War"),
    "star_wars": _movie("50", "Star Wars (1977)", "1977", "Action|Adventure|Romance|Sci-Fi|War"),
}


def sample_pairs() -> list[tuple[str, str]]:
    """Eight realistic (user text, item text) pairs from the real renderer: short and long
    histories, an empty history and a context, so rows of one user differ in length."""
    m = _MOVIES
    crime_fan = render_user([m["godfather"], m["heat"], m["alien"], m["star_wars"], m["toy"],
                             m["casablanca"]])
    family = render_user([m["babe"], m["toy"]], context_text="movie night with the kids")
    newcomer = render_user([])
    return [
        (crime_fan, render_item(m["fargo"])),
        (crime_fan, render_item(m["emma"])),
        (crime_fan, render_item(m["toy"])),
        (family, render_item(m["star_wars"])),
        (family, render_item(m["babe"])),
        (family, render_item(m["godfather"])),
        (newcomer, render_item(m["casablanca"])),
        (newcomer, render_item(m["emma"])),
    ]


def encode_pairs(tokenizer: PairTokenizer, pairs: Sequence[tuple[str, str]]) -> list[EncodedBatch]:
    """One padded batch per distinct user text, in first-seen order (as the gateway sends them)."""
    by_user: dict[str, list[str]] = {}
    for user_text, item_text in pairs:
        by_user.setdefault(user_text, []).append(item_text)
    return [tokenizer.encode(user, items) for user, items in by_user.items()]


def verify_pairs(model: nn.Module, onnx_path: Path, tokenizer: PairTokenizer,
                 pairs: Sequence[tuple[str, str]], *, tolerance: float) -> float:
    """Max abs diff over all ``pairs``; raises ExportVerificationError above ``tolerance``."""
    session = onnx_session(onnx_path)
    diff = max(max_abs_diff(model, onnx_path, b, session=session)
               for b in encode_pairs(tokenizer, pairs))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportVerificationError(
            f"{onnx_path}: ONNX Runtime and torch scores differ by {diff:.3g} "
            f"(tolerance {tolerance:g}) on {len(pairs)} sample pairs; not writing a version")
    return diff


# -- shared-prefix versions (``contract.shared_prefix``) ------------------------------------
def prefix_torch_scores(model: nn.Module, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per-token torch scores ``[rows, seq]`` float32 of the shared-prefix graph
    (``export.shared_prefix.SharedPrefixScorer``) for int64 arrays keyed by input name."""
    from contract.shared_prefix import INPUT_NAMES
    from export.shared_prefix import SharedPrefixScorer

    wrapper = SharedPrefixScorer(model).eval()
    with torch.no_grad():
        out = wrapper(*(torch.from_numpy(np.ascontiguousarray(arrays[n], dtype=np.int64)) for n in INPUT_NAMES))
    return out.numpy()


def verify_requests(model: nn.Module, onnx_path: Path, tokenizer, pairs: Sequence[tuple[str, str]], *,
                    tolerance: float) -> float:
    """``verify_pairs`` for a shared-prefix graph: ``pairs`` grouped into one request per
    user text (``PrefixTokenizer``), each candidate's score read at its first token. Max abs
    torch/ONNX Runtime diff over three layouts of the same candidates, each against torch
    on the request alone: the request as laid out, all requests joined into one padded batch
    (as the backend joins callers), and every candidate alone in its own row (the isolation
    property). Raises ExportVerificationError above ``tolerance``."""
    session = onnx_session(onnx_path)
    output_name = session.get_outputs()[0].name
    batches = encode_pairs(tokenizer, pairs)
    expected = [b.scores(prefix_torch_scores(model, b.arrays)) for b in batches]
    diffs = []
    for b, ref in zip(batches, expected):
        got = run_onnx(session, b.arrays, output_name)
        if got.shape != b.input_ids.shape:
            raise ExportVerificationError(f"ONNX output shape {got.shape} != per-token {b.input_ids.shape}")
        diffs.append(np.abs(b.scores(got).astype(np.float64) - ref).max())
    joined = run_onnx(session, join_rows([b.arrays for b in batches]), output_name)
    start = 0
    for b, ref in zip(batches, expected):
        got = b.scores(joined[start:start + len(b), :b.seq_len])
        diffs.append(np.abs(got.astype(np.float64) - ref).max())
        start += len(b)
    by_user: dict[str, list[str]] = {}
    for user_text, item_text in pairs:
        by_user.setdefault(user_text, []).append(item_text)
    for (user_text, items), ref in zip(by_user.items(), expected):
        for k, item in enumerate(items):
            alone = tokenizer.encode(user_text, [item])
            got = alone.scores(run_onnx(session, alone.arrays, output_name))
            diffs.append(abs(float(got[0]) - float(ref[k])))
    diff = float(max(diffs))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportVerificationError(
            f"{onnx_path}: ONNX Runtime and torch shared-prefix scores differ by {diff:.3g} "
            f"(tolerance {tolerance:g}) on {len(pairs)} sample pairs ({len(batches)} requests, "
            "as laid out, joined and one candidate alone); not writing a version")
    return diff
