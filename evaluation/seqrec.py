"""GRU4Rec: a standard sequential recommender, the reference row for warm items.

Trained on each user's chronological sequence under the project's leave-one-out split
(``upto='valid'``: train items; ``upto='test'``: train + valid items), next-item prediction
at every position with a full softmax over the catalogue. Evaluated like the rest of the
project: every user, all catalogue items ranked, the user's known history masked, top 20,
``evaluation.metrics.evaluate`` at (5, 10, 20).

``python -m evaluation.seqrec`` prints the test figure with the default settings;
``python -m evaluation.seqrec --select`` reruns the validation sweep that chose them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from evaluation.metrics import evaluate
from interactions.movielens import (
    Split,
    Upto,
    fetch_movielens,
    leave_one_out,
    load_interactions,
    load_items,
)

KS = (5, 10, 20)
TOP = 20
# Chosen on the ML-100K validation target with ``python -m evaluation.seqrec --select --epochs 30``
# (1 thread): smoothed valid NDCG@10 peaks at epoch 29 (0.1235; raw 0.121-0.127 over epochs
# 22-30). Sweep (valid NDCG@10, best epoch <= 30): hidden 64 / dropout 0.25: 0.118;
# hidden 128 / dropout 0.25: 0.120 then overfits; hidden 128 / dropout 0.5: 0.127; lr 1e-3: 0.03
# after 4 epochs (too slow for the time budget).
DEFAULT_EPOCHS = 29


@dataclass(frozen=True)
class Config:
    """Model / optimiser settings. ``max_len``: items of context the GRU sees; training cuts
    every sequence into windows of ``max_len`` predictions so no train item is dropped."""

    emb: int = 64
    hidden: int = 128
    dropout: float = 0.5
    lr: float = 5e-3
    batch: int = 128
    max_len: int = 50
    weight_decay: float = 0.0


class _Net(nn.Module):
    """Item embedding -> dropout -> GRU -> linear -> dot with the (tied) item table."""

    def __init__(self, n_items: int, cfg: Config):
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, cfg.emb, padding_idx=0)  # 0 = padding
        nn.init.normal_(self.emb.weight, std=cfg.emb**-0.5)
        with torch.no_grad():
            self.emb.weight[0].zero_()
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.emb, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.emb)

    def states(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded item indices -> (B, T, emb) next-item query vectors."""
        h, _ = self.gru(self.drop(self.emb(seqs)))
        return self.out(h)

    def logits(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self.emb.weight[1:].T  # catalogue item i has index i + 1


def _windows(seq: Sequence[int], max_len: int) -> list[list[int]]:
    """Chronological ``seq`` -> windows of at most ``max_len + 1`` items, the last ending at
    the newest item, consecutive ones sharing one item so each target is predicted once."""
    out = []
    end = len(seq)
    while end >= 2:
        out.append(list(seq[max(0, end - max_len - 1):end]))
        end -= max_len
    return out


def _pad(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with 0 -> (B, T) tensor and the lengths."""
    t = max(1, max(len(r) for r in rows))
    x = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return x, torch.as_tensor([len(r) for r in rows])


class Gru4Rec:
    """A trained GRU4Rec over ``catalogue``; ranks every catalogue item for a history."""

    def __init__(self, net: _Net, catalogue: Sequence[str], cfg: Config, epochs: int, train_seconds: float):
        self.net = net.eval()
        self.catalogue = list(catalogue)
        self.index = {item: i for i, item in enumerate(self.catalogue)}
        self.cfg = cfg
        self.epochs = epochs
        self.train_seconds = train_seconds

    def _seq(self, history_newest_first: Sequence[str]) -> list[int]:
        """Newest-first ids -> chronological indices (+1), last ``max_len``, unknown ids dropped."""
        known = [self.index[i] + 1 for i in history_newest_first if i in self.index]
        return known[: self.cfg.max_len][::-1]

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """(U, n_items) scores over the catalogue, one row per newest-first history. An
        empty history is scored from the GRU's initial (zero) state."""
        seqs = [self._seq(h) for h in histories]
        x, lengths = _pad(seqs)
        q = self.net.states(x)
        last = q[torch.arange(len(seqs)), (lengths - 1).clamp(min=0)]
        empty = lengths == 0
        if empty.any():
            last[empty] = self.net.out(torch.zeros(1, self.cfg.hidden))
        return self.net.logits(last)

    def rank_many(self, histories: Sequence[Sequence[str]], k: int,
                  excludes: Sequence[Iterable[str]] | None = None, batch: int = 256) -> list[list[str]]:
        """``rank`` for many users at once (batched through the GRU)."""
        out: list[list[str]] = []
        for s in range(0, len(histories), batch):
            hs = histories[s:s + batch]
            sc = self.scores(hs)
            exs = excludes[s:s + batch] if excludes is not None else [()] * len(hs)
            for row, ex in zip(sc, exs):
                idx = [self.index[i] for i in ex if i in self.index]
                if idx:
                    row[idx] = float("-inf")
                # stable sort: ties keep catalogue order, so rankings are reproducible
                order = torch.sort(row, descending=True, stable=True).indices[:k]
                out.append([self.catalogue[j] for j in order.tolist() if row[j] != float("-inf")])
        return out

    def rank(self, history_newest_first: Sequence[str], k: int, exclude: Iterable[str] = ()) -> list[str]:
        """Top-``k`` catalogue items after ``history_newest_first``, never one in ``exclude``."""
        return self.rank_many([history_newest_first], k, [exclude])[0]


def _sequences(split: Split, catalogue: Sequence[str], upto: Upto) -> list[list[int]]:
    index = {item: i + 1 for i, item in enumerate(catalogue)}
    return [[index[i] for i in reversed(split.history(u, upto)) if i in index] for u in split.users]


def fit_gru4rec(split: Split, catalogue: list[str], upto: Upto, *, seed: int = 0,
                epochs: int = DEFAULT_EPOCHS, budget_s: float | None = None,
                config: Config = Config(), log: Callable[[str], object] = print,
                on_epoch: Callable[[int, Gru4Rec], object] | None = None) -> Gru4Rec:
    """Train GRU4Rec on every user's ``split.history(u, upto)`` (chronological).

    Stops after ``epochs`` or after the first epoch that ends past ``budget_s`` seconds
    (then the result depends on the machine's speed). Deterministic for a given ``seed``,
    thread count and torch build; the global torch RNG is left as it was. ``on_epoch(e,
    model)`` is called after every epoch (the model is in eval mode during the call).
    """
    cfg = config
    rows = [w for s in _sequences(split, catalogue, upto) for w in _windows(s, cfg.max_len)]
    if not rows:
        raise ValueError(f"no user has two or more items up to {upto!r}")
    t0 = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _Net(len(catalogue), cfg)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        done = 0
        for epoch in range(1, epochs + 1):
            net.train()
            perm = torch.randperm(len(rows), generator=gen).tolist()
            total, n = 0.0, 0
            for s in range(0, len(perm), cfg.batch):
                x, lengths = _pad([rows[i] for i in perm[s:s + cfg.batch]])
                inp, tgt = x[:, :-1], x[:, 1:]
                mask = tgt > 0  # right padding: positions past a window's end
                q = net.states(inp)[mask]
                loss = loss_fn(net.logits(q), tgt[mask] - 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * int(mask.sum())
                n += int(mask.sum())
            done = epoch
            elapsed = time.monotonic() - t0
            log(f"[gru4rec] epoch {epoch}/{epochs} loss {total / n:.4f} ({elapsed:.1f}s)")
            if on_epoch is not None:
                net.eval()
                on_epoch(epoch, Gru4Rec(net, catalogue, cfg, epoch, elapsed))
            if budget_s is not None and elapsed > budget_s:
                log(f"[gru4rec] budget {budget_s:.0f}s reached after epoch {epoch}")
                break
    return Gru4Rec(net, catalogue, cfg, done, time.monotonic() - t0)


def evaluate_model(model: Gru4Rec, split: Split, upto: Upto) -> dict[str, float]:
    """The leave-one-out figure: every user with a ``upto`` target, all items ranked, the
    user's known history (``split.history(u, upto)``) masked, top 20."""
    targets = split.valid if upto == "valid" else split.test
    users = [u for u in split.users if u in targets]
    hist = [split.history(u, upto) for u in users]
    ranked = model.rank_many(hist, TOP, hist)
    return evaluate(dict(zip(users, ranked)), {u: targets[u] for u in users}, KS)


def reference_metrics(split: Split, catalogue: list[str], upto: Upto = "test", **kw) -> dict:
    """Fit on ``upto`` (``fit_gru4rec`` keyword arguments in ``kw``) and evaluate on that
    target: ``evaluate()``'s dict plus model, epochs, train_seconds and the settings."""
    model = fit_gru4rec(split, catalogue, upto, **kw)
    out: dict = dict(evaluate_model(model, split, upto))
    out.update(model="GRU4Rec", epochs=model.epochs, train_seconds=round(model.train_seconds, 1),
               seed=kw.get("seed", 0), upto=upto, **asdict(model.cfg))
    return out


def select_epochs(split: Split, catalogue: list[str], max_epochs: int, *, seed: int = 0,
                  config: Config = Config(), log: Callable[[str], object] = print) -> tuple[int, list[dict]]:
    """Train once on ``upto='valid'`` for ``max_epochs`` and score validation NDCG@10 after
    every epoch: (best epoch, per-epoch metrics). The best epoch maximises NDCG@10 averaged
    with its neighbours (epoch-to-epoch noise is about +-0.005), the earlier one on ties."""
    curve: list[dict] = []

    def score(epoch: int, model: Gru4Rec) -> None:
        m = evaluate_model(model, split, "valid")
        curve.append({"epoch": epoch, **m})
        log(f"[gru4rec]   valid ndcg@10 {m['ndcg@10']:.4f} hr@10 {m['hr@10']:.4f}")

    fit_gru4rec(split, catalogue, "valid", seed=seed, epochs=max_epochs, config=config, log=log, on_epoch=score)
    v = [c["ndcg@10"] for c in curve]
    smooth = [sum(v[max(0, i - 1):i + 2]) / len(v[max(0, i - 1):i + 2]) for i in range(len(v))]
    best = max(range(len(v)), key=lambda i: (smooth[i], -i))
    return best + 1, curve


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(".cache/data"))
    ap.add_argument("--upto", choices=("valid", "test"), default="test")
    ap.add_argument("--select", action="store_true", help="validation curve over --epochs; no test")
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    for f, v in asdict(Config()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = Config(**{f: getattr(a, f) for f in asdict(Config())})
    folder = fetch_movielens(a.data)
    split = leave_one_out(load_interactions(folder))
    catalogue = [i.item_id for i in load_items(folder)]
    if a.select:
        best, curve = select_epochs(split, catalogue, a.epochs, seed=a.seed, config=cfg)
        b = curve[best - 1]
        print(json.dumps({"best_epoch": best, "valid_ndcg@10": b["ndcg@10"], "valid_hr@10": b["hr@10"],
                          "valid_ndcg@10_by_epoch": [round(c["ndcg@10"], 4) for c in curve], **asdict(cfg)}))
    else:
        print(json.dumps(reference_metrics(split, catalogue, a.upto, seed=a.seed, epochs=a.epochs,
                                           budget_s=a.budget_s, config=cfg)))


if __name__ == "__main__":
    main()
