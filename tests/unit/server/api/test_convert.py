"""Core types <-> protobuf at the edge: ``scored_from`` reaches the reply and its explanation."""

import pytest

from server.api import convert
from server.api.pb import reranker_pb2 as pb
from server.types import Explanation, RerankResponse, ScoredFrom, ScoredItem

PB = {ScoredFrom.UNSPECIFIED: pb.SCORED_FROM_UNSPECIFIED, ScoredFrom.ID_TOKEN: pb.SCORED_FROM_ID_TOKEN,
      ScoredFrom.TEXT: pb.SCORED_FROM_TEXT}


def _response(items):
    return convert.rerank_response(RerankResponse(items=items, model_name="reranker", model_version="3",
                                                  timings_ms={"total": 1.0}, request_id="r"))


@pytest.mark.parametrize("source", list(ScoredFrom))
def test_scored_from_maps_to_the_proto_enum_with_and_without_explanation(source):
    expl = Explanation(1.5, None, (("blend", 0.5),), 2.0, scored_from=source)
    out = _response([ScoredItem("a", 2.0, 1, 1.5, source == ScoredFrom.UNSPECIFIED, source),
                     ScoredItem("b", 2.0, 2, 1.5, source == ScoredFrom.UNSPECIFIED, source, expl)])
    a, b = out.items
    assert a.scored_from == b.scored_from == b.explanation.scored_from == PB[source]
    assert not a.HasField("explanation") and b.explanation.final_score == 2.0


def test_every_core_value_has_a_proto_value_and_the_default_is_unspecified():
    assert set(convert.SCORED_FROM) == set(ScoredFrom)
    assert sorted(convert.SCORED_FROM.values()) == sorted(pb.ScoredFrom.values())
    assert _response([ScoredItem("a", 0.0)]).items[0].scored_from == pb.SCORED_FROM_UNSPECIFIED
