"""The one text renderer: (user history, context, candidate) -> the text pair the model reads.

Training, evaluation and serving all call these functions; a test pins that they give
identical token ids. Change the format here and every consumer follows (retrain after).

A model version may carry render options in its manifest (``Manifest.render``), for
example item-ID tokens: an item whose ID token (``[i50]``) is in that model's vocabulary is
written as the token, so the model can learn a collaborative signal per item; an item
without a trained token (a new catalogue item) keeps its text. ``Renderer.for_model``
builds the renderer of a served version; the module-level ``render_user`` / ``render_item``
are the default renderer (plain text, what a manifest without options means).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass

from contract.items import Item, ScoredFrom

# Attributes that carry meaning for the model, in the order they are rendered.
RENDERED_ATTRIBUTES = ("year", "genres", "category", "brand")
EMPTY_HISTORY = "no history"
# Lower case: the MiniLM tokenizer lower-cases before it matches added tokens.
ITEM_TOKEN_FORMAT = "[i{}]"


@dataclass(frozen=True)
class RenderOptions:
    """How a model version wants its text. The defaults are the plain-text format.

    ``item_tokens``: write items that have an ID token in the model's vocabulary as that
    token. On the user side the token replaces the title unless ``history_titles``; on the
    item side the title (and attributes) follow the token unless ``item_text`` is False.
    ``item_attributes``: which catalogue attributes the item side shows, in order.
    ``history_items``: how many recent items the user side shows (0: the caller's value).
    """

    item_tokens: bool = False
    history_titles: bool = True
    item_text: bool = True
    item_attributes: tuple[str, ...] = RENDERED_ATTRIBUTES
    history_items: int = 0
    token_format: str = ITEM_TOKEN_FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["item_attributes"] = list(self.item_attributes)
        return d

    @classmethod
    def from_dict(cls, data: Mapping | None) -> RenderOptions:
        """Tolerant: unknown keys are ignored and missing ones take today's defaults."""
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        if "item_attributes" in known:
            known["item_attributes"] = tuple(known["item_attributes"])
        return cls(**known)


def vocabulary_lookup(tokenizer) -> Callable[[str], bool]:
    """``token -> bool``: whether the tokenizer (a ``PairTokenizer`` or a ``tokenizers.Tokenizer``)
    has ``token`` as one vocabulary entry."""
    raw = getattr(tokenizer, "_tok", tokenizer)
    return lambda token: raw.token_to_id(token) is not None


class Renderer:
    """Renders text pairs for one model: its options plus which item tokens it knows."""

    memo_size = 200_000

    def __init__(self, options: RenderOptions | None = None,
                 has_token: Callable[[str], bool] | None = None):
        self.options = options or RenderOptions()
        self._has_token = has_token if self.options.item_tokens else None
        self._memo: dict[str, tuple[Item, str]] = {}
        self._tokens: dict[str, str | None] = {}

    @classmethod
    def for_model(cls, manifest, tokenizer) -> Renderer:
        """The renderer of a model version (``Manifest`` + its ``PairTokenizer``)."""
        options = RenderOptions.from_dict(getattr(manifest, "render", None))
        return cls(options, vocabulary_lookup(tokenizer) if options.item_tokens else None)

    def history_items(self, default: int) -> int:
        return self.options.history_items or default

    def item_token(self, item_id: str) -> str | None:
        """The item's ID token when this model has one, else None (the item is read from its
        text alone). Memoized: a version's vocabulary never changes, and the gateway asks for
        every candidate of every request."""
        if self._has_token is None:
            return None
        try:
            return self._tokens[item_id]
        except KeyError:
            pass
        tok = self.options.token_format.format(item_id)
        tok = tok if self._has_token(tok) else None
        if len(self._tokens) >= self.memo_size:
            self._tokens.clear()  # rare (more ids than the memo holds): simpler than an LRU
        self._tokens[item_id] = tok
        return tok

    def scored_from(self, item_id: str) -> ScoredFrom:
        """How this model reads the item: its ID token, or its text alone (a cold item)."""
        return ScoredFrom.ID_TOKEN if self.item_token(item_id) is not None else ScoredFrom.TEXT

    def _title(self, item: Item) -> str:
        return item.title.strip() or item.item_id

    def items(self, items: Sequence[Item]) -> list[str]:
        """``item`` for each, memoized per item object: the gateway's item cache hands out
        the same (immutable) ``Item`` until the item is upserted, so a cached text is reused
        only while its entry holds that very object."""
        memo = self._memo
        out = []
        for it in items:
            hit = memo.get(it.item_id)
            if hit is not None and hit[0] is it:
                out.append(hit[1])
                continue
            text = self.item(it)
            if len(memo) >= self.memo_size:
                memo.clear()  # rare (a catalog larger than the memo): simpler than an LRU
            memo[it.item_id] = (it, text)
            out.append(text)
        return out

    def item(self, item: Item, use_token: bool = True) -> str:
        """Item side: [ID token], title, a few attributes, then free text.

        ``use_token=False`` renders the item as if the model had no token for it (text
        only): exactly how a cold item reads. Training uses it for ID dropout, so that
        warm and cold items are learnt on one score scale."""
        tok = self.item_token(item.item_id) if use_token else None
        if tok is not None and not self.options.item_text:
            return tok
        parts = [self._title(item)]
        for key in self.options.item_attributes:
            value = item.attributes.get(key, "").strip()
            if value and not (key == "year" and value in parts[0]):
                parts.append(f"{key}: {value.replace('|', ', ')}")
        if item.text.strip():
            parts.append(item.text.strip())
        text = " | ".join(parts)
        return f"{tok} {text}" if tok is not None else text

    def _history_entry(self, item: Item, use_token: bool = True) -> str:
        tok = self.item_token(item.item_id) if use_token else None
        if tok is None:
            return self._title(item)
        return f"{tok} {self._title(item)}" if self.options.history_titles else tok

    def user(self, history: Sequence[Item], context_text: str = "", max_items: int = 10,
             text_only: Container[str] = ()) -> str:
        """User side: recent items, most recent first, then free-text context if any.
        Items in ``text_only`` are written without their token (training's ID dropout)."""
        n = self.history_items(max_items)
        entries = [self._history_entry(it, it.item_id not in text_only) for it in history[:n]]
        sep = " " if self._has_token is not None and not self.options.history_titles else "; "
        text = sep.join(entries) if entries else EMPTY_HISTORY
        if context_text.strip():
            text = f"{text} | context: {context_text.strip()}"
        return text


DEFAULT_RENDERER = Renderer()


def render_item(item: Item) -> str:
    """Item side with the default (plain-text) options."""
    return DEFAULT_RENDERER.item(item)


def render_user(history: Sequence[Item], context_text: str = "", max_items: int = 10) -> str:
    """User side with the default (plain-text) options."""
    return DEFAULT_RENDERER.user(history, context_text, max_items)
