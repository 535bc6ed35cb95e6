"""Pipeline logic with an in-memory SQLite store and a stand-in scorer.

The scorer fake is fine here: the real Triton path has its own integration tests
(tests/integration/test_gateway.py).
"""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from contract.blend import Blend
from contract.model_spec import Manifest, ModelSpec
from contract.tokenize import PairTokenizer
from server.core.pipeline import Pipeline, PipelineConfig
from server.core.score_cache import ScoreCache
from server.errors import DeadlineExceeded, InvalidArgument, Unavailable
from server.features.sqlite import SqliteStore
from server.types import (
    Candidate,
    Event,
    Item,
    RequestContext,
    RerankRequest,
    ScoredFrom,
)
from tests.fixtures import TOKENIZER_JSON


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny BERT-shaped tokenizer (committed, ``tests/fixtures/tokenizer``): the pipeline
    needs a real tokenizer, not MiniLM's vocabulary, so these run on the serving-only install."""
    return PairTokenizer.from_file(TOKENIZER_JSON, ModelSpec(max_batch_size=4))


class LengthScorer:
    """Score = number of real tokens: deterministic, and sensitive to the rendered text."""

    def __init__(self):
        self.calls = []

    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        self.calls.append((len(batch), timeout_s))
        return batch.arrays["attention_mask"].sum(axis=1).astype(np.float32)


class Models:
    def __init__(self, tokenizer):
        self.current = SimpleNamespace(name="reranker", version="7", tokenizer=tokenizer,
                                       spec=tokenizer.spec,
                                       manifest=Manifest(spec=tokenizer.spec, base_model="x"))

    def require(self, user_id=""):
        if self.current is None:
            raise Unavailable("no model")
        return self.current


def make(tokenizer, tmp_path, **cfg):
    store = SqliteStore(tmp_path / "s.db")
    scorer = LengthScorer()
    pipe = Pipeline(PipelineConfig(**cfg), store, scorer, Models(tokenizer))
    return pipe, store, scorer


def run(coro):
    return asyncio.run(coro)


def test_orders_by_score_then_id_and_reports_model(tokenizer, tmp_path):
    pipe, store, scorer = make(tokenizer, tmp_path)
    run(store.upsert_items([Item("a", "short"), Item("b", "a much longer title here"), Item("c", "short")]))
    resp = run(pipe.rerank(RerankRequest("u", (Candidate("c"), Candidate("a"), Candidate("b")))))
    assert [i.item_id for i in resp.items] == ["b", "a", "c"]  # a/c tie broken by id
    assert resp.model_version == "7" and [i.rank for i in resp.items] == [1, 2, 3]


def test_the_pipeline_sends_all_pairs_in_one_batch(tokenizer, tmp_path):
    pipe, store, scorer = make(tokenizer, tmp_path)
    # 10 pairs against max_batch_size 4: chunking is TritonScorer's; the pipeline sends one batch.
    cands = tuple(Candidate(f"x{i}", text=f"title {i}") for i in range(10))
    resp = run(pipe.rerank(RerankRequest("u", cands)))
    assert len(resp.items) == 10 and scorer.calls[0][0] == 10


def test_history_and_cold_start_context_reach_the_model_input(tokenizer, tmp_path):
    pipe, store, _ = make(tokenizer, tmp_path)
    run(store.upsert_items([Item("h1", "an extremely long history title with many words"), Item("a", "x")]))
    cold = run(pipe.rerank(RerankRequest("u", (Candidate("a"),)))).items[0].score
    session = run(pipe.rerank(RerankRequest("u", (Candidate("a"),),
                                            context=RequestContext(session_item_ids=("h1",))))).items[0].score
    run(store.record_events([Event("u", "h1", "click", 1.0)]))
    warm = run(pipe.rerank(RerankRequest("u", (Candidate("a"),)))).items[0].score
    assert session > cold and warm == session


def test_unscored_items_go_last_and_top_n_cuts(tokenizer, tmp_path):
    pipe, store, _ = make(tokenizer, tmp_path)
    run(store.upsert_items([Item("a", "x")]))
    resp = run(pipe.rerank(RerankRequest("u", (Candidate("ghost"), Candidate("a"), Candidate("t", text="inline")))))
    assert resp.items[-1].item_id == "ghost" and resp.items[-1].unscored
    resp = run(pipe.rerank(RerankRequest("u", (Candidate("ghost"), Candidate("a")), top_n=1)))
    assert [i.item_id for i in resp.items] == ["a"]


