"""Periodic checkpoints of a run (weights, optimizer, position in the example order), and
resuming from one (``rerankd train --resume``).

This module is torch code: it needs the export extra."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from training.config import TrainConfig
from training.model import Trainee


def save_checkpoint(path: Path, trainee: Trainee, step: int, order_pos: int, cfg: TrainConfig) -> None:
    """Atomically write ``path/`` = weights + optimizer + position in the example order."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {"model": trainee.model.state_dict(), "optimizer": trainee.optimizer.state_dict(), "step": step,
             "order_pos": order_pos, "config": cfg.to_dict(),
             "emb_base": trainee.split_emb.base.data, "emb_new": trainee.split_emb.new.data}
    torch.save(state, tmp / "state.pt")
    trainee.tokenizer.save(str(tmp / "tokenizer.json"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_checkpoint(path: Path, trainee: Trainee, cfg: TrainConfig,
                    log: Callable[[str], object] = print) -> tuple[int, int] | None:
    """Loads ``path/`` into ``trainee`` when it was written by a run of the same config (the
    run length aside); returns its (step, position in the example order), or None."""
    path = Path(path)
    if not (path / "state.pt").is_file():
        return None
    state = torch.load(path / "state.pt", weights_only=False)
    if _resumable(state["config"]) != _resumable(cfg.to_dict()):
        log("train: --resume: checkpoint config differs from this run's; starting fresh")
        return None
    trainee.model.load_state_dict(state["model"])
    trainee.split_emb.base.data.copy_(state["emb_base"])
    trainee.split_emb.new.data.copy_(state["emb_new"])
    trainee.optimizer.load_state_dict(state["optimizer"])
    log(f"train: resumed from {path} at step {state['step']}")
    return state["step"], state["order_pos"]


def _resumable(config: dict) -> dict:
    """The part of a config that must match to continue a checkpoint (not the run length)."""
    return {k: v for k, v in config.items()
            if k not in ("budget_min", "max_steps", "epochs", "checkpoint_every_min", "valid_users",
                         "curve_every", "curve_lists", "threads")}
