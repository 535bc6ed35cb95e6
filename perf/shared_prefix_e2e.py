"""rerankd end to end at saturation: a pairwise version vs a shared-prefix version.

Each version is served as it was exported (its own engine files) by a real Triton + gateway
on the same store and the same MovieLens requests (100 candidates each); a closed-loop load
at a few concurrencies gives served pairs/s, and the version's engine run in this process
through the Triton backend's own ``load_scorer`` on the same requests gives (a), so c/a says
how much of the engine's speed reaches callers. Versions alternate in rounds (the machine is
shared and its load drifts).

    python -m perf.shared_prefix_e2e --pairwise var/warm-repo/reranker/2 --shared model_repository/reranker/1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np

from contract.model_spec import Manifest
from evaluation.scoring import VersionScorer
from export.engines import ENGINE_PARAMETERS
from export.write_repo import DEFAULT_PARAMETERS, write_config
from perf import workload as W
from perf.common import cpu_model, cpu_pressure, log
from perf.loadgen import build_messages, closed_loop
from perf.stack import BACKEND_SRC, MODEL, launch
from server.settings import PROJECT_ROOT


def serve_repo(version_dir: Path, out: Path) -> Path:
    """A model repository holding ``version_dir`` as version 1 with today's backend and a
    config.pbtxt written from its spec and engine."""
    if out.exists():
        shutil.rmtree(out)
    dst = out / MODEL / "1"
    shutil.copytree(version_dir, dst)
    shutil.copyfile(BACKEND_SRC, dst / "model.py")
    manifest = Manifest.read(dst / "manifest.json")
    engine = manifest.engine or "onnxruntime"
    write_config(out, manifest.spec, parameters={**DEFAULT_PARAMETERS, **ENGINE_PARAMETERS[engine], "engine": engine})
    return dst


def in_process(version_dir: Path, prepared, rounds: int = 2) -> float:
    """Pairs/s of the version's engine in this process (the Triton backend's code, 2 threads)."""
    scorer = VersionScorer(version_dir, threads=2)
    scorer.score(prepared[0].user_text, prepared[0].item_texts)  # warm-up
    pairs, t0 = 0, time.perf_counter()
    for _ in range(rounds):
        for p in prepared:
            scorer.score(p.user_text, p.item_texts)
            pairs += len(p.item_texts)
    return pairs / (time.perf_counter() - t0)


def workers_sweep(vd: Path, db: Path, out: Path, messages, args, counts: list[int], concurrency: int,
                  engine_pairs_per_s: float) -> dict[int, dict]:
    """Served pairs/s of one version by gateway process count (``RERANKD_SERVER_WORKERS``)."""
    rows: dict[int, dict] = {}
    for w in counts:
        with launch(vd.parents[1], db, out / "logs", log=log, env={"RERANKD_SERVER_WORKERS": str(w)}) as stack:
            best = 0.0
            for c in (concurrency // 2, concurrency):
                s = asyncio.run(closed_loop(stack.addr, messages, c, args.duration, candidates=args.candidates)).summary()
                log(f"    workers {w}: concurrency {c}: {s['pairs_per_s']:.0f} pairs/s, p50 {s['p50_ms']:.1f} ms, "
                    f"errors {s['errors']}")
                best = max(best, s["pairs_per_s"])
        rows[w] = {"pairs_per_s": best, "c_over_a": best / engine_pairs_per_s}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairwise", type=Path, required=True, help="a pairwise version folder")
    ap.add_argument("--shared", type=Path, required=True, help="a shared-prefix version folder")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--concurrency", default="4,8,16")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per closed-loop level")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", default="", help="also serve the shared-prefix version with these "
                    "gateway process counts (e.g. 1,2,3: `rerankd serve --workers N`), closed loop at the "
                    "highest concurrency and twice it")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf-shared-prefix")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    db = W.load_store(out / "store.db", log=log)
    requests = W.make_requests(48, args.candidates, seed=1000)
    messages = build_messages(requests)
    levels = [int(c) for c in args.concurrency.split(",")]
    versions = {"pairwise": serve_repo(args.pairwise, out / "repo-pairwise"),
                "shared_prefix": serve_repo(args.shared, out / "repo-shared")}
    served: dict[str, dict[int, list[float]]] = {k: {c: [] for c in levels} for k in versions}
    engine: dict[str, list[float]] = {k: [] for k in versions}
    for r in range(args.rounds):
        for name in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
            vd = versions[name]
            prepared = W.GatewayTexts(db, vd).prepare(requests[:16])
            engine[name].append(in_process(vd, prepared))
            with launch(vd.parents[1], db, out / "logs", log=log) as stack:
                for c in levels:
                    run = asyncio.run(closed_loop(stack.addr, messages, c, args.duration, candidates=args.candidates))
                    s = run.summary()
                    served[name][c].append(s["pairs_per_s"])
                    log(f"    round {r + 1} {name}: concurrency {c}: {s['pairs_per_s']:.0f} pairs/s, p50 "
                        f"{s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, errors {s['errors']}")
            log(f"    round {r + 1} {name}: in-process engine {engine[name][-1]:.0f} pairs/s")
    result = {"cpu": cpu_model(), "cpu_pressure": cpu_pressure(), "candidates": args.candidates,
              "duration_s": args.duration, "rounds": args.rounds, "versions": {}}
    for name, vd in versions.items():
        m = Manifest.read(vd / "manifest.json")
        by_level = {c: float(np.mean(v)) for c, v in served[name].items()}
        best = max(by_level, key=by_level.get)
        a = float(np.mean(engine[name]))
        result["versions"][name] = {"source": str(args.pairwise if name == "pairwise" else args.shared),
                                    "engine": m.engine, "scoring": m.spec.scoring,
                                    "served_pairs_per_s": by_level, "saturation_pairs_per_s": by_level[best],
                                    "at_concurrency": best, "in_process_pairs_per_s": a,
                                    "c_over_a": by_level[best] / a}
    if args.workers:
        result["workers"] = workers_sweep(versions["shared_prefix"], db, out, messages, args,
                                          [int(w) for w in args.workers.split(",")], 2 * max(levels),
                                          result["versions"]["shared_prefix"]["in_process_pairs_per_s"])
    p, s = result["versions"]["pairwise"], result["versions"]["shared_prefix"]
    result["served_ratio"] = s["saturation_pairs_per_s"] / p["saturation_pairs_per_s"]
    (out / "shared_prefix_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"==> served at saturation, {args.candidates} candidates ({result['cpu']}): pairwise "
        f"{p['saturation_pairs_per_s']:.0f} pairs/s (c/a {p['c_over_a']:.2f}), shared prefix "
        f"{s['saturation_pairs_per_s']:.0f} pairs/s (c/a {s['c_over_a']:.2f}): {result['served_ratio']:.1f}x; "
        f"wrote {out / 'shared_prefix_e2e.json'}")
    for w, row in result.get("workers", {}).items():
        log(f"    shared prefix, {w} gateway process(es): {row['pairs_per_s']:.0f} pairs/s (c/a {row['c_over_a']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
