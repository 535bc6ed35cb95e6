"""Override values read as YAML: no aliases (billion laughs), bounded nesting (recursion)."""

import time

import pytest

from server.errors import InvalidArgument
from server.rules.fields import maybe_yaml


def _laughs(levels: int = 9) -> str:
    names = [f"l{i}" for i in range(levels)]
    parts = [f"&{names[0]} [x,x,x,x,x,x,x,x,x]"]
    parts += [f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("value, message", [
    (_laughs(), "aliases (*name) are not allowed"),
    ("{a: &x [1], b: *x}", "aliases (*name) are not allowed"),
    ("[" * 5000 + "]" * 5000, "nested deeper than 32 levels"),
    ("{a: " * 200 + "1" + "}" * 200, "nested deeper than 32 levels"),
])
def test_aliases_and_deep_nesting_are_invalid_argument_at_once(value, message):
    t0 = time.perf_counter()
    with pytest.raises(InvalidArgument) as err:
        maybe_yaml(value, "pins")
    assert message in str(err.value) and err.value.field == "pins"
    assert time.perf_counter() - t0 < 2.0


def test_ordinary_flow_values_still_parse():
    assert maybe_yaml("[{item_id: a1, position: 1}]", "pins") == [{"item_id": "a1", "position": 1}]
    assert maybe_yaml("[" * 32 + "]" * 32, "x") is not None  # 32 levels are allowed
    assert maybe_yaml("no", "x") == "no"  # a plain string stays a string
