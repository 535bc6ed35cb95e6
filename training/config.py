"""``TrainConfig``: every knob of a training run, written into the manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from contract.render import RenderOptions


@dataclass
class TrainConfig:
    """Every knob of a run; written into the manifest (``training.config``)."""

    base_model: str = ""            # HF folder; empty: packaged MiniLM-L6
    seed: int = 0
    budget_min: float = 4.0         # whole run: training + validation + export
    max_steps: int = 0              # 0: until the budget or ``epochs`` runs out
    epochs: float = 1.0             # passes over the training positions (upper bound)
    lr: float = 4e-5
    head_lr_mult: float = 10.0      # new classification head
    token_lr_mult: float = 25.0     # new item-ID token embeddings
    weight_decay: float = 0.01
    warmup_steps: int = 30
    lists_per_step: int = 16        # lists (1 positive + negatives) per optimizer step
    negatives: int = 15
    hard_negatives: float = 1.0     # share of negatives drawn from the retriever's top-50
    # Of the negatives, this many are drawn uniformly from the whole (warm) catalogue: without
    # them the model never sees a long-tail item as a candidate, and a cold item's text could
    # not tell it that nobody watches such films.
    random_negatives: int = 2
    retriever_k: int = 50
    recent_positions: int = 0       # per user, train only on the last N positions (0: all)
    positives: str = "candidates"   # "all", or only positions whose positive the retriever finds
    distill: float = 3.0            # weight of listwise distillation from TransitionTeacher (0: off)
    distill_temperature: float = 1.0
    threads: int = 0                # torch threads; 0: the faster of 1 and 2, re-checked each minute
    curve_every: int = 0            # experiments: validation NDCG@10 every N steps (0: off)
    curve_lists: int = 150
    layers: int = 2                 # keep the first N transformer layers (0: all)
    bf16: bool = True
    # The served engine (export.engines.ENGINES). openvino_int8: 2.8x ORT fp32 on this CPU with
    # validation NDCG@10 within 0.005 of fp32 (perf.engine_quality); the export checks its
    # agreement with fp32 and falls back to onnxruntime if it disagrees or is not installed.
    engine: str = "openvino_int8"
    max_seq_len: int = 64           # training truncation of a pair (serving truncates at the spec's max)
    # How the model reads a list (contract.model_spec): "pairwise", a row per (history,
    # candidate) pair; "shared_prefix", one row per list, the history once.
    scoring: str = "shared_prefix"
    max_row_len: int = 256          # shared prefix: a row's length in training
    pool: str = "mean"              # shared prefix: a candidate's score from its first token or the mean of its tokens
    freeze_word_embeddings: bool = True  # the pretrained word pieces; new tokens always train
    init_tokens: str = "title_mean+cf"  # "random", "title_mean", "title_mean+cf", "random+cf"
    cf_scale: float = 1.0               # norm of the collaborative part (x mean word-piece norm)
    # Render options (also written to the manifest, so the gateway renders the same text).
    item_tokens: bool = True
    history_titles: bool = False
    item_text: bool = False
    item_attributes: tuple[str, ...] = ("year", "genres")
    history_items: int = 10
    # Cold start (evaluation.coldstart): ID dropout renders a share of warm items without their
    # token, as every item created after training reads, so one model learns to rank items
    # from text and from tokens on one score scale. Candidate side and history side apart.
    id_dropout: float = 0.2
    history_id_dropout: float = 0.05
    # The cold-start protocol: this share of the catalogue (seeded) is held out of training
    # entirely: never a target, never a negative, never a token; in histories it is text.
    cold_holdout: float = 0.0
    cold_seed: int = 0
    # Periodic checkpoints and the final validation.
    checkpoint_every_min: float = 3.0
    valid_users: int = 0            # 0: all users (only those the retriever covers are scored)
    blend_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

    def render_options(self) -> RenderOptions:
        return RenderOptions(item_tokens=self.item_tokens, history_titles=self.history_titles,
                             item_text=self.item_text, item_attributes=tuple(self.item_attributes),
                             history_items=self.history_items)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["item_attributes"] = list(self.item_attributes)
        d["blend_grid"] = list(self.blend_grid)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("item_attributes", "blend_grid"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)
