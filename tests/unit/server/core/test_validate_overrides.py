"""``validate_rerank`` bounds the per-request rule overrides (parsed as YAML afterwards)."""

import pytest

from server.core.validate import MAX_OVERRIDE_LEN, MAX_OVERRIDES, validate_rerank
from server.errors import InvalidArgument
from server.types import Candidate, RerankRequest


def _req(overrides):
    return RerankRequest("u", (Candidate("a"),), rule_overrides=overrides)


@pytest.mark.parametrize("overrides, field", [
    ({f"k{i}": "1" for i in range(MAX_OVERRIDES + 1)}, "rule_overrides"),
    ({"k" * 257: "1"}, "rule_overrides"),
    ({"pins": "[" + "x," * MAX_OVERRIDE_LEN + "]"}, "rule_overrides['pins']"),
])
def test_too_many_or_too_long_overrides_are_invalid_argument(overrides, field):
    with pytest.raises(InvalidArgument) as err:
        validate_rerank(_req(overrides), max_candidates=10)
    assert err.value.field == field


def test_overrides_within_the_bounds_pass():
    validate_rerank(_req({f"k{i}": "v" * MAX_OVERRIDE_LEN for i in range(MAX_OVERRIDES)}), max_candidates=10)
