"""The pipeline on a shared-prefix version: the same ``encode(user_text, item_texts)`` gives a
``PrefixBatch`` and the scorer one score per candidate; the score cache stays valid because a
candidate's score depends only on the user text and its own text (the isolation property)."""

import asyncio
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from contract.model_spec import Manifest, ModelSpec
from contract.shared_prefix import PREFIX, PrefixBatch, PrefixTokenizer
from server.core.pipeline import Pipeline, PipelineConfig
from server.core.score_cache import ScoreCache
from server.features.sqlite import SqliteStore
from server.types import Candidate, Event, Item, RerankRequest
from tests.fixtures import TOKENIZER_JSON

# Rows of 32 tokens at most: a few candidates per row, so requests span several rows.
SPEC = dataclasses.replace(ModelSpec.shared_prefix(), seq_buckets=(16, 32), max_batch_size=2)


@pytest.fixture(scope="module")
def tokenizer():
    return PrefixTokenizer.from_file(TOKENIZER_JSON, SPEC)


class IsolatedScorer:
    """Stands in for TritonScorer + a shared-prefix model: a token's score depends on the
    prefix and its own candidate's tokens only (what the graph lets it attend to)."""

    def __init__(self):
        self.calls = []

    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        assert isinstance(batch, PrefixBatch)
        self.calls.append(len(batch.first_token))
        ids, ci = batch.input_ids, batch.cand_index
        out = np.zeros(ids.shape, np.float32)
        for r in range(len(batch)):
            prefix = float(ids[r][ci[r] == PREFIX].sum())
            for k in set(ci[r][ci[r] > PREFIX].tolist()):
                own = ids[r][ci[r] == k]
                out[r][ci[r] == k] = np.sin(prefix * 1e-3) + float((own * np.arange(1, len(own) + 1)).sum())
        return batch.scores(out)


class Models:
    def __init__(self, tokenizer):
        self.current = SimpleNamespace(name="reranker", version="3", tokenizer=tokenizer, spec=tokenizer.spec,
                                       manifest=Manifest(spec=tokenizer.spec, base_model="x"))

    def require(self, user_id: str = ""):
        return self.current


def run(coro):
    return asyncio.run(coro)


def make(tokenizer, tmp_path, cache=0):
    store = SqliteStore(tmp_path / "s.db")
    scorer = IsolatedScorer()
    return Pipeline(PipelineConfig(), store, scorer, Models(tokenizer), score_cache=ScoreCache(cache)), store, scorer


CANDS = tuple(Candidate(f"x{i}", text=f"title {i} " + "word " * (i % 4)) for i in range(12))


def test_a_request_spanning_several_rows_scores_like_one_candidate_at_a_time(tokenizer, tmp_path):
    pipe, store, scorer = make(tokenizer, tmp_path)
    run(store.upsert_items([Item("h", "a history item")]))
    run(store.record_events([Event("u", "h", "click", 1.0)]))
    assert len(tokenizer.encode("user", [c.text for c in CANDS])) > 1  # several rows
    together = {i.item_id: i.score for i in run(pipe.rerank(RerankRequest("u", CANDS))).items}
    for c in CANDS[:5]:
        (alone,) = run(pipe.rerank(RerankRequest("u", (c,)))).items
        assert alone.score == pytest.approx(together[c.item_id], abs=1e-6)
    order = [i.item_id for i in run(pipe.rerank(RerankRequest("u", CANDS))).items]
    assert order == sorted(together, key=lambda k: (-together[k], k))


def test_the_score_cache_holds_for_shared_prefix_scores(tokenizer, tmp_path):
    pipe, _, scorer = make(tokenizer, tmp_path, cache=1000)
    first = run(pipe.rerank(RerankRequest("u", CANDS[:6])))
    second = run(pipe.rerank(RerankRequest("u", CANDS[3:9])))
    assert scorer.calls == [6, 3]  # only the new candidates were laid out and scored
    (tmp_path / "fresh").mkdir()
    fresh, _, _ = make(tokenizer, tmp_path / "fresh")  # no cache: every candidate computed
    ref = {i.item_id: i.score for i in run(fresh.rerank(RerankRequest("u", CANDS[3:9]))).items}
    assert {i.item_id: i.score for i in second.items} == pytest.approx(ref, abs=1e-6)
    assert {i.item_id: i.score for i in first.items if i.item_id in ref} == pytest.approx(
        {k: v for k, v in ref.items() if k in {c.item_id for c in CANDS[:6]}}, abs=1e-6)
