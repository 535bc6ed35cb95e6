"""Latency of the rules stage alone (no model, no I/O).

    python -m perf.bench_rules [--iterations N] [--top-n 20]

Prints a markdown table of p50/p99 microseconds per ``apply_rules`` call for 100 and 1000
candidates with a realistic rule set: already-interacted + unavailable + attribute filters,
blend, two boosts, two diversity caps and two pins; plus the same with MMR, no rules at
all, and the cost of applying per-request overrides.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from server.rules.engine import apply_rules
from server.rules.model import RuleCandidate
from server.rules.overrides import apply_overrides
from server.rules.parse import parse_rule_set
from server.types import Event

NOW = 1_700_000_000.0
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]

RULES = {
    "exclude_interacted": {"event_types": ["purchase", "click"], "window_s": "30d"},
    "exclude_unavailable": True,
    "filters": [{"name": "no_adult", "when": {"attribute": "rating", "in": ["NC-17", "X"]}}],
    "blend": {"model_weight": 0.8, "retrieval_weight": 0.2, "model_normalize": "sigmoid"},
    "boosts": [
        {"name": "new_releases", "when": {"attribute": "year", "range": {"min": 2015}}, "multiply": 1.15},
        {"name": "demote_horror", "when": {"attribute": "genres", "equals": "Horror"}, "add": -0.05},
    ],
    "diversity": [
        {"name": "genre_cap", "attribute": "genres", "max_per_value": 3, "window": 10},
        {"name": "seller_cap", "attribute": "seller", "max_per_value": 2, "window": 20},
    ],
    "pins": [{"item_id": "m00007", "position": 1}, {"item_id": "m00042", "position": 5}],
    "overridable": ["blend.retrieval_weight", "pins"],
}


def make_candidates(n: int, rng: random.Random) -> list[RuleCandidate]:
    out = []
    for i in range(n):
        attrs = {
            "genres": "|".join(rng.sample(GENRES, rng.randint(1, 3))),
            "seller": f"seller{rng.randint(0, 49)}",
            "year": str(rng.randint(1970, 2024)),
            "rating": rng.choice(["G", "PG", "PG-13", "R", "R", "NC-17"]),
        }
        if rng.random() < 0.05:
            attrs["available"] = "false"
        out.append(RuleCandidate(f"m{i:05d}", rng.gauss(0, 3), rng.random(), attrs, scored=rng.random() > 0.01))
    return out


def make_history(n_cands: int, rng: random.Random) -> list[Event]:
    return [Event("u", f"m{rng.randrange(n_cands):05d}", rng.choice(["view", "click", "purchase"]),
                  NOW - rng.uniform(0, 60 * 86400)) for _ in range(20)]


def measure(fn, iterations: int) -> tuple[float, float]:
    for _ in range(min(50, iterations)):
        fn()
    samples = []
    gc.disable()  # a collection landing in one call measures the collector, not the rules
    try:
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=0, help="calls per row (default: 3000 / 300)")
    ap.add_argument("--top-n", type=int, default=20)
    args = ap.parse_args(argv)
    rng = random.Random(7)
    base = parse_rule_set("bench", RULES)
    with_mmr = parse_rule_set("bench_mmr", {**RULES, "mmr": {"lambda": 0.7, "attributes": ["genres", "seller"]}})
    rows = []
    for n in (100, 1000):
        iters = args.iterations or (3000 if n <= 100 else 300)
        cands, history = make_candidates(n, rng), make_history(n, rng)
        out = apply_rules(base, cands, history=history, now=NOW, top_n=args.top_n)
        p50, p99 = measure(lambda: apply_rules(base, cands, history=history, now=NOW, top_n=args.top_n), iters)
        rows.append((f"filters + blend + boosts + diversity + pins, top_n={args.top_n}", n, p50, p99,
                     f"{len(out.filtered)} filtered"))
        p50, p99 = measure(lambda: apply_rules(base, cands, history=history, now=NOW, top_n=0), iters)
        rows.append(("same, top_n=0 (whole list)", n, p50, p99, ""))
        p50, p99 = measure(lambda: apply_rules(with_mmr, cands, history=history, now=NOW, top_n=args.top_n), iters)
        rows.append((f"same + MMR (2 attributes), top_n={args.top_n}", n, p50, p99, ""))
        p50, p99 = measure(lambda: apply_rules(None, cands, now=NOW, top_n=args.top_n), iters)
        rows.append(("no rules (model order only)", n, p50, p99, ""))
    overrides = {"blend.retrieval_weight": "0.5", "pins": "[{item_id: m00001, position: 2}]"}
    p50, p99 = measure(lambda: apply_overrides(base, overrides), 3000)
    rows.append(("apply_overrides, 2 fields, repeated (cached)", "-", p50, p99, ""))
    counter = iter(range(10**9))
    p50, p99 = measure(lambda: apply_overrides(
        base, {"blend.retrieval_weight": next(counter) / 1e9, "pins": [{"item_id": "m00001", "position": 2}]}
    ), 3000)
    rows.append(("apply_overrides, 2 fields, new each call (validated)", "-", p50, p99, ""))

    print("| rules stage | candidates | p50 (µs) | p99 (µs) | note |")
    print("|---|---:|---:|---:|---|")
    for name, n, p50, p99, note in rows:
        print(f"| {name} | {n} | {p50:,.0f} | {p99:,.0f} | {note} |")


if __name__ == "__main__":
    main()
