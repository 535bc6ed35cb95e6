"""Online evaluation: events joined to the rankings that showed their items, per model version.

Inputs are the gateway's impressions (``server.types.Impression``: request id, user, model
version or degraded, the reply's first items in order) and the events that carry a
``request_id`` (``server.types.Event``). Definitions (``rerankd report online``):

- An event is *joined* to the impression with its ``request_id`` when the user is the same
  and it happened within ``[shown - CLOCK_SKEW_S, shown + window_s]``. Events naming no
  kept impression (an unknown or expired id, an unlogged reply), another user's, or outside
  the window are counted apart and not attributed.
- Repeats count once: one (request, item, event type) is one event.
- A joined event is *attributed* when its item is in the impression's list; its rank is the
  item's position there. Attributed events are counted per type.
- ``CTR@k``: the share of requests with at least one attributed click at rank <= k, with a
  Wilson 95% interval.
- ``MRR``: the mean of 1/rank over joined clicks, a click on an item beyond the logged list
  counting 0 (``evaluation.metrics.mrr`` over the logged list), with a normal 95% interval
  (clicks taken as independent).
- Differences against a baseline arm: CTR@k by Newcombe's hybrid score interval (from the
  two Wilson intervals), MRR by the normal interval of a difference of means.
- Arms: one per model version (``name:version`` when several model names appear); degraded
  replies (the fallback's order, not the model's) form the arm ``degraded``.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluation.metrics import hit_rate, mrr
from server.core.validate import MAX_CLOCK_SKEW_S
from server.types import Event, Impression

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
# An event's timestamp is the caller's clock, the impression's the gateway's: an event may
# seem to precede the ranking that showed its item by as much as the clock skew allowed.
CLOCK_SKEW_S = MAX_CLOCK_SKEW_S
DEGRADED = "degraded"
CLICK = "click"


# -- intervals ----------------------------------------------------------------------------------
def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) without trials."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval (method 10, from the Wilson intervals)."""
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson(s1, n1, z)
    l2, u2 = wilson(s2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); None below 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float | None, float | None]:
    """Mean with its normal interval (None bounds below 2 values)."""
    mean, se = mean_se(values)
    return (mean, None, None) if se is None else (mean, mean - z * se, mean + z * se)


def mean_diff(a: Sequence[float], b: Sequence[float], z: float = Z95) -> tuple[float, float | None, float | None]:
    """mean(a) - mean(b) with the normal interval of a difference of independent means."""
    ma, sa = mean_se(a)
    mb, sb = mean_se(b)
    d = ma - mb
    if sa is None or sb is None:
        return d, None, None
    half = z * math.sqrt(sa * sa + sb * sb)
    return d, d - half, d + half


# -- attribution ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Joined:
    """One event joined to the impression that showed its item (rank 0: beyond the list)."""

    request_id: str
    item_id: str
    event_type: str
    rank: int


@dataclass
class Attribution:
    joined: dict[str, list[Joined]] = field(default_factory=dict)  # request id -> its events
    events: int = 0  # events with a request id
    no_impression: int = 0
    other_user: int = 0
    outside_window: int = 0
    repeats: int = 0


def attribute(impressions: Iterable[Impression], events: Iterable[Event], *, window_s: float) -> Attribution:
    """Join ``events`` to ``impressions`` by request id (see the module's definitions)."""
    by_id = {imp.request_id: imp for imp in impressions}
    out = Attribution()
    seen: set[tuple[str, str, str]] = set()
    for e in events:
        if not e.request_id:
            continue
        out.events += 1
        imp = by_id.get(e.request_id)
        if imp is None:
            out.no_impression += 1
            continue
        if e.user_id != imp.user_id:
            out.other_user += 1
            continue
        if not imp.timestamp - CLOCK_SKEW_S <= e.timestamp <= imp.timestamp + window_s:
            out.outside_window += 1
            continue
        key = (e.request_id, e.item_id, e.event_type)
        if key in seen:
            out.repeats += 1
            continue
        seen.add(key)
        rank = imp.item_ids.index(e.item_id) + 1 if e.item_id in imp.item_ids else 0
        out.joined.setdefault(e.request_id, []).append(Joined(e.request_id, e.item_id, e.event_type, rank))
    return out


