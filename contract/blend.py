"""The one blend of model and retrieval scores, and the one final order.

``final = model_weight * norm(model) + retrieval_weight * norm(retrieval)`` per request. The
rules engine, its columnar fast path, training (which chooses a model's blend on validation)
and offline evaluation all call these functions, so the order a version was validated with is
the order the gateway serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NORMALIZATIONS = ("minmax", "sigmoid", "none")


@dataclass(frozen=True, slots=True)
class Blend:
    """Replace the score by ``model_weight * norm(model) + retrieval_weight * norm(retrieval)``.

    ``minmax`` takes its range from this request's candidates (a constant set maps to the
    neutral 0.5), ``sigmoid`` squashes a logit, ``none`` keeps the raw value."""

    name: str = "blend"
    model_weight: float = 1.0
    retrieval_weight: float = 0.0
    model_normalize: str = "minmax"
    retrieval_normalize: str = "minmax"
    # Normalized retrieval value used for candidates sent without a retrieval score.
    missing_retrieval: float = 0.0

    def __post_init__(self) -> None:
        for key in ("model_normalize", "retrieval_normalize"):
            if getattr(self, key) not in NORMALIZATIONS:
                raise ValueError(f"{key} must be one of {', '.join(NORMALIZATIONS)}, "
                                 f"not {getattr(self, key)!r}")
        for key in ("model_weight", "retrieval_weight", "missing_retrieval"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"{key} must be a finite number")

    def to_dict(self) -> dict:
        """The manifest's form (``name`` is the rule's name, not part of the formula)."""
        return {"model_weight": self.model_weight, "retrieval_weight": self.retrieval_weight,
                "model_normalize": self.model_normalize, "retrieval_normalize": self.retrieval_normalize,
                "missing_retrieval": self.missing_retrieval}

    @classmethod
    def from_dict(cls, data: Mapping, name: str = "blend") -> "Blend":
        """From a manifest's ``blend``; unknown keys (a metrics record next to it) are ignored."""
        try:
            return cls(name=name, model_weight=float(data["model_weight"]),
                       retrieval_weight=float(data["retrieval_weight"]),
                       model_normalize=str(data.get("model_normalize", "minmax")),
                       retrieval_normalize=str(data.get("retrieval_normalize", "minmax")),
                       missing_retrieval=float(data.get("missing_retrieval", 0.0)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a blend needs numeric model_weight and retrieval_weight: {exc}") from exc

    def describe(self) -> str:
        return (f"{self.model_weight:g} * {self.model_normalize}(model) + "
                f"{self.retrieval_weight:g} * {self.retrieval_normalize}(retrieval)")


def normalize(kind: str, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normalize ``x``; ``minmax`` takes its range from the finite entries under ``mask``
    (this request's surviving candidates); a constant set maps to the neutral 0.5."""
    if kind == "none":
        return x
    if kind == "sigmoid":
        out = np.empty_like(x)
        pos = x >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
        z = np.exp(x[~pos])
        out[~pos] = z / (1.0 + z)
        return out
    ref = x[mask & np.isfinite(x)]
    if ref.size == 0:
        return np.full_like(x, 0.5)
    lo, hi = float(ref.min()), float(ref.max())
    span = hi - lo
    if not (span > 0 and math.isfinite(span)):
        return np.full_like(x, 0.5)
    return np.clip((x - lo) / span, 0.0, 1.0)


def blend_columns(blend: Blend, model: np.ndarray, scored: np.ndarray, retrieval: np.ndarray) -> np.ndarray:
    """The blended score per candidate (float64 columns; ``retrieval`` NaN where absent,
    ``model`` only read where ``scored``)."""
    has_r = ~np.isnan(retrieval)
    with np.errstate(all="ignore"):
        m = np.where(scored, normalize(blend.model_normalize, model, scored), 0.0)
        r = np.where(has_r, normalize(blend.retrieval_normalize, retrieval, has_r), blend.missing_retrieval)
        return blend.model_weight * m + blend.retrieval_weight * r


def final_scores(blend: Blend | None, model: np.ndarray, scored: np.ndarray, retrieval: np.ndarray) -> np.ndarray:
    """Final score per candidate before boosts: the model score (0 where unscored), or with a
    blend ``model + (blended - model)``, which is how the rules engine books the blend as an
    adjustment of the model score (the same float64 operations, so the same floats)."""
    base = np.where(scored, model, 0.0)
    if blend is None or not len(base):
        return base
    blended = blend_columns(blend, base, scored, retrieval)
    with np.errstate(all="ignore"):  # inf - inf is NaN here as in the engine's floats
        return base + (blended - base)


def order(item_ids: Sequence[str], final: np.ndarray, scored: np.ndarray | None = None) -> list[int]:
    """Positions in ranked order: scored candidates first, final score descending (NaN after
    every number), ties by item id."""
    n = len(item_ids)
    tier = np.zeros(n, dtype=bool) if scored is None else ~scored
    key = np.where(np.isnan(final), np.inf, -final)
    idx = np.lexsort((key, tier))
    k_sorted, t_sorted = key[idx], tier[idx]
    if n > 1 and ((k_sorted[1:] == k_sorted[:-1]) & (t_sorted[1:] == t_sorted[:-1])).any():
        # Ties (rare with real scores): the exact key in Python, item id last.
        keys, tiers = key.tolist(), tier.tolist()
        return sorted(range(n), key=lambda i: (tiers[i], keys[i], item_ids[i]))
    return idx.tolist()


def blend_order(item_ids: Sequence[str], model_scores: Sequence[float], retrieval: Sequence[float],
                blend: Blend | None) -> list[str]:
    """Item ids in final order for one list, every candidate scored (offline evaluation and
    training). ``retrieval`` NaN where absent."""
    model = np.asarray(model_scores, dtype=np.float64)
    scored = np.ones(len(item_ids), dtype=bool)
    final = final_scores(blend, model, scored, np.asarray(retrieval, dtype=np.float64))
    return [item_ids[i] for i in order(item_ids, final, scored)]


def model_order(item_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Model score descending, ties by item id: the gateway's order without a blend."""
    return blend_order(item_ids, scores, np.full(len(item_ids), np.nan), None)