def test_deadline_is_passed_down_and_enforced(tokenizer, tmp_path):
    pipe, store, scorer = make(tokenizer, tmp_path)
    run(pipe.rerank(RerankRequest("u", (Candidate("t", text="x"),), timeout_s=5.0)))
    assert 0 < scorer.calls[-1][1] <= 5.0
    with pytest.raises(DeadlineExceeded):
        run(pipe.rerank(RerankRequest("u", (Candidate("t", text="x"),), timeout_s=0.0)))


def test_no_model_is_unavailable_and_bad_input_is_invalid(tokenizer, tmp_path):
    # on_model_failure="fail": the error statuses (degraded mode: tests/unit/server/core/test_fallback.py).
    pipe, _, _ = make(tokenizer, tmp_path, on_model_failure="fail")
    with pytest.raises(InvalidArgument):
        run(pipe.rerank(RerankRequest("", (Candidate("a"),))))
    pipe.models.current = None
    with pytest.raises(Unavailable):
        run(pipe.rerank(RerankRequest("u", (Candidate("a"),))))


def test_a_shed_request_gets_the_fallback_in_degraded_mode_and_resource_exhausted_in_fail_mode(tokenizer, tmp_path):
    """Admission (its own tests: test_admission.py) sheds every request here: the queue ahead
    would make each one miss its deadline."""
    from server.core.admission import Admission
    from server.errors import LoadShed, Overloaded

    class Shedding(Admission):
        def slot(self, budget_s=None):
            self.shed += 1
            raise LoadShed("load shed: test")

    req = RerankRequest("u", (Candidate("a", retrieval_score=0.1), Candidate("b", retrieval_score=0.9)))
    for mode in ("degrade", "fail"):
        pipe, store, scorer = make(tokenizer, tmp_path, on_model_failure=mode)
        run(store.upsert_items([Item("a", "x"), Item("b", "y")]))
        pipe.admission = Shedding(10)
        if mode == "fail":
            with pytest.raises(Overloaded, match="load shed"):
                run(pipe.rerank(req))
            continue
        resp = run(pipe.rerank(req))
        assert resp.degraded_reason == "overloaded" and [i.item_id for i in resp.items] == ["b", "a"]
        assert scorer.calls == [] and pipe.degraded["overloaded"] == 1 and pipe.admission.in_flight == 0


def test_event_types_with_zero_weight_stay_out_of_history(tokenizer, tmp_path):
    pipe, store, _ = make(tokenizer, tmp_path, event_weights={"view": 0.0})
    run(store.upsert_items([Item("h1", "an extremely long history title with many words"), Item("a", "x")]))
    cold = run(pipe.rerank(RerankRequest("u", (Candidate("a"),)))).items[0].score
    run(store.record_events([Event("u", "h1", "view", 1.0)]))
    assert run(pipe.rerank(RerankRequest("u", (Candidate("a"),)))).items[0].score == cold
    run(store.record_events([Event("u", "h1", "click", 2.0)]))
    assert run(pipe.rerank(RerankRequest("u", (Candidate("a"),)))).items[0].score > cold


def test_score_cache_skips_the_engine_for_repeated_pairs(tokenizer, tmp_path):
    from server.core.score_cache import ScoreCache

    store = SqliteStore(tmp_path / "s.db")
    scorer = LengthScorer()
    pipe = Pipeline(PipelineConfig(), store, scorer, Models(tokenizer), score_cache=ScoreCache(100))
    req = RerankRequest("u", (Candidate("a", text="first"), Candidate("b", text="second")))
    first = run(pipe.rerank(req))
    second = run(pipe.rerank(RerankRequest("u", req.candidates + (Candidate("c", text="third"),))))
    assert [len_ for len_, _ in scorer.calls] == [2, 1]  # only the new pair went to the engine
    assert {i.item_id: i.score for i in first.items} == {i.item_id: i.score for i in second.items if i.item_id != "c"}


def served_with_blend(tokenizer, version: str, blend: Blend | None):
    """A freshly loaded served version whose manifest recommends ``blend``."""
    return SimpleNamespace(name="reranker", version=version, tokenizer=tokenizer, spec=tokenizer.spec,
                           manifest=Manifest(spec=tokenizer.spec, base_model="x", blend=blend))


MODEL_BLEND = Blend(name="model_blend", model_weight=0.2, retrieval_weight=0.8)


