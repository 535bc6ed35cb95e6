"""Fine-tune the cross-encoder reranker on MovieLens-100K, then export it as a model version.

What is learned: next-item prediction on each user's *training* sequence (leave-one-out
split, ``interactions.movielens``). Every position t of a user's train sequence is one example: the
user side is the items before t (most recent first, rendered by ``contract.render``
exactly as the gateway renders a served history), the positive is the item at t, the
negatives are hard ones, from the first-stage retriever (ItemKNN top-50 for that history,
the user's own train items removed) topped up with popular items. The loss is listwise:
softmax cross-entropy of the positive against its negatives (``training.loop``).

Levers (``training.config.TrainConfig``): item-ID tokens added to the vocabulary (``[i50]``;
each new embedding starts as the mean word-piece embedding of the item's title;
``training.model``), a larger learning rate for them and the new head, how many layers of
MiniLM to keep, history length, negatives per positive, bf16 autocast, dropout off, eager
attention.

Cold start (``evaluation.coldstart``): ID dropout (``training.encoder``) renders a share of
items as text alone, as an item created after training reads, so one model ranks token items
and text items on one scale; validation then picks the version's text offset
(``contract.calibration``). With ``cold_holdout`` a seeded share of the items is left out of
training entirely, for the cold-start protocol.

The run respects a wall-clock budget that covers everything (``training.budget``): training
stops early enough to leave time for the final validation pass and the export. Checkpoints
are written periodically (``--resume`` continues from the last one; ``training.checkpoint``).
After training, validation picks the retrieval-blend weight (``training.validate``, with the
evaluation protocol's functions) and the model is exported as the next version of the model
repository with a manifest (``training.publish``).

This module is torch code: it needs the export extra.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contract.model_spec import SHARED_PREFIX, ModelSpec
from evaluation.protocol import validation_candidates
from training.budget import check_time_to_train, reserve
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import ExampleSampler, TrainingData, example_order
from training.encoder import TrainEncoder
from training.loop import StepLoop
from training.model import prepare_model
from training.publish import export_trained, save_final
from training.threads import seed_everything, start_threads
from training.validate import curve_point, inference_speed, torch_scorer, validate


@dataclass
class TrainResult:
    steps: int
    pairs: int
    train_s: float
    pairs_per_s: float
    final_loss: float
    stopped_by: str
    valid: dict = field(default_factory=dict)
    version: int | None = None
    total_s: float = 0.0
    hf_dir: Path | None = None


def train(cfg: TrainConfig, data: TrainingData, *, repo: Path | None, work_dir: Path,
          resume: bool = False, export: bool = True, log: Callable[[str], object] = print,
          progress_stream=None, spec: ModelSpec | None = None) -> TrainResult:
    """Fine-tune, validate, export; returns what happened. ``repo=None`` or ``export=False``
    skips the export (the fine-tuned HF folder stays in ``work_dir/final``)."""
    t_start = time.monotonic()
    deadline = t_start + cfg.budget_min * 60.0
    exporting = export and repo is not None
    # 1. The process: torch threads (and their tuner), every generator seeded.
    tuner = start_threads(cfg)
    seed_everything(cfg.seed)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # 2. The model (item tokens, split embedding, optimizer) and the lists' encoder.
    trainee = prepare_model(cfg, data, log)
    shared = cfg.scoring == SHARED_PREFIX
    enc = TrainEncoder(trainee.tokenizer, cfg.render_options(), data.items, cfg.max_row_len if shared else cfg.max_seq_len,
                       id_dropout=cfg.id_dropout, history_id_dropout=cfg.history_id_dropout, scoring=cfg.scoring,
                       pool=cfg.pool)
    # 3. The step loop over the shuffled training positions, from a checkpoint if asked.
    teacher = data.teacher() if cfg.distill > 0 else None
    loop = StepLoop(cfg, trainee, enc, ExampleSampler(data, cfg, cfg.seed), teacher, example_order(data.split, cfg))
    checkpoint = work_dir / "checkpoint"
    if resume and (at := load_checkpoint(checkpoint, trainee, cfg, log)) is not None:
        loop.resume_at(*at)
    # 4. The budget: time kept for validation (at a measured inference speed) and the export.
    valid_lists = validation_candidates(data, cfg.retriever_k, users=cfg.valid_users or None)
    scorer = torch_scorer(trainee.model, cfg.bf16)
    train_deadline = _training_deadline(cfg, deadline, loop, valid_lists,
                                        inference_speed(enc, scorer, valid_lists), exporting, log)
    # 5. Training.
    curve = (lambda: curve_point(valid_lists[:cfg.curve_lists], data.split.valid, enc, scorer)
             ) if cfg.curve_every else None
    run = loop.run(train_deadline, checkpoint=checkpoint, tuner=tuner, curve_point=curve,
                   progress_stream=progress_stream, log=log)
    # 6. The fine-tuned folder, validated: the blend and the text offset.
    final = save_final(trainee, cfg, work_dir)
    valid = validate(cfg, data, valid_lists, enc, scorer, work_dir, log)
    if run.curve:
        valid["curve"] = run.curve
    result = TrainResult(run.steps, run.pairs, run.train_s, run.pairs_per_s, run.final_loss, run.stopped_by,
                         valid, hf_dir=final)
    # 7. The next model version.
    if exporting:
        result.version = export_trained(final, repo, cfg, data, result, log=log, spec=spec)
    result.total_s = time.monotonic() - t_start
    log(f"train: done in {result.total_s:.0f}s (budget {cfg.budget_min * 60:.0f}s)")
    return result


def _training_deadline(cfg: TrainConfig, deadline: float, loop: StepLoop, valid_lists: list,
                       pairs_per_s: float, exporting: bool, log: Callable[[str], object]) -> float:
    """When training must stop (time.monotonic()) for validation and export to fit in the
    budget; raises ``BudgetExceeded`` when that leaves no time to train."""
    kept = reserve(cfg, valid_lists, pairs_per_s, export=exporting)
    train_deadline = deadline - kept.seconds
    log(f"train: {len(loop.order)} training positions; {cfg.lists_per_step} lists x {1 + cfg.negatives} pairs "
        f"a step; up to {loop.max_steps} steps; budget {cfg.budget_min:.1f} min, of which ~{kept.seconds:.0f}s "
        f"reserved for validation ({kept.valid_pairs} pairs at ~{kept.pairs_per_s:.0f}/s) and export")
    check_time_to_train(cfg, train_deadline, kept)
    return train_deadline
