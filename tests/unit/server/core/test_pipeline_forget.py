"""``Pipeline.forget_user``: the store and this gateway's score cache, idempotent.

A stand-in scorer as in test_pipeline.py; the real path: tests/integration/test_forget.py.
"""

import asyncio

import pytest

from server.core.pipeline import Pipeline, PipelineConfig
from server.core.score_cache import ScoreCache
from server.errors import InvalidArgument
from server.features.sqlite import SqliteStore
from server.types import Candidate, Event, Item, RerankRequest
from tests.unit.server.core.test_pipeline import LengthScorer, Models, tokenizer  # noqa: F401


def test_forget_erases_history_and_cached_scores_once(tokenizer, tmp_path):  # noqa: F811
    store = SqliteStore(tmp_path / "s.db")
    scorer = LengthScorer()
    pipe = Pipeline(PipelineConfig(), store, scorer, Models(tokenizer), score_cache=ScoreCache(100))
    cands = (Candidate("a"), Candidate("b"))

    async def body():
        await store.upsert_items([Item("h1", "an extremely long history title with many words"),
                                  Item("a", "x"), Item("b", "y y")])
        cold = await pipe.rerank(RerankRequest("stranger", cands))
        await pipe.record_events([Event("alice", "h1", "click", 1.0), Event("bob", "h1", "click", 1.0)])
        warm = await pipe.rerank(RerankRequest("alice", cands))
        assert [i.score for i in warm.items] != [i.score for i in cold.items]
        calls = len(scorer.calls)
        assert await pipe.forget_user("alice") == (1, 2)  # its event; its 2 cached scores
        after = await pipe.rerank(RerankRequest("alice", cands))
        assert [i.score for i in after.items] == [i.score for i in cold.items]  # no history left
        assert len(scorer.calls) == calls  # the cold text's scores were still cached (stranger's)
        # Her cold request was answered from the cache: nothing was stored on her behalf.
        assert await pipe.forget_user("alice") == (0, 0)
        # The stranger's scores were stored under a text without any history of theirs (no
        # events): nothing of theirs to erase, and the entries stay for every new user.
        assert await pipe.forget_user("stranger") == (0, 0)
        assert pipe.score_cache.stats()["size"] == 2 and not pipe.score_cache._owners
        assert len(await store.recent_events("bob", 10)) == 1
        with pytest.raises(InvalidArgument) as err:
            await pipe.forget_user("")
        assert err.value.field == "user_id"
        await store.close()

    asyncio.run(body())
