"""What a run trains on: the split, the catalogue, the train-fit retriever and the held-out
(cold) items (``TrainingData``), the training positions, and the examples drawn from them
(``ExampleSampler``: history, positive, hard + random negatives)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contract.items import Item
from evaluation.cold_lists import cold_items, warm_interactions
from evaluation.retriever import ItemKNNRetriever, TransitionTeacher
from interactions.movielens import id_sort_key, leave_one_out
from interactions.sources import (
    TIE_RULE,
    InteractionSource,
    MovieLensSource,
    movielens_description,
)
from training.config import TrainConfig


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
    # The source's description (``interactions.sources``), for the manifest.
    source: dict = field(default_factory=dict)
    source_name: str = "movielens"

    @classmethod
    def load(cls, source: InteractionSource | Path, users: Sequence[str] | None = None,
             cold_holdout: float = 0.0, cold_seed: int = 0) -> TrainingData:
        """The leave-one-out split of ``source`` (``interactions.sources``; a folder is
        MovieLens-100K's, ``interactions.movielens.fetch_movielens``); ``users`` restricts it
        to a slice (fast tests); ``cold_holdout`` holds that share of the items out of training
        (``evaluation.cold_lists.cold_items``)."""
        if isinstance(source, (str, Path)):
            source = MovieLensSource(Path(source))
        got = source.load()
        interactions = got.interactions
        if users is not None:
            keep = set(users)
            interactions = [x for x in interactions if x.user_id in keep]
        cold = cold_items([i.item_id for i in got.items], cold_holdout, cold_seed)
        folder = getattr(source, "folder", None) if source.name == "movielens" else None
        data = cls.from_parts(leave_one_out(interactions), got.items, data_dir=folder, cold=cold)
        data.source, data.source_name = dict(got.description), source.name
        return data

    @classmethod
    def from_parts(cls, split, items: Sequence[Item], data_dir: Path | None = None,
                   cold: frozenset[str] = frozenset()) -> TrainingData:
        catalogue = [i.item_id for i in items if i.item_id not in cold]
        knn = ItemKNNRetriever().fit(warm_interactions(split.interactions("valid"), cold), items=catalogue)
        return cls(split, {i.item_id: i for i in items}, knn, knn.pop.items, data_dir, frozenset(cold))

    @property
    def warm_items(self) -> dict[str, Item]:
        """The items training may use as targets, negatives and tokens."""
        return {i: it for i, it in self.items.items() if i not in self.cold}

    def teacher(self) -> TransitionTeacher:
        """The distillation teacher: transition counts of the warm train sequences."""
        return TransitionTeacher(self.split, sorted(self.warm_items, key=id_sort_key), upto="valid")


def describe_data(data: TrainingData) -> dict:
    """The data set and split, as the manifest records them."""
    sp = data.split
    tie = TIE_RULE.get(data.source_name, TIE_RULE["movielens"])
    return {**(data.source or movielens_description()), "source_kind": data.source_name,
            "users": len(sp.users), "items": len(data.items), "train_interactions": len(sp.train),
            "split": f"leave-one-out by timestamp per user, {tie}; last = test, "
                     "second last = validation; all users; no rating threshold",
            "trained_on": "train part only (validation and test items never seen)"}


def training_positions(split, recent_positions: int = 0) -> list[tuple[str, int]]:
    """(user, t) for every position t >= 1 of each user's train sequence (t items before it)."""
    out = []
    for u in split.users:
        n = len(split.history(u, "valid"))
        start = 1 if recent_positions <= 0 else max(1, n - recent_positions)
        out += [(u, t) for t in range(start, n)]
    return out


def example_order(split, cfg: TrainConfig) -> list[tuple[str, int]]:
    """The training positions in the order the run visits them (shuffled with ``cfg.seed``)."""
    order = list(training_positions(split, cfg.recent_positions))
    random.Random(cfg.seed).shuffle(order)
    return order


class ExampleSampler:
    """Turns (user, t) into (history newest-first, positive, negatives), deterministically."""

    def __init__(self, data: TrainingData, cfg: TrainConfig, seed: int):
        self.data = data
        self.cfg = cfg
        self.rng = random.Random(seed)
        self._seq = {u: data.split.history(u, "valid")[::-1] for u in data.split.users}
        self._seen = {u: set(s) for u, s in self._seq.items()}
        self._catalogue = sorted(data.warm_items, key=id_sort_key)

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
