"""[6/6] Side by side on the same requests: (a) the engine in-process, (b) CrossEncoder.predict,
(c) rerankd over gRPC; ratios c/a and c/b."""

from __future__ import annotations

from pathlib import Path

from perf.common import load_avg, write_csv
from perf.sections.context import Served, Suite


def saturation_concurrency(closed: list[dict]) -> int:
    """The smallest concurrency of the closed-loop sweep within 3% of its best throughput
    (4 without a sweep)."""
    best = max((s["pairs_per_s"] for s in closed), default=0.0)
    return int(min((s["level"] for s in closed if s["pairs_per_s"] >= 0.97 * best), default=4))


def section_side(ctx: Suite, stack, served: Served, hf_dir: Path, prepared: list, closed: list[dict]) -> dict:
    """-> "side_by_side" (side_by_side.csv). ``closed``: the gateway's closed-loop sweep, if run."""
    from perf import side_by_side

    # (c) at saturation, as the issue defines c/a (c=2 left two instances idle between requests).
    conc = saturation_concurrency(closed)
    ctx.log(f"==> [6/6] side by side (a) engine (b) CrossEncoder (c) rerankd at concurrency {conc} "
            f"(load avg {load_avg()})")
    # (a) gets the machine's threads in one engine, whatever the served instance layout.
    r = side_by_side.run(served.version_dir, {**served.params, "intra_op_threads": str(ctx.threads)}, hf_dir,
                         prepared, stack.addr, threads=ctx.threads, seconds=ctx.budget.side_s,
                         rounds=ctx.budget.side_rounds, concurrency=conc, log=ctx.log)
    rows = [{"system": k, **v} for k, v in r.items() if isinstance(v, dict)]
    write_csv(ctx.out / "side_by_side.csv", rows)
    return r
