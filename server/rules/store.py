"""Where the rule sets come from: a YAML file, reloaded when it changes.

Separate from the engine on purpose: this is the only part of ``server.rules`` that
touches the file system or the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from server.errors import InvalidArgument, NotFound
from server.rules.parse import parse_rules
from server.rules.ruleset import DEFAULT_RULE_SET, EMPTY_RULE_SET, RuleSet

log = logging.getLogger(__name__)

# (mtime_ns, size, inode): the inode catches atomic replaces (editors, ConfigMap symlink
# swaps) that keep the same mtime and size.
_Signature = tuple[int, int, int]


def _signature(path: Path) -> _Signature:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RulesProvider:
    """Named rule sets from ``path`` (or, with no path, only an empty ``default``).

    ``get`` is a dictionary lookup; ``maybe_reload`` costs one ``stat`` unless the file
    changed. A file that fails to load or validate is logged (once per change) and the
    previous rules stay in force. The first load raises instead: a gateway should not start
    on a broken rules file.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._sets: dict[str, RuleSet] = {DEFAULT_RULE_SET: EMPTY_RULE_SET}
        self._signature: _Signature | None = None
        self._failed_signature: _Signature | None = None
        self.loaded_at: float | None = None
        self.last_error: str | None = None
        if self.path is not None:
            for _ in range(3):  # retried only if the file changed while being read
                if self._load(initial=True):
                    break

    def get(self, name: str = "") -> RuleSet:
        """The rule set called ``name`` ("" means ``default``); ``NotFound`` if there is none."""
        sets = self._sets  # one read: a concurrent reload swaps the whole dict
        rs = sets.get(name or DEFAULT_RULE_SET)
        if rs is None:
            raise NotFound(f"unknown rule set {name!r} (known: {', '.join(sorted(sets))})", field="rule_set")
        return rs

    def maybe_reload(self) -> bool:
        """Reload if the file changed since the last attempt; True when new rules took effect."""
        if self.path is None:
            return False
        try:
            sig = _signature(self.path)
        except OSError as exc:
            return self._fail(None, f"cannot read rules file {self.path}: {exc.strerror or exc}")
        if sig == self._signature:
            self._failed_signature = self.last_error = None  # e.g. a deleted file put back
            return False
        if sig == self._failed_signature:
            return False
        return self._load(initial=False)

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll for changes every ``interval_s`` until cancelled (run it as a task)."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.maybe_reload)
            except Exception:  # never let the watcher die: the next poll retries
                log.exception("rules reload failed unexpectedly; keeping the previous rules")

    def _load(self, *, initial: bool) -> bool:
        assert self.path is not None
        try:
            before = _signature(self.path)
            text = self.path.read_text(encoding="utf-8")
            sets = parse_rules(text, source=str(self.path))
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"cannot read rules file {self.path}: {getattr(exc, 'strerror', None) or exc}"
            if initial:
                raise InvalidArgument(msg, field="rules_path") from None
            return self._fail(None, msg)
        except InvalidArgument as exc:
            msg = f"invalid rules file {self.path}: {exc}"
            if initial:
                raise InvalidArgument(msg, field="rules_path") from None
            return self._fail(before, msg)
        if _signature(self.path) != before:
            return False  # written while we read it: the next poll reads the finished file
        sets.setdefault(DEFAULT_RULE_SET, EMPTY_RULE_SET)
        self._sets = sets
        self._signature = before
        self._failed_signature = None
        self.loaded_at = time.time()
        self.last_error = None
        log.info("rules loaded from %s: rule sets %s", self.path, ", ".join(sorted(sets)))
        return True

    def _fail(self, sig: _Signature | None, msg: str) -> bool:
        # Log each distinct failure once, not on every poll.
        if msg != self.last_error or sig != self._failed_signature:
            log.error("%s; keeping the previous rules (rule sets %s)", msg, ", ".join(sorted(self._sets)))
        self._failed_signature = sig
        self.last_error = msg
        return False
