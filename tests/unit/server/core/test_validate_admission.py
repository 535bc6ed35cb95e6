import pytest

from server.core.admission import Admission
from server.core.validate import (
    validate_events,
    validate_forget,
    validate_items,
    validate_rerank,
)
from server.errors import InvalidArgument, Overloaded
from server.types import Candidate, Event, Item, RerankRequest

NOW = 1_700_000_000.0


def _req(**kw):
    base = dict(user_id="u", candidates=(Candidate("a"), Candidate("b")))
    base.update(kw)
    return RerankRequest(**base)


@pytest.mark.parametrize("req, field", [
    (_req(user_id=" "), "user_id"),
    (_req(candidates=()), "candidates"),
    (_req(candidates=tuple(Candidate(str(i)) for i in range(11))), "candidates"),
    (_req(candidates=(Candidate("a"), Candidate("a"))), "candidates[1].item_id"),
    (_req(candidates=(Candidate(""),)), "candidates[0].item_id"),
    (_req(top_n=-3), "top_n"),
    (_req(candidates=(Candidate("a", float("nan")),)), "candidates[0].retrieval_score"),
])
def test_rerank_errors_name_the_field(req, field):
    with pytest.raises(InvalidArgument) as err:
        validate_rerank(req, max_candidates=10)
    assert err.value.field == field


def test_valid_rerank_passes():
    validate_rerank(_req(top_n=1), max_candidates=10)


@pytest.mark.parametrize("event, field", [
    (Event("", "i", "click", NOW), "events[1].user_id"),
    (Event("u", "i", "teleport", NOW), "events[1].event_type"),
    (Event("u", "i", "click", NOW + 3600), "events[1].timestamp"),
    (Event("u", "i", "click", -1), "events[1].timestamp"),
    (Event("u", "i", "rating", NOW, float("inf")), "events[1].value"),
])
def test_event_batch_errors_name_the_index(event, field):
    with pytest.raises(InvalidArgument) as err:
        validate_events([Event("u", "i", "click", NOW), event], now=NOW, max_events=10)
    assert err.value.field == field


def test_oversized_event_batch():
    with pytest.raises(InvalidArgument) as err:
        validate_events([Event("u", "i", "click", NOW)] * 3, now=NOW, max_events=2)
    assert err.value.field == "events"


def test_items_validation():
    with pytest.raises(InvalidArgument) as err:
        validate_items([Item("a"), Item("a")], [], max_items=10)
    assert err.value.field == "items[1].item_id"
    with pytest.raises(InvalidArgument):
        validate_items([], [], max_items=10)
    validate_items([Item("a")], ["b"], max_items=10)


def test_admission_refuses_beyond_limit_and_recovers():
    adm = Admission(2)
    with adm.slot(), adm.slot():
        with pytest.raises(Overloaded):
            with adm.slot():
                pass
        assert adm.in_flight == 2 and adm.rejected == 1
    assert adm.in_flight == 0
    with adm.slot():
        assert adm.in_flight == 1


def test_admission_counts_abandoned_downstream_work_as_taken_slots():
    backlog = [0]
    adm = Admission(3, backlog=lambda: backlog[0])
    with adm.slot():
        backlog[0] = 2  # two calls still run in Triton for callers that gave up
        with pytest.raises(Overloaded, match="2 abandoned inference calls"):
            with adm.slot():
                pass
        assert adm.rejected == 1
        backlog[0] = 1
        with adm.slot():  # one finished: its slot is free again
            assert adm.in_flight == 2


# -- user ids stay out of error messages -------------------------------------------------

PERSON = "alice.smith@example.com"
LONG_PERSON = PERSON * 20  # over MAX_ID_LEN


@pytest.mark.parametrize("call, field", [
    (lambda: validate_rerank(_req(user_id=LONG_PERSON), max_candidates=10), "user_id"),
    (lambda: validate_rerank(_req(user_id=PERSON, candidates=()), max_candidates=10), "candidates"),
    (lambda: validate_events([Event(LONG_PERSON, "a", "view", NOW)], now=NOW, max_events=10),
     "events[0].user_id"),
    (lambda: validate_events([Event(PERSON, "a", "nope", NOW)], now=NOW, max_events=10), "events[0].event_type"),
    (lambda: validate_events([Event(PERSON, "a", "view", NOW + 3600)], now=NOW, max_events=10),
     "events[0].timestamp"),
    (lambda: validate_events([Event(PERSON, "", "view", NOW)], now=NOW, max_events=10), "events[0].item_id"),
    (lambda: validate_forget(""), "user_id"),
    (lambda: validate_forget("   "), "user_id"),
    (lambda: validate_forget(LONG_PERSON), "user_id"),
])
def test_errors_name_the_field_never_the_user_id(call, field):
    with pytest.raises(InvalidArgument) as err:
        call()
    assert err.value.field == field
    assert "alice" not in str(err.value) and str(err.value).startswith(field + ": ")


def test_forget_accepts_any_nonempty_id():
    validate_forget(PERSON)
