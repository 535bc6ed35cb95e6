"""``evaluation.online`` against numbers worked out by hand."""

import json
import math

import pytest

from evaluation.online import (
    Z95,
    attribute,
    markdown,
    mean_interval,
    newcombe,
    online_report,
    wilson,
    write_online_report,
)
from server.types import Event, Impression

T = 1000.0
WINDOW = 3600.0


def imp(rid, user, items, version="1", name="reranker", degraded=""):
    return Impression(rid, user, name, version, tuple(items), T, degraded)


IMPRESSIONS = [
    imp("A1", "u1", "abcd"), imp("A2", "u2", "bac"), imp("A3", "u3", "cba"),
    imp("B1", "u1", "abc", version="2"), imp("B2", "u2", "cab", version="2"),
    imp("D1", "u4", "xy", degraded="triton_unavailable"),
]


def ev(user, item, rid, dt=10.0, kind="click"):
    return Event(user, item, kind, T + dt, None, "", rid)


EVENTS = [
    ev("u1", "a", "A1"), ev("u1", "a", "A1", dt=20),  # a repeat counts once
    ev("u1", "a", "A1", dt=30, kind="purchase"),
    ev("u2", "c", "A2"),  # rank 3
    ev("u2", "z", "A2"),  # clicked, but not in the logged list: MRR 0
    ev("u9", "c", "A3"),  # another user's request id
    ev("u1", "b", "B1", dt=WINDOW + 1),  # outside the window
    ev("u1", "b", "B1", dt=5), ev("u2", "b", "B2", dt=5),  # ranks 2 and 3
    ev("u1", "a", "nope"),  # no impression
    Event("u1", "a", "click", T + 1, None, "", ""),  # no request id: not the report's
    ev("u4", "y", "D1"),  # rank 2, degraded reply
]


def test_wilson_matches_published_values():
    # Wilson 95% intervals: 1 of 3 [0.0615, 0.7923], 1 of 2 [0.0945, 0.9055], 0 of 10 [0, 0.2775].
    assert wilson(1, 3) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    assert wilson(1, 2) == pytest.approx((0.0945, 0.9055), abs=1e-4)
    assert wilson(0, 10)[0] == pytest.approx(0.0) and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_mean_interval_by_hand():
    mean, lo, hi = mean_interval([1.0, 1 / 3, 0.0])
    # mean 4/9; sample variance 7/27, so the standard error is sqrt(7/27/3) = sqrt(7)/9.
    assert mean == pytest.approx(4 / 9)
    assert (lo, hi) == pytest.approx((4 / 9 - Z95 * math.sqrt(7) / 9, 4 / 9 + Z95 * math.sqrt(7) / 9))
    assert mean_interval([0.5]) == (0.5, None, None)


def test_attribution_counts_each_case_once():
    att = attribute(IMPRESSIONS, EVENTS, window_s=WINDOW)
    assert (att.events, att.no_impression, att.other_user, att.outside_window, att.repeats) == (11, 1, 1, 1, 1)
    assert sorted((j.item_id, j.event_type, j.rank) for j in att.joined["A1"]) == [("a", "click", 1),
                                                                                  ("a", "purchase", 1)]
    assert sorted((j.item_id, j.rank) for j in att.joined["A2"]) == [("c", 3), ("z", 0)]
    assert "A3" not in att.joined


