"""What the model reads about an item, and how it read it: shared by serving and training."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    title: str = ""
    text: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


class ScoredFrom(StrEnum):
    """How the model read an item: its trained ID token (``[i50]``), or its text only because
    the served version has no token for it (a cold item)."""

    UNSPECIFIED = ""  # not scored
    ID_TOKEN = "id_token"
    TEXT = "text"
