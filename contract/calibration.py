"""Cold and warm items on one score scale.

A model version may carry a ``text_offset`` (``Manifest.text_offset``, chosen on validation by
``rerankd train``): it is added to the model score of every item the model read from its text
alone (no ID token: a cold item), so that text-read items take the share of the top of a
ranking that the same items take when read from their tokens. Training, evaluation and the
gateway all apply it through this one function.
"""

from __future__ import annotations

from collections.abc import Sequence


def apply_text_offset(scores: list[float], from_text: Sequence[bool], offset: float) -> list[float]:
    """``scores`` with ``offset`` added where ``from_text`` (in place; returned for chaining)."""
    if offset:
        for k, text in enumerate(from_text):
            if text:
                scores[k] += offset
    return scores
