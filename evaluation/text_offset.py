"""Choosing a freshly trained model's text offset (``contract.calibration``) on validation:
the shift that puts items read from text alone on the scale of items read from their
tokens, so a new item competes fairly with the catalogue the model was trained on."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from contract.calibration import apply_text_offset
from evaluation.cold_lists import (
    COLD_IN_MIXED,
    LIST_SIZE,
    order_by,
    other_cold,
    top_share,
)
from interactions.movielens import id_sort_key

OFFSET_GRID = tuple(round(x * 0.05, 2) for x in range(-100, 101))
# Lists whose new items include the user's next item (a tenth of the catalogue new).
RELEVANT_SHARE = 0.1


def choose_text_offset(valid_lists: Sequence[tuple], scores: Sequence[np.ndarray], data, enc, scorer,
                       seed: int = 0, max_lists: int = 1000) -> dict:
    """The text offset (``contract.calibration``) of a freshly trained model, on validation.

    Mixed validation lists built as the protocol builds them: the retriever's top-45 + 5
    "new" items, which in one list in ten (``RELEVANT_SHARE``, as when a tenth of the catalogue
    is new) include the user's next item and otherwise are random items from outside the
    history. The same lists are scored twice: the 5 items read from their tokens, and read
    from text alone, as they would be if they were new. The offset gives the text-read items
    the top-10 share (model order) they take as tokens; ties: the smallest offset. Relevant
    items must be among them: a model reads a relevant item less sharply from its text than
    from its token, and an offset fitted on irrelevant items alone leaves new items fewer top
    slots than the same items take when warm. ``valid_lists``/``scores``: the validation
    lists already scored (every one holds its user's validation target)."""
    if not enc.renderer.options.item_tokens or not valid_lists:  # every item is read from text
        return {"offset": 0.0, "share_token": float("nan"), "share_text": float("nan"),
                "share_text_calibrated": float("nan"), "lists": 0, "reason": "no item tokens"}
    rng = random.Random(f"offset:{seed}")
    pool = sorted(data.warm_items, key=id_sort_key)
    targets = data.split.valid
    picked = list(zip(valid_lists, scores))[:max_lists]
    rows, relevant = [], 0
    for (user, history, cands, _), s in picked:
        target = targets.get(user)
        with_target = target in data.warm_items and rng.random() < RELEVANT_SHARE
        keep = [k for k, c in enumerate(cands) if not (with_target and c == target)][:LIST_SIZE - COLD_IN_MIXED]
        head = [cands[k] for k in keep]
        extra = [target] if with_target else []
        relevant += with_target
        extra += other_cold(rng, pool, set(history) | set(head) | set(extra), COLD_IN_MIXED - len(extra))
        rows.append((history, head, np.asarray([s[k] for k in keep], np.float64), extra))
    as_token = _score_extra(rows, enc, scorer, text=False)
    as_text = _score_extra(rows, enc, scorer, text=True)

    def share(extra_scores: Sequence[np.ndarray], offset: float) -> float:
        out = []
        for (_, head, hs, extra), es in zip(rows, extra_scores):
            es = apply_text_offset(list(map(float, es)), [True] * len(es), offset)
            order = order_by(head + extra, list(hs) + es)
            out.append(top_share(order, extra))
        return float(np.mean(out))

    target_share = share(as_token, 0.0)
    fits = [(abs(share(as_text, d) - target_share), abs(d), d) for d in OFFSET_GRID]
    best = min(fits)[2]
    return {"offset": best, "share_token": target_share, "share_text": share(as_text, 0.0),
            "share_text_calibrated": share(as_text, best), "lists": len(rows),
            "lists_with_target": relevant,
            "chosen_on": f"validation mixed lists: retriever top-45 + 5 items (the user's next item among them "
                         f"in {RELEVANT_SHARE:.0%} of lists), top-10 share read as text matched to the share "
                         "read as tokens"}


def _score_extra(rows, enc, scorer, text: bool, rows_per_call: int = 25) -> list[np.ndarray]:
    """Scores of each row's extra items, read from their tokens or from text alone."""
    out: list[np.ndarray] = []
    for s0 in range(0, len(rows), rows_per_call):
        chunk = rows[s0:s0 + rows_per_call]
        arrays = enc.encode_lists([(history, extra) for history, _, _, extra in chunk],
                                  text_only=[frozenset(extra) if text else frozenset() for *_, extra in chunk])
        scores = np.asarray(scorer(arrays), np.float64)
        ends = np.cumsum([len(extra) for *_, extra in chunk])
        out += np.split(scores, ends[:-1])
    return out
