"""The suite's assembly (``perf.run_all``): which section's result lands under which
results.json key, with every section replaced by a stub; and the sections' pure helpers."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from perf import run_all
from perf.common import overhead_summary, write_csv
from perf.sections import engines, gateway, setup, side, triton
from perf.sections.context import BUDGETS, Served, Suite
from perf.sections.engines import EnginesResult
from perf.sections.gateway import GatewayResult
from perf.sections.triton import TuningResult, listed, tune_grid


def test_write_csv_unions_columns_and_writes_json_for_containers(tmp_path):
    write_csv(tmp_path / "none.csv", [])
    assert not (tmp_path / "none.csv").exists()
    write_csv(tmp_path / "x.csv", [{"a": 1, "b": [1, 2]}, {"c": {"k": 1}, "a": 2}])
    with open(tmp_path / "x.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["a", "b", "c"]
    assert rows[0]["b"] == "[1, 2]" and rows[1]["c"] == '{"k": 1}' and rows[1]["b"] == ""


def test_overhead_summary_percentiles_and_gateway_stages():
    rows = [{"code": "OK", "e2e_ms": 10.0, "overhead_ms": 2.0, "gw_tokenize_ms": 1.0}] * 4 + [{"code": "UNAVAILABLE"}]
    s = overhead_summary(rows, 100)
    assert s["requests"] == 4 and s["errors"] == 1 and s["candidates"] == 100
    assert s["overhead_p99_ms"] == 2.0 and s["gw_tokenize_p50_ms"] == 1.0 and "triton_compute_p50_ms" not in s
    assert s["pairs_per_s_sequential"] == 100 / 0.01
    assert overhead_summary([{"code": "DEADLINE_EXCEEDED"}], 10) == {"candidates": 10, "requests": 0, "errors": 1}


def test_tune_grid_starts_from_the_exported_config():
    spec = SimpleNamespace(preferred_batch_sizes=[16, 32], max_queue_delay_us=500, max_batch_size=32)
    short, full = tune_grid("short", spec), tune_grid("full", spec)
    assert len(short) == 5 and len(full) == 11 and full[:5] == short
    assert short[0] == {"instances": 1, "threads": 2, "preferred": (16, 32), "delay_us": 500, "max_batch": 32,
                        "sub_batch": "32"}
    assert listed(short[1])["preferred"] == [16, 32, 64]


def test_side_by_side_runs_at_the_smallest_saturating_concurrency():
    closed = [{"level": 1, "pairs_per_s": 50.0}, {"level": 2, "pairs_per_s": 90.0},
              {"level": 4, "pairs_per_s": 99.0}, {"level": 8, "pairs_per_s": 100.0}]
    assert side.saturation_concurrency(closed) == 4
    assert side.saturation_concurrency([]) == 4


def test_served_instances():
    assert Served(Path("1"), {}).instances == 1
    assert Served(Path("1"), {}, {"instances": 2}).instances == 2


@pytest.fixture
def stubbed(monkeypatch, tmp_path):
    """Every section and the stack replaced; returns the calls made, in order."""
    calls: list[tuple] = []
    vd, tuned = tmp_path / "repo" / "1", tmp_path / "repo" / "2"
    first, kept = Served(vd, {"engine": "onnxruntime"}), Served(tuned, {"engine": "onnxruntime"}, {"instances": 2})
    closed = [{"level": 1, "rps": 1.0, "pairs_per_s": 100.0}]

    def stub(module, name, result):
        def fn(*args, **kwargs):
            calls.append((name, args, kwargs))
            if isinstance(result, Exception):
                raise result
            return result
        monkeypatch.setattr(module, name, fn)

    stub(setup, "serve_version", first)
    stub(setup, "load_workload", setup.Workload(tmp_path / "store.db", ["p"], {"pairs": 1}))
    stub(setup, "gateway_messages", (["m"], {10: ["m10"]}))
    stub(setup, "max_batch_size", 64)
    stub(engines, "variant_version", tmp_path / "variants_version")
    stub(engines, "section_engines", EnginesResult([{"variant": "v"}], [{"variant": "q"}], {"cores": 2}, 1.4e9))
    stub(engines, "section_shared_prefix", {"ratio": 8.0})
    stub(triton, "section_tuning", TuningResult([{"instances": 2}], kept))
    stub(triton, "section_perf_analyzer", RuntimeError("no perf_analyzer"))
    stub(gateway, "section_gateway", GatewayResult({"instances": 1}, {"samples": 3}, closed, [{"level": 0.5}],
                                                   [{"candidates": 10}], {"overhead_p50_ms": 2.0}))
    stub(side, "section_side", {"c/a": {"median": 0.9}})

    @contextlib.contextmanager
    def launch(repo, db, logs, log):
        calls.append(("launch", (repo, db, logs), {}))
        yield SimpleNamespace(addr="127.0.0.1:1")

    monkeypatch.setattr("perf.stack.launch", launch)
    monkeypatch.setattr("perf.report.write_report", lambda out, res: calls.append(("write_report", (out, res), {})))
    return SimpleNamespace(calls=calls, first=first, kept=kept, closed=closed)


def test_main_files_each_sections_result_under_its_key(stubbed, tmp_path):
    out = tmp_path / "perf"
    assert run_all.main(["--budget", "smoke", "--hf-dir", str(tmp_path / "hf"), "--out", str(out),
                         "--engine", "onnxruntime", "--overhead-n", "7"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res) == ["budget", "started", "engine", "hf_dir", "model_version", "machine", "workload",
                         "engines", "engine_quality", "machine_peak", "flops_per_pair_seq64",
                         "shared_prefix", "tuning", "served_config", "perf_analyzer_error",
                         "sequential_config", "event_effect", "gateway_closed", "gateway_open",
                         "gateway_candidates", "gateway_overhead", "side_by_side", "elapsed_s"]
    assert res["engines"] == [{"variant": "v"}] and res["engine_quality"] == [{"variant": "q"}]
    assert res["shared_prefix"] == {"ratio": 8.0}
    assert res["machine_peak"] == {"cores": 2} and res["flops_per_pair_seq64"] == 1.4e9
    assert res["tuning"] == [{"instances": 2}] and res["served_config"] == {"instances": 2}
    assert res["perf_analyzer_error"] == "no perf_analyzer" and "perf_analyzer" not in res
    assert res["gateway_closed"] == stubbed.closed and res["gateway_overhead"] == {"overhead_p50_ms": 2.0}
    assert res["event_effect"] == {"samples": 3} and res["sequential_config"] == {"instances": 1}
    assert res["side_by_side"] == {"c/a": {"median": 0.9}} and res["workload"] == {"pairs": 1}
    assert set(res["machine"]) == {"python", "cpu", "load_avg_start", "load_avg_end"}
    by_name = {name: (args, kwargs) for name, args, kwargs in stubbed.calls}
    ctx = by_name["serve_version"][0][0]
    assert isinstance(ctx, Suite) and ctx.out == out and ctx.budget.overhead_n == 7
    assert ctx.budget.effect_n == BUDGETS["smoke"].effect_n and (out / "work").is_dir()
    # what tuning kept is served to everything after it; side by side gets the closed loop
    assert by_name["section_tuning"][0][2] is stubbed.first
    assert by_name["section_perf_analyzer"][0][3] == stubbed.kept.version_dir
    assert by_name["section_gateway"][0][4] is stubbed.kept and by_name["section_gateway"][0][5] == 64
    assert by_name["section_side"][0][2] is stubbed.kept and by_name["section_side"][0][5] == stubbed.closed
    assert [c[0] for c in stubbed.calls][-1] == "write_report"


def test_main_runs_only_the_sections_asked_for(stubbed, tmp_path):
    out = tmp_path / "perf"
    run_all.main(["--hf-dir", str(tmp_path / "hf"), "--out", str(out), "--only", "side"])
    res = json.loads((out / "results.json").read_text())
    assert "side_by_side" in res and not {"engines", "tuning", "perf_analyzer_error", "gateway_closed"} & set(res)
    names = [c[0] for c in stubbed.calls]
    assert "section_engines" not in names and "section_tuning" not in names
    side_args = next(args for name, args, _ in stubbed.calls if name == "section_side")
    assert side_args[2] is stubbed.first and side_args[5] == []


def test_main_rejects_an_unknown_engine(stubbed, tmp_path):
    with pytest.raises(SystemExit):
        run_all.main(["--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "perf"), "--engine", "nope"])
