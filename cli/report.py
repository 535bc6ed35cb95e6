"""``rerankd report online``: clicks and purchases joined to the rankings that showed them, per
model version (``evaluation.online``), from the feature store in ``store.url``."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from server.settings import PROJECT_ROOT, Settings

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: float | None = None) -> float:
    """``--since``: empty (all kept), Unix seconds, a duration back from now (``90m``, ``24h``,
    ``7d``) or an ISO date/time (UTC unless it names its zone)."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: expected Unix seconds, a duration such as 24h or 7d, or an ISO "
                         f"date/time, not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def add_parser(sub, func) -> None:
    r = sub.add_parser("report", help="reports from what the gateway logged")
    rsub = r.add_subparsers(dest="report_command", required=True)
    o = rsub.add_parser("online", help="per model version: requests, attributed events, CTR@k and MRR "
                                       "of clicked items with 95%% intervals (events sent with a request_id)")
    o.add_argument("--since", help="impressions shown since: Unix seconds, 24h / 7d back, or an ISO date "
                                   "(default: all kept, online.retention_s)")
    o.add_argument("--k", type=int, default=10, help="CTR cut-off (default 10; at most online.log_top_k)")
    o.add_argument("--window-s", type=float, help="attribution window in seconds (default "
                                                   "online.attribution_window_s)")
    o.add_argument("--baseline", help="the arm the others are compared with (default: the lowest version)")
    o.add_argument("--out", default=str(PROJECT_ROOT / "reports"), help="folder for online.json, online.md, "
                                                                         "online.png (default reports/)")
    o.add_argument("--no-plot", action="store_true", help="skip online.png (no matplotlib)")
    o.add_argument("--store", help="sqlite:///relative.db, sqlite:////absolute.db or redis://host:port/db")
    o.set_defaults(func=func)


async def _read(settings: Settings, since: float):
    from server.features import open_store

    store = open_store(settings.store.url, history_len=settings.store.history_len,
                       impression_retention_s=settings.online.retention_s)
    try:
        return await store.export_impressions(since), await store.export_attributed_events(since)
    finally:
        await store.close()


def run(args, settings: Settings) -> int:
    from evaluation.online import markdown, online_report, write_online_report

    if args.k < 1:
        print("error: --k must be at least 1", file=sys.stderr)
        return 2
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    window = args.window_s if args.window_s is not None else settings.online.attribution_window_s
    impressions, events = asyncio.run(_read(settings, since))
    if args.k > settings.online.log_top_k:
        print(f"warning: --k {args.k} exceeds online.log_top_k ({settings.online.log_top_k}): clicks below "
              "the logged items are not seen", file=sys.stderr)
    try:
        rep = online_report(impressions, events, k=args.k, window_s=window, baseline=args.baseline, since=since)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rep).split("\n## Definitions", 1)[0].rstrip())
    paths = write_online_report(rep, Path(args.out), with_plot=not args.no_plot)
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0
