"""The rules stage for rule sets that only order by score: no filters, boosts, diversity, MMR or
pins, at most a blend. That is the default (the model's recommended blend) and the common
case, and here it runs over numpy columns instead of one object per candidate per step.

Results are identical to ``apply_rules(...).to_scored_items()`` (same floats, same order, same
tie-breaks); ``tests/unit/server/rules/test_rules_columnar.py`` checks that on random inputs.
Explanations need the engine's per-item records, so ``explain`` requests take the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract.blend import final_scores
from contract.blend import order as rank_order
from server.rules.ruleset import EMPTY_RULE_SET, RuleSet
from server.types import ScoredFrom, ScoredItem


def orders_by_score_only(ruleset: RuleSet | None) -> bool:
    """True when ``ruleset`` can only blend and sort (nothing removed, moved or boosted)."""
    rs = ruleset or EMPTY_RULE_SET
    return not (rs.exclude_interacted or rs.exclude_unavailable or rs.filters or rs.boosts
                or rs.diversity or rs.mmr or rs.pins)


def rank_by_score(ruleset: RuleSet | None, item_ids: Sequence[str], model_scores: np.ndarray,
                  scored: np.ndarray, retrieval_scores: np.ndarray, top_n: int = 0,
                  scored_from: Sequence[ScoredFrom] | None = None) -> list[ScoredItem] | None:
    """The ranked response items for a rule set where ``orders_by_score_only`` holds.

    ``model_scores`` float64 (any value where not ``scored``), ``retrieval_scores`` float64 with
    NaN for "none", ``scored_from`` per item how the model read it (None: all unspecified).
    Returns None when ``item_ids`` repeat (the engine keeps the first of each).
    """
    n = len(item_ids)
    if len(set(item_ids)) != n:
        return None
    rs = ruleset or EMPTY_RULE_SET
    model = np.where(scored, model_scores, 0.0)  # the engine's model_score of an unscored item
    final = final_scores(rs.blend, model, scored, retrieval_scores)
    tier = ~scored  # unscored candidates after every scored one
    order = rank_order(item_ids, final, scored)
    if top_n > 0:
        order = order[:top_n]
    finals, models, unscored = final.tolist(), model.tolist(), tier.tolist()
    froms = scored_from if scored_from is not None else [ScoredFrom.UNSPECIFIED] * n
    # Positional (item_id, score, rank, model_score, unscored, scored_from): keywords cost 2x.
    return [ScoredItem(item_ids[i], finals[i], pos, models[i], unscored[i], froms[i])
            for pos, i in enumerate(order, 1)]
