from opentelemetry import trace

from server.telemetry import Telemetry

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_span_joins_callers_traceparent_and_propagates_downstream():
    tel = Telemetry("console")
    ctx = tel.extract([("traceparent", PARENT), ("x-request-id", "r1")])
    with tel.tracer.start_as_current_span("rpc", context=ctx) as span:
        assert format(span.get_span_context().trace_id, "032x") == TRACE_ID
        downstream = tel.headers()["traceparent"]
    version, trace_id, span_id, flags = downstream.split("-")
    assert trace_id == TRACE_ID and span_id != "00f067aa0ba902b7"  # a child, same trace
    tel.shutdown()


def test_disabled_telemetry_is_a_no_op():
    tel = Telemetry("none")
    with tel.tracer.start_as_current_span("rpc", context=tel.extract([("traceparent", PARENT)])) as span:
        assert not span.get_span_context().is_valid or isinstance(span, trace.NonRecordingSpan)
        assert tel.headers() == {}
    tel.record_stages({"infer": (0.0, 1.0)})


def test_unknown_exporter_is_rejected():
    import pytest

    with pytest.raises(ValueError):
        Telemetry("zipkin")


def test_spans_carry_the_users_keyed_hash_never_the_id():
    tel = Telemetry("console", user_id_hash_key="k")
    with tel.tracer.start_as_current_span("rpc") as span:
        tel.tag_user("alice@example.com")
    attrs = dict(span.attributes)
    assert attrs["rerank.user"] == tel.user_ref("alice@example.com")
    assert not any("alice" in str(v) for v in attrs.values())
    tel.shutdown()
    off = Telemetry("none")
    with off.tracer.start_as_current_span("rpc"):
        off.tag_user("alice")  # disabled: a no-op, no hash computed
