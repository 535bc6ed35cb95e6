"""Validators for the plain values of a rules file or an override, each naming its field.

Every function takes the value and its dotted ``path`` and returns the typed value or raises
``InvalidArgument(field=path)``, so a bad file or override names exactly what to fix.
Shared by ``parse`` (the rules file) and ``overrides`` (per-request values). Pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from server.errors import InvalidArgument

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def type_name(v: object) -> str:
    return "null" if v is None else type(v).__name__


class _NoAliasLoader(yaml.SafeLoader):
    """``SafeLoader`` for per-request values, which need neither aliases nor deep nesting:
    a few hundred bytes of nested ``&a [*a, *a, ...]`` expand into billions of elements once
    the value is copied or printed (it held a gateway for over a minute), and ``[[[...`` a
    thousand deep overflowed the composer's recursion (INTERNAL)."""

    max_depth = 32
    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here",
                                              self.peek_event().start_mark)
        if self._depth >= self.max_depth:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {self.max_depth} levels",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def maybe_yaml(value: object, path: str) -> object:
    """Overrides may arrive as strings (a proto ``map<string,string>``): containers are
    then read as YAML flow text, e.g. ``"[{item_id: a1, position: 1}]"`` (no aliases)."""
    # Only flow collections: a plain string stays a string ("no" must not become False).
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return yaml.load(value, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"not valid YAML: {exc}".replace("\n", " "), field=path) from None
    return value


def as_mapping(value: object, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = maybe_yaml(value, path)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"expected a mapping, got {type_name(value)}", field=path)
    for k in value:
        if k not in allowed:
            raise InvalidArgument(
                f"unknown option {k!r} (expected one of: {', '.join(allowed)})", field=path
            )
    return dict(value)


def as_list(value: object, path: str) -> list:
    value = maybe_yaml(value, path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"expected a list, got {type_name(value)}", field=path)
    return value


def as_float(
    value: object, path: str, *, lo: float | None = None, hi: float | None = None,
    lo_open: bool = False,
) -> float:
    if isinstance(value, bool) or value is None:
        raise InvalidArgument(f"expected a number, got {type_name(value)}", field=path)
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected a number, got {value!r}", field=path) from None
    if not math.isfinite(x):
        raise InvalidArgument(f"expected a finite number, got {value!r}", field=path)
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise InvalidArgument(f"must be {'>' if lo_open else '>='} {lo:g}, got {x:g}", field=path)
    if hi is not None and x > hi:
        raise InvalidArgument(f"must be <= {hi:g}, got {x:g}", field=path)
    return x


def as_int(value: object, path: str, *, lo: int = 1, hi: int = 1_000_000) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"expected an integer, got {value!r}", field=path)
    if not lo <= value <= hi:
        raise InvalidArgument(f"must be between {lo} and {hi}, got {value}", field=path)
    return value


def as_bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidArgument(f"expected true or false, got {value!r}", field=path)


def as_str(value: object, path: str) -> str:
    # Numbers are accepted as strings (item ids and years are often written unquoted).
    if isinstance(value, bool):
        raise InvalidArgument(
            f"expected a string, got the boolean {value} (quote it: YAML reads unquoted "
            "yes/no/on/off/true/false as booleans)", field=path,
        )
    if not isinstance(value, (str, int, float)):
        raise InvalidArgument(f"expected a string, got {type_name(value)}", field=path)
    text = str(value).strip()
    if not text:
        raise InvalidArgument("must not be empty", field=path)
    return text


def as_str_list(value: object, path: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    value = maybe_yaml(value, path)
    items = value if isinstance(value, list) else [value]
    out = tuple(as_str(v, at(path, i)) for i, v in enumerate(items)) if value is not None else ()
    if not out and not allow_empty:
        raise InvalidArgument("must list at least one value", field=path)
    return out


def as_name(value: object, path: str) -> str:
    text = as_str(value, path)
    if not _NAME_RE.match(text):
        raise InvalidArgument(
            f"invalid name {text!r} (letters, digits, '_' and '-' only)", field=path
        )
    return text


def as_duration(value: object, path: str) -> float | None:
    """Seconds, or a string like ``"30d"``, ``"12h"``, ``"90m"``; null means no limit."""
    if value is None:
        return None
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise InvalidArgument(
                f"expected seconds or a duration like '30d', '12h', '90m', got {value!r}", field=path
            )
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return as_float(value, path, lo=0.0, lo_open=True)


def optional(data: dict, key: str, path: str, conv: Callable[..., Any], default: Any, **kw: Any) -> Any:
    value = data.get(key)
    return default if value is None else conv(value, at(path, key), **kw)


def enabled_section(value: object, path: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """A mapping section; ``true`` is shorthand for all defaults, ``false`` / ``enabled: false`` for off."""
    value = maybe_yaml(value, path)
    if value is None:  # absent: off
        return None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if isinstance(value, bool):
        return {} if value else None
    data = as_mapping(value, path, fields)
    if "enabled" in data and data["enabled"] is not None and not as_bool(data["enabled"], at(path, "enabled")):
        return None
    return data




def plain(value: object) -> Any:
    """A deep copy as plain dicts/lists (the ``raw`` form overrides are applied to)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
