"""``rerankd report online``: --since parsing, and the command over a real SQLite store."""

import asyncio
import json
from datetime import datetime, timezone

import pytest

from cli.main import build_parser, main
from cli.report import parse_since
from server.features.sqlite import SqliteStore
from server.types import Event, Impression

NOW = 1_750_000_000.0


def test_since_forms():
    assert parse_since(None, NOW) == 0.0 and parse_since("", NOW) == 0.0
    assert parse_since("24h", NOW) == NOW - 86400 and parse_since("90m", NOW) == NOW - 5400
    assert parse_since("7d", NOW) == NOW - 7 * 86400 and parse_since("30s", NOW) == NOW - 30
    assert parse_since("1700000000.5", NOW) == 1_700_000_000.5
    assert parse_since("2026-11-30", NOW) == datetime(2026, 11, 30, tzinfo=timezone.utc).timestamp()
    assert parse_since("2026-11-30T12:00:00+02:00", NOW) == datetime(2026, 11, 30, 10, tzinfo=timezone.utc).timestamp()
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", NOW)


def test_event_request_id_flag():
    args = build_parser().parse_args(["client", "events", "--user", "1", "--items", "5", "--request-id", "r1"])
    assert args.request_id == "r1"


def test_report_online_reads_the_store_and_writes_its_files(tmp_path, capsys):
    db = tmp_path / "s.db"

    async def fill():
        import time

        now = time.time()
        store = SqliteStore(db)
        await store.record_impressions([Impression("r1", "u1", "reranker", "3", ("a", "b"), now - 50),
                                        Impression("r2", "u2", "reranker", "4", ("b", "a"), now - 50)])
        await store.record_events([Event("u1", "b", "click", now - 40, None, "", "r1"),
                                   Event("u2", "b", "click", now - 40, None, "", "r2")])
        await store.close()

    asyncio.run(fill())
    out = tmp_path / "out"
    assert main(["report", "online", "--store", f"sqlite:///{db}", "--k", "1", "--out", str(out), "--no-plot"]) == 0
    rep = json.loads((out / "online.json").read_text())
    arms = {a["arm"]: a for a in rep["arms"]}
    assert (arms["3"]["ctr"], arms["4"]["ctr"]) == (0.0, 1.0)
    assert (arms["3"]["mrr"], arms["4"]["mrr"]) == (0.5, 1.0)
    assert rep["differences"][0]["ctr_diff"] == 1.0
    assert "| 4 | 1 | 1 | 1 (0) | 1.0000 |" in capsys.readouterr().out
    assert not (out / "online.png").exists()
    assert main(["report", "online", "--store", f"sqlite:///{db}", "--k", "0", "--out", str(out)]) == 2
