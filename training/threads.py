"""The training process's threads and seeds: how many torch threads (``ThreadTuner`` keeps
picking the faster of 1 and 2 on a shared machine), and every random generator seeded.

This module is torch code: it needs the export extra."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import torch

from training.config import TrainConfig

TORCH_THREADS = 2


class ThreadTuner:
    """Picks the faster of 1 or ``max_threads`` torch threads, and keeps checking: other
    work on a 2-core machine can make one thread faster than two (and back)."""

    def __init__(self, max_threads: int = TORCH_THREADS, every_s: float = 60.0, probe_steps: int = 4):
        self.choices = sorted({1, max(1, max_threads)}, reverse=True)
        self.every_s = every_s
        self.probe_steps = probe_steps
        self.rate: dict[int, float] = {}
        self.current = self.choices[0]
        self._probe_left = 0
        self._samples: list[float] = []
        self._next_probe = time.monotonic() + 10.0
        torch.set_num_threads(self.current)

    def record(self, seconds_per_pair: float) -> None:
        if len(self.choices) == 1:
            return
        self._samples.append(seconds_per_pair)
        if self._probe_left:
            self._probe_left -= 1
            if self._probe_left == 0:
                self._finish_probe()
            return
        now = time.monotonic()
        if now >= self._next_probe and len(self._samples) >= self.probe_steps:
            self.rate[self.current] = sorted(self._samples[-self.probe_steps:])[self.probe_steps // 2]
            self._set(next(c for c in self.choices if c != self.current))
            self._probe_left = self.probe_steps + 1  # the first step after a switch is discarded
            self._next_probe = now + self.every_s

    def _finish_probe(self) -> None:
        self.rate[self.current] = sorted(self._samples[-self.probe_steps:])[self.probe_steps // 2]
        best = min(self.rate, key=self.rate.get)
        self._set(best)

    def _set(self, n: int) -> None:
        self.current = n
        self._samples = []
        torch.set_num_threads(n)


def start_threads(cfg: TrainConfig) -> ThreadTuner | None:
    """Sets torch's threads: ``cfg.threads``, or up to ``TORCH_THREADS`` (OMP_NUM_THREADS, when
    set, caps them: the test suite sets 1). Returns the tuner that keeps choosing, if any."""
    max_threads = cfg.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or TORCH_THREADS
    tuner = ThreadTuner(max_threads) if cfg.threads == 0 and max_threads > 1 else None
    torch.set_num_threads(max_threads)
    return tuner


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
