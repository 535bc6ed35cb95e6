"""Business rules: filters, score blending, boosts, diversity, pins, with explanations.

The pipeline calls, per request::

    ruleset = provider.get(request.rule_set)                 # NotFound for an unknown name
    ruleset = apply_overrides(ruleset, request_overrides)    # InvalidArgument if not allowed
    outcome = apply_rules(ruleset, candidates, history=events, now=time.time(), top_n=request.top_n)

Modules: ``ruleset`` (the typed rule set), ``predicates`` (attribute tests), ``fields`` and
``parse`` (plain data / YAML -> rule set), ``overrides`` (per-request changes), ``engine``
and ``diversity`` (applying a rule set), ``columnar`` (the fast path for score-only rule
sets), ``model`` (what the stage reads and returns). All are pure but ``store``, which owns
the file and its reloading.
"""

from server.rules.engine import apply_rules
from server.rules.model import RankedItem, RuleCandidate, RulesOutcome
from server.rules.overrides import apply_overrides
from server.rules.parse import parse_rule_set, parse_rules
from server.rules.ruleset import DEFAULT_RULE_SET, EMPTY_RULE_SET, RuleSet
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