def arm_of(imp: Impression, *, with_name: bool) -> str:
    if imp.degraded_reason:
        return DEGRADED
    return f"{imp.model_name}:{imp.model_version}" if with_name else imp.model_version


def _arm_order(label: str) -> tuple:
    """Versions in numeric order, degraded last."""
    if label == DEGRADED:
        return (2, 0, label)
    tail = label.rsplit(":", 1)[-1]
    return (0, int(tail), label) if tail.isdigit() else (1, 0, label)


# -- the report -------------------------------------------------------------------------------------
@dataclass
class ArmStats:
    arm: str
    model: str
    version: str
    requests: int
    events: dict[str, int]  # attributed (item in the list), by type
    clicks: int  # joined clicks, beyond the list included (MRR's denominator)
    clicks_beyond_list: int
    clicked_requests: int  # requests with an attributed click at rank <= k
    ctr: float
    ctr_low: float
    ctr_high: float
    mrr: float | None
    mrr_low: float | None
    mrr_high: float | None
    # Per click 1/rank (0 beyond the list), kept for the differences; not written out.
    rr: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("rr")
        return d


def click_rr(imp: Impression, item_id: str) -> float:
    """1/rank of a clicked item in the logged list, 0 beyond it."""
    return mrr(imp.item_ids, item_id, len(imp.item_ids)) if imp.item_ids else 0.0


def clicked_within(imp: Impression, clicks: Iterable[Joined], k: int) -> bool:
    """An attributed click at rank <= k (``evaluation.metrics.hit_rate``)."""
    return any(hit_rate(imp.item_ids, j.item_id, k) for j in clicks)


def arm_stats(arm: str, impressions: Sequence[Impression], attribution: Attribution, k: int) -> ArmStats:
    events: dict[str, int] = defaultdict(int)
    rr: list[float] = []
    clicked = beyond = 0
    for imp in impressions:
        joined = attribution.joined.get(imp.request_id, ())
        clicks = [j for j in joined if j.event_type == CLICK]
        for j in joined:
            if j.rank:
                events[j.event_type] += 1
        for j in clicks:
            rr.append(click_rr(imp, j.item_id))
            beyond += j.rank == 0
        clicked += clicked_within(imp, clicks, k)
    n = len(impressions)
    low, high = wilson(clicked, n)
    m, m_low, m_high = mean_interval(rr) if rr else (None, None, None)
    first = impressions[0]
    return ArmStats(arm, first.model_name, DEGRADED if arm == DEGRADED else first.model_version, n,
                    dict(sorted(events.items())), len(rr), beyond, clicked, clicked / n if n else 0.0, low, high,
                    m, m_low, m_high, rr)


