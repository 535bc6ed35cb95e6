"""Protobuf <-> core types. The only place that knows both."""

from __future__ import annotations

import time

from server.api.pb import reranker_pb2 as pb
from server.types import (
    Candidate,
    Event,
    Explanation,
    Item,
    RequestContext,
    RerankRequest,
    RerankResponse,
    ScoredFrom,
)

SCORED_FROM = {ScoredFrom.UNSPECIFIED: pb.SCORED_FROM_UNSPECIFIED, ScoredFrom.ID_TOKEN: pb.SCORED_FROM_ID_TOKEN,
               ScoredFrom.TEXT: pb.SCORED_FROM_TEXT}


def rerank_request(msg, *, request_id: str, timeout_s: float | None) -> RerankRequest:
    return RerankRequest(
        user_id=msg.user_id,
        candidates=tuple(
            Candidate(c.item_id, c.retrieval_score if c.HasField("retrieval_score") else None, c.text)
            for c in msg.candidates),
        top_n=msg.top_n,
        context=RequestContext(tuple(msg.context.session_item_ids), msg.context.text),
        rule_set=msg.rule_set,
        rule_overrides=dict(msg.rule_overrides),
        explain=msg.explain,
        request_id=request_id,
        timeout_s=timeout_s,
    )


def explanation(e: Explanation | None):
    if e is None:
        return None
    return pb.Explanation(
        model_score=e.model_score, retrieval_score=e.retrieval_score, final_score=e.final_score,
        adjustments=[pb.Adjustment(rule=r, delta=d) for r, d in e.adjustments],
        notes=[pb.RuleNote(rule=r, text=t) for r, t in e.notes], scored_from=SCORED_FROM[e.scored_from])


def rerank_response(resp: RerankResponse):
    out = pb.RerankResponse(model_name=resp.model_name, model_version=resp.model_version,
                            request_id=resp.request_id)
    if resp.degraded_reason:
        out.degraded = True
        out.degraded_reason = resp.degraded_reason
    # items.add(...) builds each message in place: ~40% cheaper than a list of messages.
    add = out.items.add
    sf = SCORED_FROM
    for i in resp.items:
        if i.explanation is None:
            add(item_id=i.item_id, score=i.score, rank=i.rank, model_score=i.model_score, unscored=i.unscored,
                scored_from=sf[i.scored_from])
        else:
            add(item_id=i.item_id, score=i.score, rank=i.rank, model_score=i.model_score,
                unscored=i.unscored, scored_from=sf[i.scored_from], explanation=explanation(i.explanation))
    out.timings.extend(pb.StageTiming(stage=k, ms=v) for k, v in resp.timings_ms.items())
    out.filtered.extend(pb.FilteredItem(item_id=i, rule=r) for i, r in resp.filtered)
    return out


def events(msg, *, now: float | None = None) -> list[Event]:
    now = time.time() if now is None else now
    return [Event(e.user_id, e.item_id, e.event_type, e.timestamp or now,
                  e.value if e.HasField("value") else None, e.idempotency_key, e.request_id) for e in msg.events]


def items(msg) -> list[Item]:
    return [Item(i.item_id, i.title, i.text, dict(i.attributes)) for i in msg.items]
