"""``open_store`` URLs: the usual SQLite convention (three slashes relative, four absolute)."""

import asyncio

import pytest

from server.features import open_store
from server.features.sqlite import SqliteStore


def test_sqlite_urls_follow_the_usual_convention(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}")  # an absolute path gives four slashes
    try:
        assert isinstance(rel, SqliteStore) and isinstance(absolute, SqliteStore)
        assert (tmp_path / "rel.db").exists() and (tmp_path / "abs.db").exists()
    finally:
        asyncio.run(rel.close())
        asyncio.run(absolute.close())


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unsupported store url"):
        open_store("postgres://x")
    with pytest.raises(ValueError):
        open_store("sqlite://no-third-slash.db")