def test_report_per_arm_by_hand():
    rep = online_report(IMPRESSIONS, EVENTS, k=2, window_s=WINDOW)
    arms = {a["arm"]: a for a in rep["arms"]}
    assert list(arms) == ["1", "2", "degraded"] and rep["baseline"] == "1"
    v1, v2, dg = arms["1"], arms["2"], arms["degraded"]
    # v1: 3 requests; clicks a@1 (A1), c@3 and z beyond the list (A2); a purchase of a@1.
    assert (v1["requests"], v1["events"], v1["clicks"], v1["clicks_beyond_list"]) == (3, {"click": 2, "purchase": 1},
                                                                                     3, 1)
    assert v1["clicked_requests"] == 1 and v1["ctr"] == pytest.approx(1 / 3)  # only A1 has a click at rank <= 2
    assert (v1["ctr_low"], v1["ctr_high"]) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    assert v1["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert v1["mrr_low"] == pytest.approx(4 / 9 - Z95 * math.sqrt(7) / 9)
    # v2: b@2 (B1) and b@3 (B2); B1's late click is outside the window.
    assert (v2["requests"], v2["events"], v2["clicked_requests"]) == (2, {"click": 2}, 1)
    assert v2["ctr"] == 0.5 and v2["mrr"] == pytest.approx(5 / 12)
    # values 1/2 and 1/3: sample variance 1/72, standard error 1/12.
    assert (v2["mrr_low"], v2["mrr_high"]) == pytest.approx((5 / 12 - Z95 / 12, 5 / 12 + Z95 / 12))
    assert (dg["requests"], dg["ctr"], dg["mrr"], dg["mrr_low"]) == (1, 1.0, 0.5, None)
    [d] = rep["differences"]
    assert (d["arm"], d["baseline"]) == ("2", "1")
    assert d["ctr_diff"] == pytest.approx(1 / 2 - 1 / 3)
    # Newcombe: 1/6 - sqrt((0.5 - 0.0945)^2 + (0.7923 - 1/3)^2), 1/6 + sqrt((0.9055 - 0.5)^2 + (1/3 - 0.0615)^2)
    assert (d["ctr_diff_low"], d["ctr_diff_high"]) == pytest.approx((-0.4458, 0.6548), abs=2e-4)
    half = Z95 * math.sqrt(1 / 144 + 7 / 81)
    assert d["mrr_diff"] == pytest.approx(5 / 12 - 4 / 9)
    assert (d["mrr_diff_low"], d["mrr_diff_high"]) == pytest.approx((-1 / 36 - half, -1 / 36 + half))
    assert rep["events"] == {"with_request_id": 11, "joined": 7, "no_impression": 1, "other_user": 1,
                             "outside_window": 1, "repeats": 1}


def test_newcombe_is_symmetric():
    d, lo, hi = newcombe(3, 10, 7, 12)
    d2, lo2, hi2 = newcombe(7, 12, 3, 10)
    assert (d, lo, hi) == pytest.approx((-d2, -hi2, -lo2))
    assert lo < d < hi


def test_k_cuts_ctr_but_not_mrr():
    k1 = {a["arm"]: a for a in online_report(IMPRESSIONS, EVENTS, k=1, window_s=WINDOW)["arms"]}
    k3 = {a["arm"]: a for a in online_report(IMPRESSIONS, EVENTS, k=3, window_s=WINDOW)["arms"]}
    assert (k1["2"]["clicked_requests"], k3["2"]["clicked_requests"]) == (0, 2)
    assert k1["1"]["mrr"] == k3["1"]["mrr"]


def test_several_model_names_label_arms_with_the_name_and_baseline_choice():
    imps = [imp("r1", "u1", "ab", name="reranker"), imp("r2", "u2", "ab", name="reranker_b")]
    events = [ev("u1", "b", "r1"), ev("u2", "a", "r2")]
    rep = online_report(imps, events, k=1, window_s=WINDOW, baseline="reranker_b:1")
    assert [a["arm"] for a in rep["arms"]] == ["reranker:1", "reranker_b:1"]
    assert rep["differences"][0]["arm"] == "reranker:1" and rep["differences"][0]["ctr_diff"] == -1.0
    with pytest.raises(ValueError, match="baseline"):
        online_report(imps, events, baseline="7")


def test_empty_store_gives_an_empty_report(tmp_path):
    rep = online_report([], [], k=10)
    assert rep["arms"] == [] and rep["differences"] == [] and rep["baseline"] is None
    assert "| arm |" in markdown(rep)


def test_written_files(tmp_path):
    rep = online_report(IMPRESSIONS, EVENTS, k=2, window_s=WINDOW)
    paths = write_online_report(rep, tmp_path)
    assert [p.name for p in paths] == ["online.json", "online.md", "online.png"]
    assert json.loads(paths[0].read_text())["arms"][0]["requests"] == 3
    md = paths[1].read_text()
    assert "| 1 | 3 | 2 | 1 | 3 (1) | 0.3333 | [0.0615, 0.7923] | 0.4444 |" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