def online_report(impressions: Sequence[Impression], events: Sequence[Event], *, k: int = 10,
                  window_s: float = 24 * 3600.0, baseline: str | None = None, since: float = 0.0) -> dict:
    """Per arm: requests, attributed events by type, CTR@k and MRR with 95% intervals; each
    model arm's difference from ``baseline`` (default: the lowest version)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    attribution = attribute(impressions, events, window_s=window_s)
    with_name = len({i.model_name for i in impressions if not i.degraded_reason}) > 1
    groups: dict[str, list[Impression]] = defaultdict(list)
    for imp in impressions:
        groups[arm_of(imp, with_name=with_name)].append(imp)
    arms = [arm_stats(a, groups[a], attribution, k) for a in sorted(groups, key=_arm_order)]
    model_arms = [a for a in arms if a.arm != DEGRADED]
    if baseline is None and model_arms:
        baseline = model_arms[0].arm
    elif baseline is not None and baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not among the arms ({', '.join(groups) or 'none'})")
    base = next((a for a in arms if a.arm == baseline), None)
    diffs = []
    for a in model_arms:
        if base is None or a is base or not a.requests or not base.requests:
            continue
        d, lo, hi = newcombe(a.clicked_requests, a.requests, base.clicked_requests, base.requests)
        row = {"arm": a.arm, "baseline": base.arm, "ctr_diff": d, "ctr_diff_low": lo, "ctr_diff_high": hi,
               "mrr_diff": None, "mrr_diff_low": None, "mrr_diff_high": None}
        if a.rr and base.rr:
            row["mrr_diff"], row["mrr_diff_low"], row["mrr_diff_high"] = mean_diff(a.rr, base.rr)
        diffs.append(row)
    att = attribution
    return {
        "k": k, "window_s": window_s, "since": since, "generated_at": time.time(), "baseline": baseline,
        "definitions": __doc__.split("Definitions (``rerankd report online``):", 1)[1].strip(),
        "arms": [a.to_dict() for a in arms],
        "differences": diffs,
        "events": {"with_request_id": att.events, "joined": sum(len(v) for v in att.joined.values()),
                   "no_impression": att.no_impression, "other_user": att.other_user,
                   "outside_window": att.outside_window, "repeats": att.repeats},
    }


# -- output -------------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(lo: float | None, hi: float | None, digits: int = 4) -> str:
    return "n/a" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(rep: dict) -> str:
    k = rep["k"]
    types = sorted({t for a in rep["arms"] for t in a["events"]})
    lines = ["# rerankd online evaluation", "",
             f"Impressions shown since {_when(rep['since'])}; attribution window {rep['window_s']:.0f} s; "
             f"baseline {rep['baseline'] or 'none'}.", "",
             "| arm | requests | " + " | ".join(types) + (" | " if types else "")
             + f"clicks (beyond list) | CTR@{k} | 95% CI | MRR | 95% CI |",
             "|---|---:|" + "---:|" * len(types) + "---:|---:|---|---:|---|"]
    for a in rep["arms"]:
        lines.append(f"| {a['arm']} | {a['requests']} | " + " | ".join(str(a['events'].get(t, 0)) for t in types)
                     + (" | " if types else "") + f"{a['clicks']} ({a['clicks_beyond_list']}) | {_f(a['ctr'])} | "
                     f"{_ci(a['ctr_low'], a['ctr_high'])} | {_f(a['mrr'])} | {_ci(a['mrr_low'], a['mrr_high'])} |")
    if rep["differences"]:
        lines += ["", f"## Differences from {rep['baseline']}", "",
                  f"| arm | CTR@{k} diff | 95% CI | MRR diff | 95% CI |", "|---|---:|---|---:|---|"]
        for d in rep["differences"]:
            lines.append(f"| {d['arm']} | {_f(d['ctr_diff'], 4)} | {_ci(d['ctr_diff_low'], d['ctr_diff_high'])} | "
                         f"{_f(d['mrr_diff'])} | {_ci(d['mrr_diff_low'], d['mrr_diff_high'])} |")
    e = rep["events"]
    lines += ["", f"Events with a request id: {e['with_request_id']}; joined {e['joined']}; not joined: "
                  f"no kept impression {e['no_impression']}, another user's {e['other_user']}, outside the "
                  f"window {e['outside_window']}; repeats {e['repeats']}.", "",
              "## Definitions", "", rep["definitions"], ""]
    return "\n".join(lines)


def _when(ts: float) -> str:
    return "the start of retention" if not ts else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def plot(rep: dict, path: Path) -> Path:
    """CTR@k and MRR per arm with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = rep["arms"]
    labels = [a["arm"] for a in arms]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(arms), 3.6))
    for ax, (key, title) in zip(axes, (("ctr", f"CTR@{rep['k']}"), ("mrr", "MRR of clicked items"))):
        vals = [a[key] or 0.0 for a in arms]
        err = [[max(0.0, v - (a[f"{key}_low"] if a[f"{key}_low"] is not None else v)) for v, a in zip(vals, arms)],
               [max(0.0, (a[f"{key}_high"] if a[f"{key}_high"] is not None else v) - v) for v, a in zip(vals, arms)]]
        ax.bar(range(len(arms)), vals, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(arms)), labels, rotation=20)
        ax.set_title(f"{title} (95% CI)")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_online_report(rep: dict, out_dir: Path, *, with_plot: bool = True) -> list[Path]:
    """``online.json``, ``online.md`` and (``with_plot``) ``online.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "online.json", out_dir / "online.md"]
    paths[0].write_text(json.dumps(rep, indent=2) + "\n")
    paths[1].write_text(markdown(rep))
    if with_plot:
        paths.append(plot(rep, out_dir / "online.png"))
    return paths
