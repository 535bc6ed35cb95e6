"""Data sources (``interactions.sources``): the shared rules, the files source (CSV and
Parquet), the store source on a real SQLite store, and their errors."""

import asyncio

import pytest

from interactions.movielens import leave_one_out
from interactions.sources import (
    FilesSource,
    RawEvent,
    StoreSource,
    open_source,
    redact_url,
    to_interactions,
)
from server.errors import InvalidArgument, NotFound
from server.features.sqlite import SqliteStore
from server.types import Event, Item


def test_rules_weights_repeats_unknown_items_and_ties():
    events = [RawEvent("u", "a", 10, "click"), RawEvent("u", "b", 10, "view"), RawEvent("u", "c", 10, "click"),
              RawEvent("u", "a", 12, "click"), RawEvent("u", "zz", 13, "click"), RawEvent("v", "a", 1, "purchase", 3.0)]
    got, counts = to_interactions(events, ["a", "b", "c"], {"view": 0.0})
    assert [(x.user_id, x.item_id, x.timestamp, x.row) for x in got] == [
        ("u", "c", 10, 2), ("u", "a", 12, 3), ("v", "a", 1, 5)]  # a's latest event kept, b (view) dropped
    assert counts == {"events_read": 6, "events_used": 3, "dropped_weight_0": 1, "dropped_unknown_item": 1,
                      "dropped_repeated_user_item": 1}
    assert got[2].rating == 3.0 and got[0].rating == 1.0
    # Equal timestamps: the later row is the more recent (the test target).
    split = leave_one_out(to_interactions([RawEvent("u", i, 5.0) for i in "xyz"], "xyz", {})[0])
    assert split.test == {"u": "z"} and split.valid == {"u": "y"}
    # An older event recorded later does not replace a newer one of the same item.
    got, _ = to_interactions([RawEvent("u", "a", 20), RawEvent("u", "a", 5)], ["a"], {})
    assert [x.timestamp for x in got] == [20]


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,title,text,category\np1,Red mug,a mug,kitchen\n"
                   "p2,Blue pan,,kitchen\np3,Tent,sleeps two,camping\n")
    inter = _write(tmp_path / "inter.csv", "user,item,timestamp,type,value\nu1,p1,100,click,\n"
                   "u1,p2,2024-01-01T00:00:00,purchase,9.5\nu1,p3,2024-01-01T00:00:00,view,\nu2,p3,50,click,\n")
    return inter, items


def test_files_csv(files):
    got = FilesSource(*files, {"view": 0}).load()
    assert got.items[0] == Item("p1", "Red mug", "a mug", {"category": "kitchen"})
    assert got.items[1].text == "" and len(got.items) == 3
    assert [(x.user_id, x.item_id) for x in got.interactions] == [("u1", "p1"), ("u1", "p2"), ("u2", "p3")]
    assert got.interactions[1].timestamp == 1704067200 and got.interactions[1].rating == 9.5
    assert got.description["dropped_weight_0"] == 1 and set(got.description["sha256"]) == {"inter.csv", "items.csv"}


def test_files_parquet_reads_as_csv(files, tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed (the export extra has it)")
    import csv

    import pyarrow.parquet as pq

    for src in files:
        with open(src) as f:
            rows = list(csv.DictReader(f))
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / (src.stem + ".parquet"))
    a = FilesSource(*files).load()
    b = FilesSource(tmp_path / "inter.parquet", tmp_path / "items.parquet").load()
    assert a.interactions == b.interactions and a.items == b.items


@pytest.mark.parametrize("bad, message", [
    ("missing_file", "no such file"), ("no_user_column", "no user / user_id column"),
    ("no_rows", "no rows"), ("no_title", "no title column"), ("bad_ts", "neither Unix seconds nor ISO"),
    ("empty_user", "empty user"), ("all_dropped", "no usable interactions")])
def test_files_errors_are_clear(files, tmp_path, bad, message):
    inter, items = files
    if bad == "missing_file":
        inter = tmp_path / "nope.csv"
    elif bad == "no_user_column":
        _write(inter, "who,item,timestamp\nu1,p1,1\n")
    elif bad == "no_rows":
        _write(inter, "user,item,timestamp\n")
    elif bad == "no_title":
        _write(items, "item_id,name\np1,x\n")
    elif bad == "bad_ts":
        _write(inter, "user,item,timestamp\nu1,p1,yesterday\n")
    elif bad == "empty_user":
        _write(inter, "user,item,timestamp\n,p1,1\n")
    elif bad == "all_dropped":
        _write(inter, "user,item,timestamp\nu1,nothere,1\n")
    with pytest.raises((InvalidArgument, NotFound)) as err:
        FilesSource(inter, items).load()
    assert message in str(err.value)


def test_store_source_matches_files_and_reports_an_empty_store(files, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(NotFound, match="no items"):
        StoreSource(url).load()
    a = FilesSource(*files, {"view": 0}).load()

    async def record():
        store = SqliteStore(tmp_path / "store.db")
        try:
            await store.upsert_items(a.items)
            # Recorded in the files' row order: the store's tie rule is "later-recorded first".
            await store.record_events([Event("u1", "p1", "click", 100.0), Event("u1", "p2", "purchase", 1704067200.0, 9.5),
                                       Event("u1", "p3", "view", 1704067200.0), Event("u2", "p3", "click", 50.0)])
        finally:
            await store.close()

    asyncio.run(record())
    b = StoreSource(url, {"view": 0}).load()
    assert b.items == a.items
    assert [(x.user_id, x.item_id, x.timestamp, x.rating) for x in b.interactions] == \
        [(x.user_id, x.item_id, x.timestamp, x.rating) for x in a.interactions]
    assert b.description["backend"] == "sqlite" and b.description["events_read"] == 4


def test_open_source_and_redaction():
    with pytest.raises(InvalidArgument, match="--interactions FILE and --items FILE"):
        open_source("files", interactions="x.csv")
    with pytest.raises(InvalidArgument, match="unsupported store url"):
        open_source("store", store_url="mysql://x").load()
    assert redact_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("sqlite:///var/x.db") == "sqlite:///var/x.db"
