"""The model being fine-tuned: the base model loaded (fewer layers, dropout off), item-ID
tokens added to its vocabulary and initialised (title word pieces + collaborative factors),
the added embedding rows trained as their own parameter, and the optimizer's groups.

This module is torch code: it needs the export extra (torch, transformers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn
from transformers import AutoModelForSequenceClassification

from contract.items import Item
from contract.render import Renderer
from export.base_model import HEAD_SEED, default_base_model
from interactions.movielens import id_sort_key
from training.config import TrainConfig
from training.data import TrainingData


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
    n_new = _add_item_tokens(model, tokenizer, old_vocab, cfg, items, split) if cfg.item_tokens else 0
    log(f"train: model {base.name} layers={model.config.num_hidden_layers} vocab {old_vocab}+{n_new} "
        f"params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M")
    return model, tokenizer, old_vocab


def _add_item_tokens(model, tokenizer: Tokenizer, old_vocab: int, cfg: TrainConfig, items: dict[str, Item],
                     split) -> int:
    """Adds a token per item (``[i50]``) and initialises its embedding (``cfg.init_tokens``):
    the mean of its title's word pieces, or random at the word pieces' scale, plus with ``+cf``
    a collaborative direction from the train split. Returns how many tokens were added."""
    fmt = cfg.render_options().token_format
    ids = sorted(items, key=id_sort_key)
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
    return n_new


class SplitEmbedding:
    """Trains the added rows of the word-embedding matrix as their own parameter (own
    learning rate; the pretrained rows can stay frozen), and writes them back for export."""

    def __init__(self, model, old_vocab: int, freeze_base: bool):
        emb = model.get_input_embeddings()
        self.emb = emb
        self.old_vocab = old_vocab
        weight = emb.weight.data
        self.base = nn.Parameter(weight[:old_vocab].clone(), requires_grad=not freeze_base)
        self.new = nn.Parameter(weight[old_vocab:].clone())
        self._orig_forward = emb.forward
        emb.weight.requires_grad_(False)
        emb.forward = self._lookup

    def _lookup(self, ids):
        # Two lookups and a select, not one lookup in cat([base, new]): that cat copies the
        # whole vocabulary (tens of MB) on every forward pass.
        padding_idx, old_vocab = self.emb.padding_idx, self.old_vocab
        if not self.new.shape[0]:
            return nn.functional.embedding(ids, self.base, padding_idx)
        is_new = (ids >= old_vocab).unsqueeze(-1)
        old = nn.functional.embedding(ids.clamp(max=old_vocab - 1), self.base, padding_idx)
        added = nn.functional.embedding((ids - old_vocab).clamp(min=0), self.new)
        return torch.where(is_new, added, old)

    def params(self):
        return self.base, self.new

    def merge(self) -> None:
        with torch.no_grad():
            self.emb.weight.data = torch.cat([self.base.data, self.new.data]).contiguous()
        self.emb.forward = self._orig_forward


def build_optimizer(model, split_emb: SplitEmbedding, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: the body at ``lr``, the new head and the new item
    tokens at their multiples (no weight decay on tokens), the word pieces if not frozen.
    Each group keeps its ``base_lr`` for the schedule."""
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
    return optimizer


@dataclass
class Trainee:
    """The model being fine-tuned, its tokenizer (item tokens added), the trainable split of
    its word embeddings, and its optimizer."""

    model: object
    tokenizer: Tokenizer
    split_emb: SplitEmbedding
    optimizer: torch.optim.Optimizer

    @property
    def params(self) -> list:
        """Every parameter the optimizer updates (gradient clipping runs over them)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def prepare_model(cfg: TrainConfig, data: TrainingData, log: Callable[[str], object] = print) -> Trainee:
    """The base model with tokens for the warm items only (a held-out item must read as every
    new item does), its split embedding and its optimizer."""
    model, tokenizer, old_vocab = build_model(cfg, data.warm_items, log, split=data.split)
    split_emb = SplitEmbedding(model, old_vocab, cfg.freeze_word_embeddings)
    return Trainee(model, tokenizer, split_emb, build_optimizer(model, split_emb, cfg))
