"""The optimizer steps of a run. Each step takes the next lists from the shuffled training
positions, encodes them (with ID dropout), sets the learning rate (warm-up, then linear
decay over the steps the budget allows), computes the listwise loss (softmax cross-entropy
of the positive against its negatives, plus the KL to the distillation teacher) and updates.
The loop stops at the planned steps or the training deadline, checkpointing as it goes.

This module is torch code: it needs the export extra."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.data import ExampleSampler
from training.encoder import Encoded, TrainEncoder
from training.forward import candidate_scores
from training.model import Trainee
from training.progress import Progress
from training.threads import ThreadTuner


def planned_steps(cfg: TrainConfig, n_positions: int) -> int:
    """``cfg.epochs`` passes over the positions, capped by ``cfg.max_steps`` (alone when
    ``epochs`` is 0)."""
    epoch_steps = max(1, n_positions // cfg.lists_per_step)
    max_steps = int(epoch_steps * cfg.epochs)
    if cfg.max_steps:
        max_steps = min(max_steps, cfg.max_steps) if cfg.epochs else cfg.max_steps
    return max_steps


@dataclass
class LoopResult:
    steps: int              # the step the run is at (a resumed run counts the earlier ones)
    pairs: int              # pairs trained on by this run
    train_s: float          # training time, learning-curve points not counted
    pairs_per_s: float
    final_loss: float       # moving average of the loss
    stopped_by: str         # "steps" or "budget"
    curve: list[dict] = field(default_factory=list)


class StepLoop:
    """The step loop of one run, from ``step`` / ``order_pos`` (0, or a checkpoint's)."""

    def __init__(self, cfg: TrainConfig, trainee: Trainee, enc: TrainEncoder, sampler: ExampleSampler,
                 teacher, order: Sequence[tuple[str, int]]):
        self.cfg = cfg
        self.trainee = trainee
        self.enc = enc
        self.sampler = sampler
        self.teacher = teacher
        self.order = order
        self.max_steps = planned_steps(cfg, len(order))
        self.step = 0
        self.order_pos = 0
        self.dropout_rng = random.Random(cfg.seed * 7919 + 17)
        self._targets = torch.zeros(cfg.lists_per_step, dtype=torch.long)  # the positive is first

    def resume_at(self, step: int, order_pos: int) -> None:
        """Continue a checkpoint: its position, and generators seeded for that step."""
        self.step, self.order_pos = step, order_pos
        self.sampler.rng = random.Random(self.cfg.seed * 1_000_003 + step)
        self.dropout_rng = random.Random(self.cfg.seed * 7919 + 17 + step)

    def next_lists(self) -> list[tuple[list[str], list[str]]]:
        """Up to ``lists_per_step`` (history, [positive] + negatives) lists, from the next
        positions of the order that give an example."""
        lists = []
        tries = 0
        while len(lists) < self.cfg.lists_per_step and tries < len(self.order):
            u, t = self.order[self.order_pos % len(self.order)]
            self.order_pos += 1
            tries += 1
            ex = self.sampler.example(u, t)
            if ex is not None:
                history, pos, negs = ex
                lists.append((history[:self.cfg.history_items], [pos] + negs))
        if not lists:
            raise RuntimeError("no training example: no positive is among the retriever's candidates")
        return lists

    def set_learning_rate(self, horizon: int) -> None:
        """Warm-up over ``warmup_steps``, then linear decay (to 5% at least) at ``horizon``."""
        warm = min(1.0, (self.step + 1) / max(1, self.cfg.warmup_steps))
        decay = max(0.05, 1.0 - self.step / max(1, horizon))
        for g in self.trainee.optimizer.param_groups:
            g["lr"] = g["base_lr"] * warm * decay

    def loss(self, lists: Sequence[tuple[list[str], list[str]]], encoded: Encoded):
        """Listwise softmax cross-entropy of each list's positive (first), plus ``distill`` x
        KL(teacher || model) over each list's candidates, the teacher's scores z-normalized
        per list and sharpened by ``distill_temperature``."""
        cfg = self.cfg
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = candidate_scores(self.trainee.model, encoded)
        scores = logits.float().view(len(lists), -1)
        loss = torch.nn.functional.cross_entropy(scores, self._targets[:len(lists)])
        if self.teacher is not None:
            ts = np.stack([self.teacher.scores(h, c) for h, c in lists])
            ts = (ts - ts.mean(1, keepdims=True)) / (ts.std(1, keepdims=True) + 1e-6)
            p_t = torch.softmax(torch.from_numpy(ts / cfg.distill_temperature), dim=1)
            kl = torch.nn.functional.kl_div(torch.log_softmax(scores, dim=1), p_t, reduction="batchmean")
            loss = loss + cfg.distill * kl
        return loss

    def update(self, loss) -> None:
        optimizer = self.trainee.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainee.params, 1.0)
        optimizer.step()

    def run(self, deadline: float, *, checkpoint: Path, tuner: ThreadTuner | None = None,
            curve_point: Callable[[], float] | None = None, progress_stream=None,
            log: Callable[[str], object] = print) -> LoopResult:
        """Steps until ``max_steps`` or ``deadline`` (time.monotonic()); a checkpoint every
        ``checkpoint_every_min`` and, with ``curve_point``, a learning-curve point every
        ``curve_every`` steps (its time not counted as training time)."""
        cfg, model = self.cfg, self.trainee.model
        progress = Progress(max(1.0, deadline - time.monotonic()), self.max_steps or None, progress_stream)
        loss_ema = math.log(1 + cfg.negatives)
        pairs = 0
        t_train = time.monotonic()
        last_ckpt = t_train
        stopped_by = "steps"
        start_step = self.step
        curve: list[dict] = []
        curve_s = 0.0
        model.train()
        while self.step < self.max_steps:
            if time.monotonic() >= deadline:
                stopped_by = "budget"
                break
            lists = self.next_lists()
            encoded = self.enc.encode_lists(lists, self.dropout_rng)
            self.set_learning_rate(self._horizon(start_step, t_train, deadline))
            t_step = time.monotonic()
            loss = self.loss(lists, encoded)
            self.update(loss)
            self.step += 1
            pairs += encoded.pairs
            if tuner is not None:
                tuner.record((time.monotonic() - t_step) / encoded.pairs)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise RuntimeError(f"loss is {lv} at step {self.step}: lower the learning rate")
            loss_ema = 0.98 * loss_ema + 0.02 * lv
            el = time.monotonic() - t_train
            progress.update(self.step, loss_ema, pairs / el if el > 0 else 0.0,
                            f"seq {encoded.arrays['input_ids'].shape[1]} threads {torch.get_num_threads()}")
            if cfg.checkpoint_every_min and time.monotonic() - last_ckpt >= cfg.checkpoint_every_min * 60:
                save_checkpoint(checkpoint, self.trainee, self.step, self.order_pos, cfg)
                last_ckpt = time.monotonic()
            if curve_point is not None and cfg.curve_every and self.step % cfg.curve_every == 0:
                t_c = time.monotonic()
                point = curve_point()
                curve.append({"step": self.step, "pairs": pairs, "train_s": round(t_c - t_train - curve_s, 1),
                              "loss": round(loss_ema, 4), "ndcg@10": round(point, 4)})
                log(f"train: curve {curve[-1]}")
                model.train()
                curve_s += time.monotonic() - t_c
        train_s = time.monotonic() - t_train - curve_s
        pps = pairs / train_s if train_s > 0 else 0.0
        progress.update(self.step, loss_ema, pps, force=True)
        progress.close()
        log(f"train: stopped by {stopped_by} after {self.step} steps, {pairs} pairs in {train_s:.0f}s "
            f"({pps:.0f} pairs/s); loss {loss_ema:.4f} (label cross-entropy of a uniform model: "
            f"{math.log(1 + cfg.negatives):.4f}" + (f"; the loss adds {cfg.distill:g} x KL to the teacher)"
                                                     if cfg.distill > 0 else ")"))
        return LoopResult(self.step, pairs, train_s, pps, loss_ema, stopped_by, curve)

    def _horizon(self, start_step: int, t_train: float, deadline: float) -> int:
        """The steps this run will make: ``max_steps``, or fewer when the budget (at the
        speed measured so far) runs out first."""
        horizon = self.max_steps
        el = time.monotonic() - t_train
        done = self.step - start_step
        if done >= 10 and el > 0:
            horizon = min(self.max_steps, int(self.step + done / el * max(0.0, deadline - time.monotonic())))
        return horizon