def test_model_recommended_blend_applies_when_rules_set_none(tokenizer, tmp_path):
    pipe, store, _ = make(tokenizer, tmp_path)
    # Scores = token counts: "bb" items are longer; retrieval favours the short one.
    cands = (Candidate("a", 10.0, text="short"), Candidate("b", 0.0, text="a much longer item title here"))
    assert run(pipe.rerank(RerankRequest("u", cands))).items[0].item_id == "b"  # model order
    pipe.models.current = served_with_blend(tokenizer, "8", MODEL_BLEND)  # a new version loads
    for explain in (False, True):  # the columnar path and the rules engine
        resp = run(pipe.rerank(RerankRequest("u", cands, explain=explain)))
        assert resp.items[0].item_id == "a" and resp.model_version == "8"
    assert resp.items[0].explanation.adjustments[0][0] == "model_blend"


BLEND_RULES = """
rule_sets:
  default:
    overridable: [pins]
  own:
    blend: {model_weight: 1, retrieval_weight: 0}
"""


def test_the_model_blend_is_resolved_once_per_version_and_rule_set(tokenizer, tmp_path, monkeypatch):
    import server.core.pipeline as pipeline_mod
    from server.rules import RulesProvider

    rules = tmp_path / "rules.yaml"
    rules.write_text(BLEND_RULES)
    models = Models(tokenizer)
    models.current = served_with_blend(tokenizer, "8", MODEL_BLEND)
    pipe = Pipeline(PipelineConfig(), SqliteStore(tmp_path / "s.db"), LengthScorer(), models,
                    rules=RulesProvider(rules))
    seen = []
    real = pipeline_mod.apply_rules
    monkeypatch.setattr(pipeline_mod, "apply_rules", lambda rs, *a, **k: seen.append(rs) or real(rs, *a, **k))

    def ruleset(**kw):
        run(pipe.rerank(RerankRequest("u", (Candidate("a", 1.0, text="x"),), explain=True, **kw)))
        return seen[-1]

    first, again = ruleset(), ruleset()
    assert first.blend == MODEL_BLEND and again is first  # one replace, reused
    pinned = {"pins": "[{item_id: a, position: 1}]"}
    overridden = ruleset(rule_overrides=pinned)
    assert overridden.blend == MODEL_BLEND and overridden.pins and ruleset(rule_overrides=pinned) is overridden
    assert ruleset(rule_set="own").blend.name != "model_blend"  # a rule set's own blend wins
    models.current = served_with_blend(tokenizer, "9", None)  # a version without a blend
    assert ruleset().blend is None
    models.current = served_with_blend(tokenizer, "10", Blend(name="model_blend", retrieval_weight=0.5))
    assert ruleset().blend.retrieval_weight == 0.5  # each version its own


def test_timings_name_the_stages(tokenizer, tmp_path):
    pipe, _, _ = make(tokenizer, tmp_path)
    resp = run(pipe.rerank(RerankRequest("u", (Candidate("a", text="x"),))))
    assert list(resp.timings_ms) == ["validate", "features", "tokenize", "infer", "rules", "total"]
    assert all(ms >= 0 for ms in resp.timings_ms.values())


def test_an_empty_item_cache_is_used_not_skipped(tokenizer, tmp_path):
    # Regression: ``items or store`` treated a fresh (empty, hence falsy) ItemCache as absent.
    from server.features.cache import ItemCache

    store = SqliteStore(tmp_path / "c.db")
    cache = ItemCache(store, 100)
    pipe = Pipeline(PipelineConfig(), store, LengthScorer(), Models(tokenizer), items=cache)

    async def go():
        await store.upsert_items([Item("1", title="One"), Item("2", title="Two")])
        req = RerankRequest(user_id="u", candidates=[Candidate("1"), Candidate("2")])
        await pipe.rerank(req)
        await pipe.rerank(req)
        await store.close()

    run(go())
    assert cache.stats()["misses"] == 2 and cache.stats()["hits"] == 2


# --- scored_from: the item's trained ID token, or its text only -------------------------------

TOKENS = ("[i1]", "[i50]")  # the faked trained item tokens
RULES = """
rule_sets:
  boosted:
    boosts: [{name: b, when: {attribute: genres, equals: Drama}, add: 1}]
"""


