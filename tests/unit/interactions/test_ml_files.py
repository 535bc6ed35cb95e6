"""Loaders and the feature-store load on a tiny fixture in the real RecBole file format."""

import asyncio

import pytest

from contract.items import Item
from interactions.movielens import (
    Interaction,
    leave_one_out,
    load_interactions,
    load_items,
)
from interactions.to_store import load_into_store
from server.features.sqlite import SqliteStore

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t5\t100\n"
    "2\t10\t3\t50\n"
    "1\t2\t4\t300\n"
    "1\t3\t1\t300\n"  # ties with the row above: the later row is the more recent
    "1\t4\t2\t200\n"
    "2\t3\t4\t60\n"
    "2\t4\t4.5\t70.0\n"
    "\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "2\tToy Story\t1995\tAnimation Children's Comedy\n"
    "3\tunkonwn\tunkonwn\tunknown\n"
    "4\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's\n"
    "10\tUsual Suspects, The\t1995\tCrime Thriller\n"
    "11\tNo Year Film\t\tFilm-Noir Sci-Fi\n"
    "12\tShort Row\n"
)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "ml-100k.inter").write_text(INTER)
    (tmp_path / "ml-100k.item").write_text(ITEM)
    return tmp_path


def test_load_interactions(folder):
    xs = load_interactions(folder)
    assert len(xs) == 7
    assert xs[0] == Interaction("1", "10", 5.0, 100, 0)
    assert xs[6] == Interaction("2", "4", 4.5, 70, 6)
    assert [x.row for x in xs] == list(range(7))


def test_load_interactions_rejects_bad_rows(tmp_path):
    (tmp_path / "ml-100k.inter").write_text(INTER + "1\t5\tfive\t10\n")
    with pytest.raises(ValueError, match=r"ml-100k.inter:10"):
        load_interactions(tmp_path)
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_interactions(tmp_path)


def test_load_items_handles_odd_rows(folder):
    items = {i.item_id: i for i in load_items(folder)}
    assert list(items) == ["2", "3", "4", "10", "11", "12"]
    assert items["2"] == Item("2", "Toy Story", "", {"year": "1995", "genres": "Animation|Children's|Comedy"})
    assert items["3"] == Item("3", "", "", {"genres": "unknown"})
    assert items["4"].title == "Land Before Time III: The Time of the Great Giving"
    assert items["4"].attributes == {"year": "1995", "genres": "Animation|Children's"}
    assert items["10"].title == "Usual Suspects, The"
    assert items["11"].attributes == {"genres": "Film-Noir|Sci-Fi"}
    assert items["12"] == Item("12", "Short Row", "", {})


def test_load_into_store_matches_split_histories(folder, tmp_path):
    split = leave_one_out(load_interactions(folder))
    assert (split.valid["1"], split.test["1"]) == ("2", "3")  # the tie at ts 300

    async def run():
        results = {}
        for upto in ("valid", "test", "all"):
            store = SqliteStore(tmp_path / f"{upto}.db")
            lines = []
            res = await load_into_store(store, folder, split, upto=upto, batch=2, log=lines.append)
            again = await load_into_store(store, folder, split, upto=upto, batch=2, log=lambda _: None)
            hist = {u: [e.item_id for e in await store.recent_events(u, 100)] for u in ("1", "2")}
            ev = (await store.recent_events("1", 1))[0]
            got = await store.get_items(["4"])
            await store.close()
            results[upto] = (res, again, hist, ev, got, lines)
        return results

    r = asyncio.run(run())
    for upto in ("valid", "test"):
        res, again, hist, _, got, lines = r[upto]
        assert hist == {u: split.history(u, upto) for u in ("1", "2")}
        assert res["items"] == 6 and res["accepted"] == res["events"]
        assert again["accepted"] == 0 and again["duplicates"] == res["events"]
        assert got["4"].attributes["genres"] == "Animation|Children's"
        assert any(f"events {res['events']}/{res['events']}" in line for line in lines)
    assert r["valid"][0]["events"] == 3 and r["test"][0]["events"] == 5
    res, _, hist, ev, _, _ = r["all"]
    assert res["events"] == 7
    assert hist["1"] == ["3", "2", "4", "10"]  # row 3 recorded after row 2: later-recorded first
    assert (ev.event_type, ev.value, ev.timestamp, ev.idempotency_key) == ("rating", 1.0, 300.0, "ml100k:1:3:300")
