"""The run's wall-clock budget covers everything: training stops early enough to leave time
for the final validation pass (at a measured inference speed) and the export."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from evaluation.cold_lists import COLD_IN_MIXED
from training.config import TrainConfig

# Time kept for the ONNX export + verification + version write of a MiniLM-size model.
EXPORT_RESERVE_S = 25.0
# The text-offset calibration scores up to this many validation lists again, twice
# (``evaluation.text_offset.choose_text_offset``'s ``max_lists``).
OFFSET_LISTS = 1000


class BudgetExceeded(RuntimeError):
    pass


@dataclass
class Reserve:
    """Time kept after training: validation of ``valid_pairs`` pairs at ``pairs_per_s``,
    the export, and a margin."""

    seconds: float
    valid_pairs: int
    pairs_per_s: float


def reserve(cfg: TrainConfig, valid_lists: Sequence[tuple], pairs_per_s: float, *, export: bool) -> Reserve:
    """What validation (the lists, then the text-offset calibration: 2 x 5 extra pairs for
    each of up to 1000 lists) and, with ``export``, the export need after training."""
    n_valid_pairs = sum(len(c) for _, _, c, _ in valid_lists)
    export_s = EXPORT_RESERVE_S if export else 0.0
    n_valid_pairs += 2 * COLD_IN_MIXED * min(OFFSET_LISTS, len(valid_lists))
    seconds = 1.3 * n_valid_pairs / pairs_per_s + export_s + min(10.0, 0.05 * cfg.budget_min * 60)
    return Reserve(seconds, n_valid_pairs, pairs_per_s)


def check_time_to_train(cfg: TrainConfig, train_deadline: float, kept: Reserve) -> None:
    """At least a tenth of the budget (at most 10 s) must be left for training itself."""
    if train_deadline - time.monotonic() < min(10.0, 0.1 * cfg.budget_min * 60):
        raise BudgetExceeded(f"budget of {cfg.budget_min} min leaves no time to train "
                             f"(validation + export need ~{kept.seconds:.0f}s)")
