"""The one text renderer: (user history, context, candidate) -> the text pair the model reads.

Training, evaluation and serving all call these functions; a test pins that they give
identical token ids. Change the format here and every consumer follows (retrain after).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.types import Item

# Attributes that carry meaning for the model, in the order they are rendered.
RENDERED_ATTRIBUTES = ("year", "genres", "category", "brand")
EMPTY_HISTORY = "no history"


def render_item(item: Item) -> str:
    """Item side: title, a few attributes, then free text."""
    parts = [item.title.strip() or item.item_id]
    for key in RENDERED_ATTRIBUTES:
        value = item.attributes.get(key, "").strip()
        if value and not (key == "year" and value in parts[0]):
            parts.append(f"{key}: {value.replace('|', ', ')}")
    if item.text.strip():
        parts.append(item.text.strip())
    return " | ".join(parts)


def render_user(history: Sequence[Item], context_text: str = "", max_items: int = 10) -> str:
    """User side: recent items, most recent first, then free-text context if any."""
    titles = [(it.title.strip() or it.item_id) for it in history[:max_items]]
    text = "; ".join(titles) if titles else EMPTY_HISTORY
    if context_text.strip():
        text = f"{text} | context: {context_text.strip()}"
    return text
