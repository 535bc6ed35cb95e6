"""reports/perf/report.md and the PNG plots, from the suite's results dict."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, nd=1) -> str:
    if x is None or x == "":
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _table(rows: list[dict], cols: list[tuple[str, str, int]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "| " + " | ".join("---" for _ in cols) + " |"
    body = ["| " + " | ".join(_f(r.get(c[0]), c[2]) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _save(fig, path: Path) -> str:
    """Write ``fig`` as ``path`` (PNG) and free it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plots(out: Path, res: dict) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    eng = [r for r in res.get("engines", []) if r["workload"] == "seq64_b100"]
    real = {r["variant"]: r["pairs_per_s"] for r in res.get("engines", []) if r["workload"] == "real_requests"}
    if eng:
        fig, ax = plt.subplots(figsize=(9, 4))
        names = [r["variant"] for r in eng]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [r["pairs_per_s"] for r in eng], 0.4, label="seq 64, batch 100",
               yerr=[[r["pairs_per_s"] - r["min"] for r in eng], [r["max"] - r["pairs_per_s"] for r in eng]])
        ax.bar([i + 0.2 for i in x], [real.get(n, 0) for n in names], 0.4, label="real requests (100 cand.)")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("pairs/s (2 threads)")
        ax.set_title("CPU engines in-process (median of rounds; bars: min-max)")
        ax.legend()
        made.append(_save(fig, out / "engines.png"))
    closed = res.get("gateway_closed", [])
    if closed:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["pairs_per_s"] for r in closed], [r["p99_ms"] for r in closed], "o-", label="p99")
        ax.plot([r["pairs_per_s"] for r in closed], [r["p50_ms"] for r in closed], "s--", label="p50")
        for r in closed:
            ax.annotate(f"c={int(r['level'])}", (r["pairs_per_s"], r["p99_ms"]))
        ax.set_xlabel("pairs/s")
        ax.set_ylabel("latency ms")
        ax.set_title("gateway closed loop, 100 candidates")
        ax.legend()
        made.append(_save(fig, out / "gateway_closed.png"))
    opened = res.get("gateway_open", [])
    if opened:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in ("p50_ms", "p95_ms", "p99_ms"):
            ax.plot([r["level"] for r in opened], [r[k] for r in opened], "o-", label=k[:-3])
        ax.set_xlabel("offered req/s (Poisson)")
        ax.set_ylabel("latency ms")
        ax.set_yscale("log")
        ax.set_title("gateway open loop, 100 candidates")
        ax.legend()
        made.append(_save(fig, out / "gateway_open.png"))
    cands = [r for r in res.get("gateway_candidates", []) if "e2e_p50_ms" in r]
    if cands:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["candidates"] for r in cands]
        ax.plot(xs, [r["e2e_p50_ms"] for r in cands], "o-", label="end to end p50")
        ax.plot(xs, [r["e2e_p99_ms"] for r in cands], "o--", label="end to end p99")
        ax.plot(xs, [r["triton_compute_p50_ms"] for r in cands], "s-", label="Triton compute p50")
        ax.plot(xs, [r["overhead_p50_ms"] for r in cands], "^-", label="overhead p50")
        ax.set_xlabel("candidates per request")
        ax.set_ylabel("ms (sequential requests)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("latency vs candidates")
        made.append(_save(fig, out / "gateway_candidates.png"))
    pa = res.get("perf_analyzer", [])
    if pa:
        fig, ax = plt.subplots(figsize=(6, 4))
        for seq in sorted({r["seq"] for r in pa}):
            rs = [r for r in pa if r["seq"] == seq]
            ax.plot([int(r["Concurrency"]) for r in rs], [r["pairs_per_s"] for r in rs], "o-", label=str(seq))
        ax.set_xlabel("perf_analyzer concurrency")
        ax.set_ylabel("pairs/s")
        ax.set_title("model level (perf_analyzer, gRPC)")
        ax.legend()
        made.append(_save(fig, out / "perf_analyzer.png"))
    return made


def write_report(out: Path, res: dict) -> Path:
    made = plots(out, res)
    L = [f"# rerankd performance ({res.get('budget')} budget, {res.get('started')})", ""]
    m = res.get("machine", {})
    peak = res.get("machine_peak", {})
    L += [f"Machine: {peak.get('cpu', '')} {peak.get('cores', '?')} cores, peak figures at {_f(peak.get('ghz'), 2)} GHz "
          f"(base clock {_f(peak.get('base_ghz'), 2)} GHz) "
          f"(avx512_bf16={peak.get('avx512_bf16')}, avx512_vnni={peak.get('avx512_vnni')}, amx={peak.get('amx')}); "
          f"load average at start {m.get('load_avg_start')}, end {m.get('load_avg_end')} "
          "(the machine is shared: other processes use CPU during the run; ratios are taken within one round).",
          f"Served engine: `{res.get('engine')}`; checkpoint: `{res.get('hf_dir')}` "
          f"{('(version ' + res['model_version'] + ')') if res.get('model_version') else ''}. "
          f"Suite time {_f(res.get('elapsed_s'), 0)} s.", ""]
    w = res.get("workload")
    if w:
        L += ["## Workload", "",
              f"MovieLens-100K users and random catalog items, rendered and tokenized like the gateway: "
              f"{w['pairs']} pairs, real length p50 {_f(w['tokens_p50'], 0)} / p95 {_f(w['tokens_p95'], 0)} / "
              f"max {w['tokens_max']} tokens; requests per bucket {w['buckets']}; "
              f"**{w['padding_share']:.0%} of the tokens the gateway sends are padding**.", ""]
    if res.get("engines"):
        fl = res.get("flops_per_pair_seq64")
        L += ["## Engines in-process (2 threads)", "",
              f"Median of interleaved rounds (min-max). seq64: real token ids made exactly 64 long, 100 pairs a call. "
              f"real: real requests (100 candidates, bucket-padded as sent). `+notrim`: without the backend's "
              f"sort-by-length + trim. {'FLOPs per pair at seq 64: ' + _f(fl / 1e9, 2) + ' G.' if fl else ''} "
              f"Nominal peak: fp32 {_f(peak.get('peak_fp32_gflops'), 0)} GFLOP/s, bf16 "
              f"{_f(peak.get('peak_bf16_gflops'), 0)} GFLOP/s, int8 {_f(peak.get('peak_int8_gops'), 0)} GOP/s.", ""]
        rows = {}
        for r in res["engines"]:
            d = rows.setdefault(r["variant"], {"variant": r["variant"]})
            k = "s64" if r["workload"] == "seq64_b100" else "real"
            d[k] = r["pairs_per_s"]
            d[k + "_range"] = f"{r['min']:.0f}-{r['max']:.0f}"
            if "share_of_peak" in r:
                d["share"] = f"{100 * r['share_of_peak']:.0f}% of {r['peak_used']}"
        L += [_table(list(rows.values()), [("variant", "variant", 0), ("s64", "pairs/s seq64", 0),
                                           ("s64_range", "range", 0), ("share", "share of peak", 0),
                                           ("real", "pairs/s real", 0), ("real_range", "range", 0)]), ""]
    if res.get("engine_quality"):
        L += ["### Agreement with fp32 (per request, MovieLens)", "",
              _table(res["engine_quality"], [("variant", "variant", 0), ("requests", "requests", 0),
                                             ("spearman_mean", "Spearman mean", 4), ("spearman_min", "min", 4),
                                             ("top10_overlap_mean", "top-10 overlap", 3),
                                             ("max_abs_diff", "max abs diff", 4), ("score_std", "fp32 score std", 4),
                                             ("accepted", "within tolerance", 0)]), ""]
    val_path = out / "engine_validation.json"
    if val_path.exists():
        val = json.loads(val_path.read_text())
        L += ["### Validation ranking quality per engine (`python -m perf.engine_quality`)", "",
              f"Checkpoint `{val.get('hf_dir') or val.get('model_version')}`; validation lists (ItemKNN top-50, "
              f"history = train) of {val['users_scored']} of the {val['covered_users']} users whose target is "
              f"among the candidates; accepted when NDCG@10 over all {val['all_users']} users moves by at most "
              f"{val['tolerance_ndcg@10_all_users']} vs fp32.", "",
              _table(val["rows"], [("variant", "variant", 0), ("ndcg@10_scored_users", "NDCG@10 (scored users)", 4),
                                   ("ndcg_delta", "delta", 4), ("ndcg_delta_all_users", "delta (all users)", 4),
                                   ("hr@10_scored_users", "HR@10", 3), ("spearman_mean", "Spearman vs fp32", 4),
                                   ("top10_overlap", "top-10 overlap", 3), ("seconds", "seconds", 1),
                                   ("accepted", "accepted", 0)]), ""]
    sp = res.get("shared_prefix")
    if sp:
        rate, tok = sp["pairs_per_s"], sp["tokens_per_request"]
        L += ["## Shared prefix vs pairwise (in process)", "",
              f"Same weights, {sp['engine']}, {sp['threads']} threads, {sp['candidates']} candidates, "
              f"{sp['requests']} requests x {sp['rounds']} alternating rounds (`perf.shared_prefix_bench`).", "",
              "| layout | pairs/s | tokens a request |", "| --- | --- | --- |",
              f"| pairwise (a row per pair) | {rate['pairwise']:.0f} | {tok['pairwise']:.0f} |",
              f"| shared prefix (one sequence per request) | {rate['shared_prefix']:.0f} | {tok['shared_prefix']:.0f} |",
              "", f"Ratio: **{sp['ratio']:.1f}x**.", ""]
    if res.get("tuning"):
        L += ["## Triton config tuning (closed loop, concurrency 4, 100 candidates; passes interleave the configs)", "",
              _table(res["tuning"], [("instances", "instances", 0), ("threads", "threads", 0),
                                     ("max_batch", "max batch", 0), ("preferred", "preferred", 0),
                                     ("delay_us", "queue delay us", 0), ("sub_batch", "sub batch", 0),
                                     ("pairs_per_s", "pairs/s (median)", 0), ("pairs_per_s_runs", "per pass", 0),
                                     ("p50_ms", "p50 ms", 0), ("p99_ms", "p99 ms", 0), ("load_avg", "load avg", 0)]),
              "", f"Kept: `{res.get('served_config')}`", ""]
    if res.get("perf_analyzer"):
        L += ["## Model level: perf_analyzer (gRPC, real token ids)", "",
              _table(res["perf_analyzer"], [("seq", "input", 0), ("batch", "batch", 0), ("Concurrency", "concurrency", 0),
                                            ("requests_per_s", "requests/s", 2), ("pairs_per_s", "pairs/s", 0),
                                            ("p50 latency", "p50 us", 0), ("p99 latency", "p99 us", 0),
                                            ("Server Queue", "queue us", 0), ("Server Compute Infer", "compute us", 0)]), ""]
    elif res.get("perf_analyzer_error"):
        L += ["## Model level: perf_analyzer", "", f"failed: {res['perf_analyzer_error']}", ""]
    if res.get("gateway_closed"):
        cols = [("level", "concurrency", 0), ("rps", "req/s", 2), ("pairs_per_s", "pairs/s", 0), ("p50_ms", "p50 ms", 0),
                ("p95_ms", "p95 ms", 0), ("p99_ms", "p99 ms", 0), ("errors_by_code", "errors", 0), ("load_avg", "load avg", 0)]
        L += ["## Gateway: closed loop (100 candidates)", "", _table(res["gateway_closed"], cols), ""]
        L += ["## Gateway: open loop (Poisson arrivals, 100 candidates)", "",
              _table(res.get("gateway_open", []), [("level", "offered req/s", 2)] + cols[1:]), ""]
    if res.get("gateway_candidates"):
        L += ["## Latency vs candidates (sequential requests; overhead = end to end - Triton compute)", "",
              _table(res["gateway_candidates"], [
                  ("candidates", "candidates", 0), ("e2e_p50_ms", "e2e p50", 1), ("e2e_p99_ms", "e2e p99", 1),
                  ("triton_compute_p50_ms", "Triton compute p50", 1), ("triton_queue_p50_ms", "Triton queue p50", 1),
                  ("overhead_p50_ms", "overhead p50", 1), ("overhead_p99_ms", "overhead p99", 1),
                  ("gateway_only_p99_ms", "gateway-only p99", 1),
                  ("gw_features_p50_ms", "gw features", 1), ("gw_tokenize_p50_ms", "gw tokenize", 1),
                  ("gw_infer_p50_ms", "gw infer", 1), ("pairs_per_s_sequential", "pairs/s", 0)]), ""]
    ov = res.get("gateway_overhead")
    if ov and "overhead_p99_ms" in ov:
        L += [f"**Gateway overhead at 100 candidates** ({ov['requests']} sequential requests): "
              f"p50 {ov['overhead_p50_ms']:.1f} ms, p95 {ov['overhead_p95_ms']:.1f} ms, "
              f"p99 {ov['overhead_p99_ms']:.1f} ms (target p99 <= 5 ms); gateway only (end to end minus the "
              f"gateway's own Triton call) p50 {ov.get('gateway_only_p50_ms', float('nan')):.1f} / p99 "
              f"{ov.get('gateway_only_p99_ms', float('nan')):.1f} ms; Triton compute p50 "
              f"{ov['triton_compute_p50_ms']:.1f} ms, end to end p50 {ov['e2e_p50_ms']:.1f} ms.", ""]
        fl = ov.get("grpc_floor")
        if fl:
            L += [f"For scale, the gRPC floor: a `grpc.health.v1` Check on the same gateway, same blocking "
                  f"client, one call every {fl['gap_ms']:.0f} ms (the idle time a request spends waiting on "
                  f"Triton): p50 {fl['p50_ms']:.2f} ms, p99 {fl['p99_ms']:.2f} ms. A rerank request pays this "
                  "twice (caller -> gateway, gateway -> Triton).", ""]
        cp = ov.get("cpu_pressure") or {}
        if cp.get("before") and cp.get("after"):
            L += [f"CPU pressure while it ran (Linux PSI: share of time runnable tasks waited for a CPU, all "
                  f"processes including this suite's own, 60 s average): {cp['before']['avg60']:.1f}% before, {cp['after']['avg60']:.1f}% after "
                  f"(load average {cp.get('load_avg', '?')}). The p99 moves with it on a shared machine.", ""]
    ev = res.get("event_effect")
    if ev:
        L += [f"**Event to effect through gRPC** ({ev['samples']} users never seen before, {ev['candidates']} "
              f"candidates, one gateway): `RecordEvents` of one click p50 {ev['record_p50_ms']:.1f} / p99 "
              f"{ev['record_p99_ms']:.1f} ms; from sending the event to receiving the next `Rerank` that "
              f"reflects it p50 {ev['effect_p50_ms']:.1f} / p99 {ev['effect_p99_ms']:.1f} ms. The ranking "
              f"changed in {ev['changed']} of {ev['samples']} samples.", ""]
    s = res.get("side_by_side")
    if s:
        rows = [{"system": k, **v} for k, v in s.items() if isinstance(v, dict)]
        L += [f"## Side by side (same pairs, {s['threads']} threads, {s['rounds']} interleaved rounds of "
              f"{s['seconds']} s; (c) closed loop concurrency {s['concurrency_c']})", "",
              _table(rows, [("system", "system", 0), ("median", "median", 2), ("min", "min", 2), ("max", "max", 2),
                            ("values", "per round", 0)]), "",
              f"pairs/s; c/a = {s['c/a']['median']:.2f} (target >= 0.9), c/b = {s['c/b']['median']:.2f} (target >= 2).", ""]
    L += [f"![{p}]({p})" for p in made]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path


if __name__ == "__main__":  # re-render from results.json
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "reports" / "perf"
    print(write_report(d, json.loads((d / "results.json").read_text())))
