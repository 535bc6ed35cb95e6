"""The columnar path gives exactly the engine's results for rule sets that only order by score."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from contract.blend import Blend
from contract.items import ScoredFrom
from server.rules import RuleCandidate, RuleSet, apply_rules
from server.rules.columnar import orders_by_score_only, rank_by_score
from server.rules.ruleset import Boost, Pin

BLENDS = [None, Blend(), Blend(model_weight=0.5, retrieval_weight=1.0),
          Blend(model_normalize="none", retrieval_normalize="minmax", retrieval_weight=2.0, missing_retrieval=0.3),
          Blend(model_normalize="sigmoid", retrieval_normalize="sigmoid", model_weight=0.7, retrieval_weight=0.3),
          Blend(model_weight=0.0, retrieval_weight=1.0)]


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _rows(items):
    return [(it.item_id, it.score, it.rank, it.model_score, it.unscored, it.scored_from, it.explanation)
            for it in items]


def _case(rng: random.Random):
    n = rng.choice([0, 1, 2, 3, 10, 50, 100])
    pool = [0.0, 1.0, -1.0, 2.5, float("nan"), float("inf"), -float("inf")]
    ties = rng.random() < 0.3  # few distinct values: many ties, broken by item_id
    ids = rng.sample([f"i{k}" for k in range(400)], n)
    model = [rng.choice(pool) if rng.random() < 0.05 else
             (float(rng.randint(0, 3)) if ties else rng.gauss(0, 3)) for _ in range(n)]
    scored = [rng.random() > 0.1 for _ in range(n)]
    retr = [None if rng.random() < 0.2 else (float(rng.randint(0, 2)) if ties else rng.uniform(0, 10))
            for _ in range(n)]
    froms = [rng.choice([ScoredFrom.ID_TOKEN, ScoredFrom.TEXT]) if s else ScoredFrom.UNSPECIFIED for s in scored]
    return ids, model, scored, retr, froms


@pytest.mark.parametrize("seed", range(40))
def test_same_items_scores_and_order_as_the_engine(seed):
    rng = random.Random(seed)
    for blend in BLENDS:
        ids, model, scored, retr, froms = _case(rng)
        top_n = rng.choice([0, 0, 1, 5, 200])
        rs = RuleSet(blend=blend)
        cands = [RuleCandidate(i, m if s else 0.0, r, {}, s, f)
                 for i, m, s, r, f in zip(ids, model, scored, retr, froms)]
        expected = apply_rules(rs, cands, now=0.0, top_n=top_n).to_scored_items()
        got = rank_by_score(rs, ids, np.array(model, dtype=np.float64), np.array(scored, dtype=bool),
                            np.array(retr, dtype=np.float64), top_n, froms)
        assert len(got) == len(expected)
        for g, e in zip(_rows(got), _rows(expected)):
            assert all(_same(x, y) for x, y in zip(g, e)), (blend, g, e)


def test_repeated_ids_are_left_to_the_engine():
    got = rank_by_score(None, ["a", "a"], np.zeros(2), np.ones(2, dtype=bool), np.full(2, np.nan))
    assert got is None


def test_only_score_ordering_rule_sets_qualify():
    assert orders_by_score_only(None) and orders_by_score_only(RuleSet(blend=Blend()))
    assert not orders_by_score_only(RuleSet(pins=(Pin("a", 1),)))
    assert not orders_by_score_only(RuleSet(boosts=(Boost("b", (), add=1.0),)))
