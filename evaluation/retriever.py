"""First-stage retrievers (candidate generators) for offline evaluation and the demo.

Both return ``[(item_id, score), ...]`` best first, never an item of the given history,
with ties broken by item id (numeric ids in numeric order) so runs are reproducible.

``python -m evaluation.retriever`` picks ItemKNN's ``recent`` / ``neighbours`` on the validation
split (HR@50) and prints ItemKNN vs popularity on the test split.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from evaluation.metrics import evaluate
from interactions.movielens import (
    Interaction,
    fetch_movielens,
    id_sort_key,
    leave_one_out,
    load_interactions,
    load_items,
)

# Chosen on the ML-100K validation split by HR@50 (``python -m evaluation.retriever``): recent=3
# with no pruning scored 0.456, recent 2-10 scored 0.43-0.46; all recent items scored 0.33.
DEFAULT_RECENT = 3
DEFAULT_NEIGHBOURS: int | None = None


def _user_items(train: Iterable[Interaction]) -> dict[str, list[Interaction]]:
    by_user: dict[str, list[Interaction]] = {}
    for x in train:
        by_user.setdefault(x.user_id, []).append(x)
    return by_user


class PopRetriever:
    """Most popular items (number of distinct users who rated them in ``train``)."""

    def __init__(self) -> None:
        self._order: list[tuple[str, float]] = []

    def fit(self, train: Iterable[Interaction], items: Iterable[str] = ()) -> PopRetriever:
        """``items`` adds catalogue items absent from ``train`` (score 0, ranked last)."""
        users: dict[str, set[str]] = {i: set() for i in items}
        for x in train:
            users.setdefault(x.item_id, set()).add(x.user_id)
        self._order = sorted(
            ((i, float(len(u))) for i, u in users.items()), key=lambda p: (-p[1], id_sort_key(p[0]))
        )
        return self

    @property
    def items(self) -> list[str]:
        return [i for i, _ in self._order]

    def retrieve(self, history: Sequence[str], k: int = 50, *, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Top-``k`` items not in ``history`` (nor ``exclude``)."""
        skip = set(history) | set(exclude)
        out: list[tuple[str, float]] = []
        for item, score in self._order:
            if len(out) >= k:
                break
            if item not in skip:
                out.append((item, score))
        return out


class ItemKNNRetriever:
    """Item-item collaborative filtering on co-occurrence in users' train histories.

    sim(i, j) = |users(i) & users(j)| / sqrt(|users(i)| * |users(j)|) (cosine on binary
    vectors), optionally pruned to each item's ``neighbours`` most similar items. A user's
    score for j is the sum of sim(h, j) over their ``recent`` most recent known items h.
    Slots left when fewer than ``k`` items have a positive score are filled by popularity
    (those carry score 0.0). Dense numpy: fine for a few thousand items (ML-100K: 1682).
    """

    def __init__(self, recent: int | None = DEFAULT_RECENT) -> None:
        self.recent = recent
        self.neighbours: int | None = None
        self.pop = PopRetriever()
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._sim = np.zeros((0, 0))

    def fit(
        self,
        train: Iterable[Interaction],
        neighbours: int | None = DEFAULT_NEIGHBOURS,
        items: Iterable[str] = (),
    ) -> ItemKNNRetriever:
        """Build the similarity matrix; ``neighbours=None`` keeps every co-occurring item."""
        train = list(train)
        items = list(items)
        self.pop.fit(train, items)
        # Index in tie-break order, so a stable sort on score alone breaks ties by item id.
        self._ids = sorted({x.item_id for x in train} | set(items), key=id_sort_key)
        self._index = {i: n for n, i in enumerate(self._ids)}
        by_user = _user_items(train)
        x = np.zeros((len(by_user), len(self._ids)), dtype=np.float64)
        for row, xs in enumerate(by_user.values()):
            x[row, [self._index[e.item_id] for e in xs]] = 1.0  # binary: repeats count once
        co = x.T @ x
        norm = np.sqrt(np.diag(co))
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = co / np.outer(norm, norm)
        sim[~np.isfinite(sim)] = 0.0
        np.fill_diagonal(sim, 0.0)
        if neighbours is not None and neighbours < sim.shape[1]:
            # Keep each row's top-N (stable sort: ties go to the lower item id).
            order = np.argsort(-sim, axis=1, kind="stable")
            pruned = np.zeros_like(sim)
            rows = np.arange(sim.shape[0])[:, None]
            keep = order[:, :neighbours]
            pruned[rows, keep] = sim[rows, keep]
            sim = pruned
        self._sim = sim
        self.neighbours = neighbours
        return self

    def scores(self, history: Sequence[str], recent: int | None = None) -> np.ndarray:
        """Raw scores over the catalogue (index order), from the ``recent`` most recent
        items of ``history`` (most recent first) that the model knows."""
        recent = self.recent if recent is None else recent
        known = [self._index[h] for h in history if h in self._index]
        if recent is not None:
            known = known[:recent]
        if not known:
            return np.zeros(len(self._ids))
        return self._sim[known].sum(axis=0)

    def retrieve(
        self, history: Sequence[str], k: int = 50, *, recent: int | None = None
    ) -> list[tuple[str, float]]:
        """Top-``k`` items not in ``history``; ``recent`` overrides the instance setting."""
        score = self.scores(history, recent)
        seen = [self._index[h] for h in history if h in self._index]
        score[seen] = -np.inf
        order = np.argsort(-score, kind="stable")
        out = [(self._ids[j], float(score[j])) for j in order[:k] if score[j] > 0.0]
        if len(out) < k:
            out += [(i, 0.0) for i, _ in self.pop.retrieve(history, k - len(out), exclude=[i for i, _ in out])]
        return out


