"""An event's request_id (online evaluation): optional, bounded, printable ASCII."""

import pytest

from server.api import convert
from server.api.pb import reranker_pb2 as pb
from server.core.validate import MAX_REQUEST_ID_LEN, validate_events
from server.errors import InvalidArgument
from server.types import Event


def ev(request_id: str) -> Event:
    return Event("u1", "a", "click", 100.0, None, "", request_id)


@pytest.mark.parametrize("rid", ["", "0f3c2b9e6c1d4a58b1c0d2e3f4a5b6c7", "caller-req:42/a_b", "x" * MAX_REQUEST_ID_LEN])
def test_accepted_request_ids(rid):
    validate_events([ev(rid)], now=100.0, max_events=10)


@pytest.mark.parametrize("rid, message", [
    ("x" * (MAX_REQUEST_ID_LEN + 1), "longer than 128"),
    ("r\n1", "printable ASCII"),
    ("r\x00", "printable ASCII"),
    ("réponse", "printable ASCII"),
    ("   ", "printable ASCII"),
])
def test_refused_request_ids_name_the_field(rid, message):
    with pytest.raises(InvalidArgument, match=message) as err:
        validate_events([ev(""), ev(rid)], now=100.0, max_events=10)
    assert "events[1].request_id" in str(err.value)


def test_the_proto_field_reaches_the_core_event():
    msg = pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="a", event_type="click", timestamp=5.0,
                                                  request_id="rid-7"),
                                         pb.Event(user_id="u", item_id="b", event_type="view", timestamp=6.0)])
    a, b = convert.events(msg)
    assert (a.request_id, b.request_id) == ("rid-7", "")
