"""Business rules: filters, score blending, boosts, diversity, pins, with explanations.

The pipeline calls, per request::

    ruleset = provider.get(request.rule_set)                 # NotFound for an unknown name
    ruleset = apply_overrides(ruleset, request_overrides)    # InvalidArgument if not allowed
    outcome = apply_rules(ruleset, candidates, history=events, now=time.time(), top_n=request.top_n)

``engine`` and ``config`` are pure; ``store`` owns the file and its reloading.
"""

from server.rules.config import (
    DEFAULT_RULE_SET,
    EMPTY_RULE_SET,
    RuleSet,
    apply_overrides,
    parse_rule_set,
    parse_rules,
)
from server.rules.engine import apply_rules
from server.rules.model import RankedItem, RuleCandidate, RulesOutcome
from server.rules.store import RulesProvider

__all__ = [
    "DEFAULT_RULE_SET",
    "EMPTY_RULE_SET",
    "RankedItem",
    "RuleCandidate",
    "RuleSet",
    "RulesOutcome",
    "RulesProvider",
    "apply_overrides",
    "apply_rules",
    "parse_rule_set",
    "parse_rules",
]