@pytest.fixture(scope="module")
def token_tokenizer(tmp_path_factory):
    """The test tokenizer plus two item-ID tokens, as ``rerankd train`` adds them to MiniLM's."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    tok.add_tokens([AddedToken(t, normalized=True) for t in TOKENS])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return PairTokenizer.from_file(path, ModelSpec(max_batch_size=4))


class RecordingScorer(LengthScorer):
    def __init__(self):
        super().__init__()
        self.input_ids = []

    async def score(self, batch, spec, version, timeout_s=None, headers=None):
        self.input_ids.append(batch.arrays["input_ids"])
        return await super().score(batch, spec, version, timeout_s, headers)


def token_pipeline(tokenizer, tmp_path):
    """A pipeline serving a version whose manifest asks for item tokens (like a trained one)."""
    from server.rules import RulesProvider

    store = SqliteStore(tmp_path / "s.db")
    models = Models(tokenizer)
    models.current.manifest.render = {"item_tokens": True}
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    scorer = RecordingScorer()
    return Pipeline(PipelineConfig(), store, scorer, models, rules=RulesProvider(rules)), store, scorer


COLD = (Candidate("1"), Candidate("new"), Candidate("t", text="an inline title"),
        Candidate("ghost"), Candidate("50", text="Star Wars"))
EXPECTED = {
    "1": ScoredFrom.ID_TOKEN,     # catalogue item with a trained token
    "new": ScoredFrom.TEXT,       # catalogue item added after training: no token
    "t": ScoredFrom.TEXT,         # inline text, not in the catalogue
    "ghost": ScoredFrom.UNSPECIFIED,  # neither: not scored
    "50": ScoredFrom.ID_TOKEN,    # inline text whose id has a trained token: rendered with it
}


@pytest.mark.parametrize("path", ["columnar", "engine", "explain"])
def test_scored_from_says_whether_the_model_read_the_id_token_or_text_only(token_tokenizer, tmp_path,
                                                                        monkeypatch, path):
    import server.core.pipeline as pipeline_mod

    pipe, store, scorer = token_pipeline(token_tokenizer, tmp_path)
    run(store.upsert_items([Item("1", "Toy Story (1995)", attributes={"genres": "Drama"}),
                            Item("new", "Toy Story (1995)")]))
    columnar = []
    real = pipeline_mod.rank_by_score
    monkeypatch.setattr(pipeline_mod, "rank_by_score", lambda *a: columnar.append(real(*a)) or columnar[-1])
    req = RerankRequest("u", COLD, explain=path == "explain", rule_set="boosted" if path == "engine" else "")
    resp = run(pipe.rerank(req))

    assert bool(columnar) == (path == "columnar") and all(r is not None for r in columnar)
    got = {i.item_id: i.scored_from for i in resp.items}
    assert got == EXPECTED
    assert [i.item_id for i in resp.items if i.unscored] == ["ghost"]
    if path == "explain":
        assert all(i.explanation.scored_from == i.scored_from for i in resp.items)
    # The flag agrees with what the model was sent: a row holds an item token exactly when
    # its candidate (in request order, the unscored one left out) is flagged ID_TOKEN.
    token_ids = {token_tokenizer._tok.token_to_id(t) for t in TOKENS}
    sent = [bool(token_ids & set(row.tolist())) for row in scorer.input_ids[-1]]
    assert sent == [EXPECTED[c.item_id] == ScoredFrom.ID_TOKEN for c in COLD if c.item_id != "ghost"]


def test_a_model_without_item_tokens_reads_every_item_as_text(tokenizer, tmp_path):
    pipe, store, _ = make(tokenizer, tmp_path)
    run(store.upsert_items([Item("1", "Toy Story (1995)"), Item("new", "Toy Story (1995)")]))
    for explain in (False, True):
        resp = run(pipe.rerank(RerankRequest("u", COLD, explain=explain)))
        assert {i.item_id: i.scored_from for i in resp.items} == {
            k: ScoredFrom.UNSPECIFIED if k == "ghost" else ScoredFrom.TEXT for k in EXPECTED}


@pytest.mark.parametrize("explain", [False, True])
def test_the_versions_text_offset_moves_only_items_read_from_text(token_tokenizer, tmp_path, explain):
    pipe, store, _ = token_pipeline(token_tokenizer, tmp_path)
    run(store.upsert_items([Item("1", "Toy Story (1995)"), Item("new", "Toy Story (1995)")]))
    req = RerankRequest("u", COLD, explain=explain)
    raw = {i.item_id: i.model_score for i in run(pipe.rerank(req)).items}
    pipe.models.current.manifest.text_offset = -2.5
    pipe.score_cache = ScoreCache(100)  # the offset applies to cached scores too
    for _ in range(2):
        got = {i.item_id: i.model_score for i in run(pipe.rerank(req)).items}
        for item_id, source in EXPECTED.items():
            shift = -2.5 if source is ScoredFrom.TEXT else 0.0
            assert got[item_id] == pytest.approx(raw[item_id] + shift), item_id
