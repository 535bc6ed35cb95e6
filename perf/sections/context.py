"""What every section of the suite is given: the budget, where results go, the log, and the
model version Triton serves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perf.common import log

THREADS = 2  # the machine's cores: threads of the in-process engines


@dataclass(frozen=True)
class Budget:
    """Seconds per measurement, rounds, sample counts of one run of the suite."""

    engine_s: float  # [1/6] seconds per engine variant and workload, per round
    engine_rounds: int
    engine_batches: int  # batches per workload
    quality_requests: int  # requests scored for agreement with fp32
    tune_s: float  # [3/6] seconds per config per pass (closed loop, c=4)
    tune_warm: float
    tune_passes: int
    pa_ms: int  # [4/6] perf_analyzer measurement window
    pa_conc: tuple[int, ...]
    gw_s: float  # [5/6] closed loop: shortest window per concurrency
    gw_conc: tuple[int, ...]
    open_s: float  # open loop: seconds per rate
    open_rates: tuple[float, ...]  # fractions of the closed loop's best req/s
    cand_n: int  # sequential requests per candidate count
    cands: tuple[int, ...]
    overhead_n: int  # sequential requests of the gateway-overhead figure
    effect_n: int  # event-to-effect samples
    side_s: float  # [6/6] seconds per system per round
    side_rounds: int
    tune_grid: str  # "short" or "full" (triton.tune_grid)


BUDGETS = {
    "short": Budget(engine_s=1.5, engine_rounds=3, engine_batches=3, quality_requests=6,
                    tune_s=9.0, tune_warm=2.5, tune_passes=2, pa_ms=2000, pa_conc=(1, 2, 4), gw_s=5.0,
                    gw_conc=(1, 2, 4, 8), open_s=8.0, open_rates=(0.5, 0.8, 1.0), cand_n=6,
                    cands=(10, 50, 100, 200, 500), overhead_n=300, effect_n=50, side_s=4.0, side_rounds=3,
                    tune_grid="short"),
    # a quick end-to-end check of the suite itself (numbers too short to quote)
    "smoke": Budget(engine_s=0.3, engine_rounds=1, engine_batches=1, quality_requests=2,
                    tune_s=1.5, tune_warm=0.5, tune_passes=1, pa_ms=1000, pa_conc=(1,), gw_s=1.5, gw_conc=(1, 2),
                    open_s=2.0, open_rates=(0.5,), cand_n=2, cands=(10, 100),
                    overhead_n=5, effect_n=3, side_s=1.0, side_rounds=1, tune_grid="short"),
    "full": Budget(engine_s=3.0, engine_rounds=5, engine_batches=6, quality_requests=30,
                   tune_s=20.0, tune_warm=3.0, tune_passes=3, pa_ms=5000, pa_conc=(1, 2, 4, 8), gw_s=15.0,
                   gw_conc=(1, 2, 4, 8, 16, 32), open_s=30.0, open_rates=(0.25, 0.5, 0.75, 0.9, 1.0, 1.2),
                   cand_n=20, cands=(10, 50, 100, 200, 500), overhead_n=1000, effect_n=200, side_s=10.0,
                   side_rounds=5, tune_grid="full"),
}


@dataclass(frozen=True)
class Suite:
    """One run of the suite: results go to ``out`` (CSV per section), scratch to ``work``."""

    out: Path
    budget: Budget
    log: Callable[[str], None] = field(default=log)
    threads: int = THREADS

    @property
    def work(self) -> Path:
        return self.out / "work"


@dataclass(frozen=True)
class Served:
    """The model version Triton serves: its folder, its config.pbtxt parameters, and the
    config (a ``triton.tune_grid`` row) applied to it; None: the exported config."""

    version_dir: Path
    params: dict[str, str]
    config: dict | None = None

    @property
    def instances(self) -> int:
        return self.config["instances"] if self.config else 1
