"""perf_analyzer input data, FLOP / peak arithmetic, the report writer, the A/B helpers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from perf.engines_bench import fixed_length_batches, flops_per_pair, machine_peak
from perf.perf_analyzer import _step, rows_at_bucket, write_input_data
from perf.report import write_report
from perf.workload import Prepared, Request, length_stats


def _prepared(lengths, width=128):
    n = len(lengths)
    ids = np.zeros((n, width), np.int64)
    mask = np.zeros((n, width), np.int64)
    for i, k in enumerate(lengths):
        ids[i, :k] = np.arange(101, 101 + k)
        mask[i, :k] = 1
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return Prepared(Request("1", tuple(str(i) for i in range(n))), "u", ["t"] * n, arrays)


def test_perf_analyzer_input_json(tmp_path):
    rows = rows_at_bucket([_prepared([3, 100]).arrays], 64)
    assert len(rows) == 2 and all(len(r["input_ids"]) == 64 for r in rows)
    assert rows[0]["attention_mask"].sum() == 3 and rows[1]["attention_mask"].sum() == 64
    data = json.loads(write_input_data(tmp_path / "in.json", rows).read_text())
    assert data["data"][0]["input_ids"]["shape"] == [64]
    assert data["data"][0]["input_ids"]["content"][:3] == [101, 102, 103]
    assert _step([1, 2, 3]) == 1 and _step([2, 4, 6]) == 2


def test_fixed_length_batches_are_full_rows():
    out = fixed_length_batches([_prepared([5, 70, 30] * 4)], 64, batch=4)
    assert len(out) == 3
    assert all(b["attention_mask"].all() and b["input_ids"].shape == (4, 64) for b in out)


def test_flops_and_peak():
    minilm = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
    f = flops_per_pair(minilm, 64)
    assert 1.3e9 < f < 1.5e9  # ~1.4 GFLOP per pair at 64 tokens
    p = machine_peak()
    assert p["cores"] >= 1 and p["peak_int8_gops"] >= p["peak_bf16_gflops"] >= p["peak_fp32_gflops"] > 0


def test_length_stats_padding_share():
    s = length_stats([_prepared([64, 32])])
    assert s["padding_share"] == 1 - 96 / 256 and s["buckets"] == {128: 1}


def test_report_renders_markdown_and_plots(tmp_path):
    res = {
        "budget": "short", "started": "now", "engine": "openvino_int8", "hf_dir": "x", "elapsed_s": 1.0,
        "machine": {"load_avg_start": "1", "load_avg_end": "2"},
        "machine_peak": {"cores": 2, "ghz": 2.6, "peak_fp32_gflops": 166.0, "peak_bf16_gflops": 332.0,
                         "peak_int8_gops": 664.0},
        "workload": {"pairs": 10, "tokens_p50": 60.0, "tokens_p95": 70.0, "tokens_max": 80,
                     "buckets": {128: 1}, "padding_share": 0.5},
        "engines": [{"variant": "ort_fp32", "workload": "seq64_b100", "pairs_per_s": 50.0, "min": 45.0, "max": 55.0,
                     "share_of_peak": 0.4, "peak_used": "fp32"},
                    {"variant": "ort_fp32", "workload": "real_requests", "pairs_per_s": 40.0, "min": 35.0, "max": 45.0}],
        "gateway_closed": [{"level": 1, "rps": 1.0, "pairs_per_s": 100.0, "p50_ms": 90.0, "p95_ms": 95.0,
                            "p99_ms": 99.0, "errors_by_code": ""}],
        "gateway_open": [{"level": 0.5, "rps": 0.5, "pairs_per_s": 50.0, "p50_ms": 90.0, "p95_ms": 95.0,
                          "p99_ms": 99.0, "errors_by_code": ""}],
        "gateway_candidates": [{"candidates": 10, "e2e_p50_ms": 10.0, "e2e_p99_ms": 12.0,
                                "triton_compute_p50_ms": 8.0, "overhead_p50_ms": 2.0, "overhead_p99_ms": 3.0}],
        "gateway_overhead": {"requests": 5, "overhead_p50_ms": 2.0, "overhead_p95_ms": 2.5, "overhead_p99_ms": 3.0,
                             "triton_compute_p50_ms": 8.0, "e2e_p50_ms": 10.0,
                             "cpu_pressure": {"before": {"avg10": 1.0, "avg60": 2.5}, "after": {"avg10": 3.0, "avg60": 4.25},
                                              "load_avg": "1.0 0.9 0.8"}},
        "side_by_side": {"threads": 2, "seconds": 1.0, "rounds": 1, "concurrency_c": 2,
                         "a_engine": {"median": 100.0, "min": 100.0, "max": 100.0, "values": [100.0]},
                         "c/a": {"median": 0.95, "min": 0.95, "max": 0.95, "values": [0.95]},
                         "c/b": {"median": 2.5, "min": 2.5, "max": 2.5, "values": [2.5]}},
    }
    text = write_report(tmp_path, res).read_text()
    assert "c/a = 0.95" in text and "50% of the tokens" in text and "p99 3.0 ms" in text
    assert "2.5% before, 4.2% after" in text
    assert (tmp_path / "gateway_closed.png").is_file() and (tmp_path / "engines.png").is_file()


def test_cpu_pressure_reads_psi_where_the_kernel_has_it():
    from perf.common import cpu_pressure

    p = cpu_pressure()
    if not Path("/proc/pressure/cpu").exists():
        assert p is None
    else:
        assert set(p) == {"avg10", "avg60"} and all(0.0 <= v <= 100.0 for v in p.values())


def _stats(per_size: dict[int, tuple[int, int]]) -> dict:
    return {"model_stats": [{"batch_stats": [
        {"batch_size": bs, "compute_input": {"count": n, "ns": 0}, "compute_infer": {"count": n, "ns": ns},
         "compute_output": {"count": n, "ns": 0}} for bs, (n, ns) in per_size.items()]}]}


def test_compute_wall_from_statistics_deltas():
    from perf.loadgen import _executions, compute_wall_ms

    before = _stats({64: (1, 300_000_000), 36: (1, 150_000_000)})
    after = _stats({64: (2, 600_000_000), 36: (2, 350_000_000)})
    assert compute_wall_ms(before, after, instances=1) == (500.0, 500.0, 2)  # one instance: in sequence
    assert compute_wall_ms(before, after, instances=2) == (300.0, 500.0, 2)  # two: side by side
    assert _executions(after) - _executions(before) == 2


def test_ab_summary_reports_each_gateway_and_the_difference():
    from perf.ab_gateway import summarize

    def rows(overheads):
        return [{"code": "OK", "e2e_ms": 30.0 + o, "triton_compute_ms": 30.0, "triton_queue_ms": 0.1,
                 "overhead_ms": o, "gateway_only_ms": o - 1.0, "transport_ms": 1.0} for o in overheads]

    s = summarize({"base": rows([4.0] * 99 + [9.0]), "this tree": rows([3.5] * 100)}, 100)
    assert s["base"]["overhead_p50_ms"] == 4.0 and s["this tree"]["overhead_p50_ms"] == 3.5
    assert s["difference"]["overhead_p50_ms"] == -0.5 and s["difference"]["overhead_p99_ms"] < -0.5
    assert s["base"]["requests"] == 100


def test_ab_worktree_is_a_checkout_of_the_ref_and_is_removed():
    from perf.ab_gateway import worktree
    from server.settings import PROJECT_ROOT

    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout: no git worktree to make")
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with worktree("HEAD") as tree:
        got = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert got == head and (tree / "server" / "devstack.py").is_file()
    assert not tree.exists()
