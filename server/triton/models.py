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
from server.errors import Unavailable

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
    """Tracks the newest READY version (or a pinned one) of one Triton model."""

    def __init__(self, scorer, repo: Path, name: str, *, pinned_version: str = ""):
        self._scorer = scorer
        self._repo = Path(repo)
        self._name = name
        self._pinned = pinned_version
        self.current: ServedModel | None = None

    async def refresh(self) -> ServedModel | None:
        versions = await self._scorer.ready_versions(self._name)
        if self._pinned:
            versions = [v for v in versions if v == self._pinned]
        chosen = max(versions, key=int) if versions else None
        if chosen is None:
            if self.current is not None:
                log.warning("model %s has no ready version: serving stops", self._name)
                self.current = None
            return None
        if self.current is None or self.current.version != chosen:
            try:
                served = await asyncio.to_thread(load_served_model, self._repo, self._name, chosen)
            except (OSError, ValueError, KeyError) as exc:
                log.error("cannot load tokenizer/manifest of %s version %s: %s", self._name, chosen, exc)
                return self.current
            log.info("serving %s version %s", self._name, chosen)
            self.current = served
        return self.current

    def require(self) -> ServedModel:
        """The model to use for a request, or UNAVAILABLE when none is ready."""
        if self.current is None:
            raise Unavailable(f"model {self._name!r} is not ready in Triton")
        return self.current
