"""Scoring lists in this process: ``score_lists`` for a model being trained (any encoder and
scorer), and ``VersionScorer`` / ``score_in_process`` for an exported model version, scored
exactly as the gateway and Triton would score it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from contract.calibration import apply_text_offset
from contract.items import ScoredFrom
from contract.model_spec import Manifest
from contract.render import Renderer
from contract.tokenize import load_tokenizer
from evaluation.protocol import EvalList
from export.engines import load_backend
from export.write_repo import DEFAULT_PARAMETERS

_BACKEND_SRC = Path(__file__).resolve().parents[1] / "model_repository" / "reranker" / "model.py"


def score_lists(lists: Sequence[tuple[Sequence[str], Sequence[str]]], encode: Callable, scorer: Callable,
                lists_per_call: int = 5) -> list[np.ndarray]:
    """Scores of each (history, candidates) list, in order."""
    out: list[np.ndarray] = []
    for s in range(0, len(lists), lists_per_call):
        chunk = lists[s:s + lists_per_call]
        arrays = encode(chunk)
        scores = scorer(arrays)
        start = 0
        for _, c in chunk:
            out.append(np.asarray(scores[start:start + len(c)], dtype=np.float32))
            start += len(c)
    return out


class VersionScorer:
    """A model version scored in this process exactly as the gateway and Triton would: the
    version's renderer options and tokenizer (padded to its sequence buckets), and its engine
    run through the Triton backend's own ``load_scorer`` (``model_repository/reranker/model.py``)
    with the parameters the export served it with."""

    def __init__(self, version_dir: Path, threads: int = 2):
        self.dir = Path(version_dir)
        self.manifest = Manifest.read(self.dir / "manifest.json")
        self.tokenizer = load_tokenizer(self.dir / "tokenizer.json", self.manifest.spec)
        self.renderer = Renderer.for_model(self.manifest, self.tokenizer)
        backend = load_backend(self.dir / "model.py" if (self.dir / "model.py").is_file()
                               else _BACKEND_SRC)
        # The engine: the version's own (its manifest), as in Triton. No spin-waiting: on a
        # shared 2-core machine spinning threads fight the other work.
        params = {**DEFAULT_PARAMETERS, "intra_op_threads": str(threads), "allow_spinning": "0"}
        self.engine = self.manifest.engine or "onnxruntime"  # the backend reads the same field
        self._scorer = backend.load_scorer(str(self.dir), params, self.manifest.spec.input_names,
                                           self.manifest.spec.output_name)

    def texts(self, history_items, candidate_items, history_in_text: int = 10) -> tuple[str, list[str]]:
        n = self.renderer.history_items(history_in_text)
        user = self.renderer.user(history_items[:n], "", max_items=history_in_text)
        return user, [self.renderer.item(it) for it in candidate_items]

    def encode(self, user_text: str, item_texts: Sequence[str]):
        return self.tokenizer.encode(user_text, item_texts)

    def score(self, user_text: str, item_texts: Sequence[str], item_ids: Sequence[str] = ()) -> np.ndarray:
        """Model scores as the gateway reports them: with ``item_ids``, the version's text
        offset is added to the items it has no token for."""
        spec = self.manifest.spec
        batch = self.encode(user_text, item_texts)
        # Rows in chunks of the spec's batch, as the gateway sends them to Triton.
        out = [self._scorer.score(batch.rows(s, s + spec.max_batch_size))
               for s in range(0, len(batch), spec.max_batch_size)]
        scores = batch.scores(np.concatenate(out))
        if item_ids and self.manifest.text_offset:
            from_text = [self.renderer.scored_from(i) is ScoredFrom.TEXT for i in item_ids]
            scores = np.asarray(apply_text_offset(scores.tolist(), from_text, self.manifest.text_offset), np.float32)
        return scores


def score_in_process(scorer: VersionScorer, lists: Sequence[EvalList], items: Mapping,
                     history_in_text: int = 10, log=print) -> dict[str, np.ndarray]:
    """Model scores of each list, by user, from ``scorer``."""
    out = {}
    t0 = time.monotonic()
    for n, el in enumerate(lists, 1):
        hist = [items[i] for i in el.history if i in items]
        user, texts = scorer.texts(hist, [items[c] for c in el.candidates], history_in_text)
        out[el.user] = scorer.score(user, texts, el.candidates)
        if n % 100 == 0 or n == len(lists):
            log(f"eval: in-process {n}/{len(lists)} lists ({time.monotonic() - t0:.0f}s)")
    return out
