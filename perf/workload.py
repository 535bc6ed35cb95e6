"""Realistic requests for every benchmark: MovieLens users and catalog items, rendered and
tokenized exactly like the gateway does (store history -> renderer -> PairTokenizer)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.settings import PROJECT_ROOT


@dataclass(frozen=True)
class Request:
    user_id: str
    item_ids: tuple[str, ...]


@dataclass
class Prepared:
    """One request with the texts and token ids the gateway would produce for it."""

    request: Request
    user_text: str
    item_texts: list[str]
    arrays: dict[str, np.ndarray]  # name -> int64 [n, bucket]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(self.user_text, t) for t in self.item_texts]

    @property
    def seq_len(self) -> int:
        return next(iter(self.arrays.values())).shape[1]


def movielens_folder() -> Path:
    from interactions.movielens import fetch_movielens

    return fetch_movielens(PROJECT_ROOT / ".cache" / "data", log=lambda *a: None)


def load_store(db_path: Path, log=print) -> Path:
    """A SQLite feature store with all MovieLens-100K items and ratings (upto='all')."""
    from interactions.movielens import leave_one_out, load_interactions
    from interactions.to_store import load_into_store
    from server.features import open_store

    folder = movielens_folder()
    split = leave_one_out(load_interactions(folder))

    async def load():
        store = open_store(f"sqlite:///{db_path}", history_len=20)
        try:
            await load_into_store(store, folder, split, upto="all", log=lambda *a: None)
        finally:
            await store.close()

    asyncio.run(load())
    log(f"==> MovieLens-100K loaded into {db_path}")
    return db_path


def make_requests(n: int, candidates: int, *, seed: int = 0) -> list[Request]:
    """``n`` requests: random users, ``candidates`` distinct random catalog items each."""
    from interactions.movielens import leave_one_out, load_interactions, load_items

    folder = movielens_folder()
    items = sorted(it.item_id for it in load_items(folder))
    users = leave_one_out(load_interactions(folder)).users
    rng = random.Random(seed)
    return [Request(rng.choice(users), tuple(rng.sample(items, min(candidates, len(items)))))
            for _ in range(n)]


class GatewayTexts:
    """Mirror of ``server.core.pipeline`` up to tokenization, on the same store and version."""

    def __init__(self, db_path: Path, version_dir: Path, *, history_len: int = 20, history_in_text: int = 10):
        from contract.model_spec import Manifest
        from contract.tokenize import load_tokenizer

        self.db_path = db_path
        self.manifest = Manifest.read(Path(version_dir) / "manifest.json")
        self.tokenizer = load_tokenizer(Path(version_dir) / "tokenizer.json", self.manifest.spec)
        self.history_len = history_len
        self.history_in_text = history_in_text
        from contract import render

        if hasattr(render, "Renderer") and hasattr(render.Renderer, "for_model"):
            r = render.Renderer.for_model(self.manifest, self.tokenizer)
            self.render_user, self.render_item = r.user, r.item
        else:
            self.render_user, self.render_item = render.render_user, render.render_item

    def prepare(self, requests: list[Request]) -> list[Prepared]:
        from server.features import open_store

        async def run():
            store = open_store(f"sqlite:///{self.db_path}", history_len=self.history_len)
            out = []
            try:
                for req in requests:
                    events = await store.recent_events(req.user_id, self.history_len)
                    hist = list(dict.fromkeys(e.item_id for e in events))[:self.history_in_text]
                    items = await store.get_items(list(dict.fromkeys(hist + list(req.item_ids))))
                    user_text = self.render_user([items[i] for i in hist if i in items], "",
                                                 max_items=self.history_in_text)
                    texts = [self.render_item(items[i]) for i in req.item_ids if i in items]
                    batch = self.tokenizer.encode(user_text, texts)
                    out.append(Prepared(req, user_text, texts, batch.arrays))
            finally:
                await store.close()
            return out

        return asyncio.run(run())


def length_stats(prepared: list[Prepared]) -> dict:
    """Real pair lengths vs the bucket each request is padded to (the padding the engine sees)."""
    real = np.concatenate([p.arrays["attention_mask"].sum(1) for p in prepared]) if prepared else np.zeros(1)
    buckets = [p.seq_len for p in prepared]
    padded = sum(p.seq_len * len(p.item_texts) for p in prepared)
    return {
        "pairs": int(len(real)),
        "tokens_p50": float(np.percentile(real, 50)), "tokens_p95": float(np.percentile(real, 95)),
        "tokens_max": int(real.max()),
        "buckets": {int(b): buckets.count(b) for b in sorted(set(buckets))},
        "padding_share": float(1 - real.sum() / max(padded, 1)),
    }