# -- offline evaluation -----------------------------------------------------------------
class TransitionTeacher:
    """A count-based sequential scorer: how often item b followed item a within ``window``
    positions in the users' sequences known before ``upto`` ('valid': train only; 'test':
    train + validation), divided by sqrt(b's count); a list's score for candidate c is the
    decayed sum over the user's ``recent`` most recent items.

    Training distils it (``TrainConfig.distill``): its listwise distribution is a dense target
    where the next-item label has one positive. Evaluation reports it as a reference order."""

    def __init__(self, split, item_ids: Sequence[str], upto: str = "valid", window: int = 3,
                 recent: int = 5, decay: float = 0.7):
        self.index = {i: n for n, i in enumerate(item_ids)}
        n = len(item_ids)
        t = np.zeros((n, n), dtype=np.float32)
        for u in split.users:
            seq = [self.index[i] for i in split.history(u, upto)[::-1] if i in self.index]
            for a in range(len(seq)):
                for b in seq[a + 1:a + 1 + window]:
                    t[seq[a], b] += 1.0
        col = np.sqrt(np.maximum(t.sum(0), 1.0))
        self.t = t / col[None, :]
        self.recent, self.decay = recent, decay

    def scores(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Scores of ``candidates`` for a user whose history is ``history`` (most recent first)."""
        h = [self.index[i] for i in history if i in self.index][:self.recent]
        c = [self.index.get(i, 0) for i in candidates]
        if not h:
            return np.zeros(len(c), np.float32)
        w = self.decay ** np.arange(len(h), dtype=np.float32)
        out = (self.t[np.ix_(h, c)] * w[:, None]).sum(0)
        out[[n for n, i in enumerate(candidates) if i not in self.index]] = 0.0
        return out


def _rankings(retriever, split, upto: str, k: int, **kw) -> dict[str, list[str]]:
    return {u: [i for i, _ in retriever.retrieve(split.history(u, upto), k, **kw)] for u in split.users}


def _main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(".cache/data"))
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args(argv)

    folder = fetch_movielens(args.cache)
    split = leave_one_out(load_interactions(folder))
    catalogue = [i.item_id for i in load_items(folder)]
    ks = (5, 10, 20, args.k)

    # Validation: fit on train only, history = train, target = valid item.
    print(f"validation HR@{args.k} / NDCG@10 ({len(split.valid)} users)")
    best = None
    for nb in (20, 50, 100, 200, None):
        knn = ItemKNNRetriever().fit(split.interactions("valid"), neighbours=nb, items=catalogue)
        row = []
        for recent in (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100, 10_000):
            m = evaluate(_rankings(knn, split, "valid", args.k, recent=recent), split.valid, ks)
            row.append(f"r={recent}:{m[f'hr@{args.k}']:.3f}")
            key = (m[f"hr@{args.k}"], m["ndcg@10"])
            if best is None or key > best[0]:
                best = (key, nb, recent)
        print(f"  neighbours={nb}: " + " ".join(row))
    pop = PopRetriever().fit(split.interactions("valid"), catalogue)
    m = evaluate(_rankings(pop, split, "valid", args.k), split.valid, ks)
    print(f"  pop: HR@{args.k}={m[f'hr@{args.k}']:.3f} NDCG@10={m['ndcg@10']:.4f}")
    (_, _), nb, recent = best
    print(f"chosen: neighbours={nb} recent={recent} (validation HR@{args.k}={best[0][0]:.4f})")

    # Test: refit on train + valid (all known before the test item), history upto='test'.
    known = split.interactions("test")
    results = {
        "pop": evaluate(_rankings(PopRetriever().fit(known, catalogue), split, "test", args.k), split.test, ks),
        "itemknn": evaluate(
            _rankings(ItemKNNRetriever(recent).fit(known, neighbours=nb, items=catalogue), split, "test", args.k),
            split.test, ks,
        ),
    }
    cols = [f"{m}@{k}" for k in ks[:-1] for m in ("hr", "ndcg", "mrr")] + [f"hr@{args.k}", "ndcg@10_covered"]
    print(f"test ({len(split.test)} users)\n{'':8}" + "".join(f"{c:>16}" for c in cols))
    for name, m in results.items():
        print(f"{name:8}" + "".join(f"{m[c]:16.4f}" for c in cols))


if __name__ == "__main__":
    _main()
