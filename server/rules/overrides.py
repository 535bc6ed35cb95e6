"""Per-request overrides: a caller's changes to the paths a rule set lists as ``overridable``.

The overridden plain data is re-validated as a whole by the same parser as the file, so an
override can never produce a rule set the file could not. Pure (and cached: rule sets are
immutable).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from server.errors import InvalidArgument
from server.rules.fields import maybe_yaml, plain, type_name
from server.rules.parse import parse_rule_set
from server.rules.ruleset import RuleSet


def _is_allowed(path: str, overridable: frozenset[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in overridable for i in range(1, len(parts) + 1))


def _flatten(
    overrides: Mapping[str, Any], allowed: frozenset[str], prefix: str = ""
) -> list[tuple[str, Any]]:
    """``{"blend": {"model_weight": 1}}`` and ``{"blend.model_weight": 1}`` are the same
    override; a mapping is descended into only where its own path is not overridable."""
    out: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if _is_allowed(path, allowed):
            out.append((path, value))
        elif isinstance(value, Mapping) and value:
            out.extend(_flatten(value, allowed, path))
        else:
            listed = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(f"not overridable in this rule set (overridable: {listed})", field=path)
    return out


def _set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):  # a list section: address its element by name
            match = [e for e in node if isinstance(e, dict) and str(e.get("name")) == part]
            if not match:
                raise InvalidArgument(f"no entry named {part!r}", field=where)
            node = match[0]
            continue
        child = maybe_yaml(node.get(part), where)
        if child is None or child is True:
            child = {}
        elif child is False:
            child = {"enabled": False}
        if not isinstance(child, (dict, list)):
            raise InvalidArgument(f"cannot override inside a {type_name(child)}", field=where)
        node[part] = child
        node = child
    if isinstance(node, list):
        match = [i for i, e in enumerate(node) if isinstance(e, dict) and str(e.get("name")) == parts[-1]]
        if not match:
            raise InvalidArgument(f"no entry named {parts[-1]!r}", field=path)
        node[match[0]] = _merge(node[match[0]], value, path)
    else:
        node[parts[-1]] = _merge(node.get(parts[-1]), value, path)


def _merge(old: Any, new: Any, path: str) -> Any:
    """Mappings merge key by key into the file's values; anything else replaces."""
    new = maybe_yaml(new, path)
    old = maybe_yaml(old, path)
    if isinstance(new, dict) and isinstance(old, dict):
        merged = dict(old)
        for k, v in new.items():
            merged[k] = _merge(old.get(k), v, f"{path}.{k}")
        return merged
    return new


def apply_overrides(ruleset: RuleSet, overrides: Mapping[str, Any] | None) -> RuleSet:
    """A copy of ``ruleset`` with the caller's overrides, re-validated as a whole.

    Keys are dotted paths (``"blend.model_weight"``) or nested mappings; a path is accepted
    when it or one of its parents is listed in the rule set's ``overridable``. A mapping value
    merges into the file's mapping (``{"blend": {"model_weight": 1}}`` keeps the other blend
    fields); lists and scalars replace. String values that look like YAML flow collections
    (``"[...]"``, ``"{...}"``) are parsed, numbers and booleans are read from strings, so a
    proto ``map<string, string>`` can be passed as is. Raises
    ``InvalidArgument`` (``field`` = the path) for a path that is not overridable or a bad value.
    """
    if not overrides:
        return ruleset
    if not isinstance(overrides, Mapping):
        raise InvalidArgument("overrides must be a mapping of option paths to values", field="overrides")
    overrides = dict(overrides)  # e.g. a protobuf map
    try:
        key = json.dumps(overrides, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return _apply_overrides(ruleset, overrides)
    # Callers tend to repeat the same few overrides (a campaign's pins): re-validating is
    # ~100x the cost of a cache hit. RuleSets are immutable, so sharing the result is safe.
    return _apply_overrides_cached(ruleset, key)


@functools.lru_cache(maxsize=256)
def _apply_overrides_cached(ruleset: RuleSet, overrides_json: str) -> RuleSet:
    return _apply_overrides(ruleset, json.loads(overrides_json))


def _apply_overrides(ruleset: RuleSet, overrides: Mapping[str, Any]) -> RuleSet:
    raw = plain(ruleset.raw)
    flat = _flatten(overrides, ruleset.overridable)
    for path, value in flat:
        _set_path(raw, path, plain(value))
    try:
        # Element names may legitimately change when a whole list is overridden.
        return parse_rule_set(ruleset.name, raw, check_names=False)
    except InvalidArgument as exc:
        paths = ", ".join(p for p, _ in flat)
        raise InvalidArgument(f"invalid override ({paths}): {exc.message}", field=exc.field) from None
