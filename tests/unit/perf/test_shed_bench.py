"""``perf.shed_bench``'s summaries (the measurement itself runs a real stack: not a unit test)."""

import math

from perf.shed_bench import markdown, summarize


def test_summary_shares_latencies_and_goodput():
    calls = [("OK", 10.0)] * 6 + [("RESOURCE_EXHAUSTED", 1.0)] * 3 + [("DEADLINE_EXCEEDED", 200.0)]
    s = summarize(calls, elapsed_s=10.5, duration_s=10.0)
    assert (s["calls"], s["ok"], s["refused"], s["late"], s["other"]) == (10, 6, 3, 1, 0)
    assert s["ok_share"] == 0.6 and s["refused_share"] == 0.3 and s["late_share"] == 0.1
    assert s["goodput_rps"] == 0.6 and s["drain_s"] == 0.5
    assert s["ok_p99_ms"] == 10.0 and s["refused_p50_ms"] == 1.0 and s["late_p50_ms"] == 200.0


def test_no_refusals_gives_nan_latency_and_the_table_renders():
    s = summarize([("OK", 5.0), ("UNAVAILABLE", 1.0)], 1.0, 1.0)
    assert math.isnan(s["refused_p50_ms"]) and s["other"] == 1
    result = {"on_model_failure": "fail", "cpu": "x", "load_avg": "1 1 1", "capacity_rps": 10.0, "alone_p50_ms": 20.0, "deadline_ms": 160.0,
              "open_s": 1.0, "rounds": 1, "runs": {"shed@80%": s, "shed@120%": s},
              "figure": {"p99_ratio": 1.0, "refused_p50_ms": 1.0, "refused_p99_ms": 2.0}}
    text = markdown(result)
    assert "| shed | 120% |" in text and "target < 2" in text
