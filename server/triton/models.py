"""Which model version the gateway serves, and the tokenizer + spec that go with it.

Triton is the source of truth for what is READY; the version folder in the model
repository holds the matching ``tokenizer.json`` and ``manifest.json``. When a newer
version becomes ready the gateway switches to it between requests (no restart).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from contract.model_spec import Manifest
from contract.shared_prefix import PrefixTokenizer
from contract.tokenize import PairTokenizer, load_tokenizer
from server.errors import InvalidArgument, Unavailable
from server.triton.rollout import RolloutState, read_state, routes_to_candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    manifest: Manifest
    # The version's layout: a row per pair, or the user once with many candidates per row
    # (``manifest.spec.scoring``); both ``encode(user_text, item_texts)``.
    tokenizer: PairTokenizer | PrefixTokenizer

    @property
    def spec(self):
        return self.manifest.spec


def load_served_model(repo: Path, name: str, version: str) -> ServedModel:
    folder = Path(repo) / name / version
    manifest = Manifest.read(folder / "manifest.json")
    return ServedModel(name, version, manifest, load_tokenizer(folder / "tokenizer.json", manifest.spec))


class ModelWatcher:
    """Tracks which versions of one Triton model the gateway serves.

    Without a roll-out file (``server.triton.rollout``): the newest READY version, or the
    pinned ``triton.model_version``. With one: its ``serving`` version (the newest READY one
    while that is not ready), and its ``candidate`` for the ``share`` of users whose bucket
    falls under it, once the candidate is READY. The file is read at every ``refresh``.
    """

    def __init__(self, scorer, repo: Path, name: str, *, pinned_version: str = "", canary_salt: str = ""):
        self._scorer = scorer
        self._repo = Path(repo)
        self._name = name
        self._pinned = pinned_version
        self._salt = canary_salt
        self.current: ServedModel | None = None
        self.candidate: ServedModel | None = None
        self.share = 0.0
        self.rollout: RolloutState | None = None
        self._warned: set[str] = set()

    def _read_rollout(self) -> RolloutState | None:
        try:
            self.rollout = read_state(self._repo, self._name)
        except (OSError, InvalidArgument) as exc:  # a bad file: keep the state in force
            self._warn_once(f"bad:{exc}", "cannot read %s's rollout.json (keeping the state in force): %s",
                            self._name, exc)
        return self.rollout

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    async def _load(self, version: str, held: ServedModel | None) -> ServedModel | None:
        if held is not None and held.version == version:
            return held
        try:
            return await asyncio.to_thread(load_served_model, self._repo, self._name, version)
        except (OSError, ValueError, KeyError) as exc:
            self._warn_once(f"load:{version}", "cannot load tokenizer/manifest of %s version %s: %s",
                            self._name, version, exc)
            return None

    async def refresh(self) -> ServedModel | None:
        versions = await self._scorer.ready_versions(self._name)
        state = None if self._pinned else self._read_rollout()
        if self._pinned:
            versions = [v for v in versions if v == self._pinned]
        chosen = max(versions, key=int) if versions else None
        if state is not None and chosen is not None:
            if state.serving in versions:
                chosen = state.serving
            else:  # e.g. a Triton restarted before the state was written: serve what is there
                self._warn_once(f"serving:{state.serving}", "rollout.json serves %s version %s, which is not "
                                "READY in Triton: serving version %s meanwhile", self._name, state.serving, chosen)
        if chosen is None:
            if self.current is not None:
                log.warning("model %s has no ready version: serving stops", self._name)
                self.current = None
            self.candidate, self.share = None, 0.0
            return None
        served = await self._load(chosen, self.current)
        if served is None:
            return self.current
        if self.current is not served:
            log.info("serving %s version %s", self._name, chosen)
            self.current = served
        candidate = None
        if state is not None and state.candidate and state.share > 0 and state.candidate != chosen \
                and state.candidate in versions:
            candidate = await self._load(state.candidate, self.candidate)
        if candidate is not self.candidate:
            if candidate is not None:
                log.info("canary: %s version %s for %.1f%% of users", self._name, candidate.version,
                         state.share * 100)
            else:
                log.info("canary of %s ended", self._name)
        self.candidate = candidate
        self.share = state.share if candidate is not None else 0.0
        return self.current

    def require(self, user_id: str = "") -> ServedModel:
        """The model to use for a request of ``user_id``: the canary candidate for the users
        it routes there, else the serving version; UNAVAILABLE when none is ready."""
        current, candidate, share = self.current, self.candidate, self.share  # one consistent read
        if current is None:
            raise Unavailable(f"model {self._name!r} is not ready in Triton")
        if candidate is not None and routes_to_candidate(self._salt, user_id, share):
            return candidate
        return current
