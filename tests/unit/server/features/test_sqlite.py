"""``server.features.sqlite``: opening one new file from several connections at once."""

import concurrent.futures as cf

from server.features.sqlite import SqliteStore


def test_several_connections_opening_one_new_file_at_once_all_succeed(tmp_path):
    """As ``serve --workers N`` does: one of them switches the file to WAL while the others
    find it locked (SQLite says so at once, not through the busy timeout); they retry."""
    failures = []
    for k in range(20):
        path = tmp_path / f"s{k}.db"
        with cf.ThreadPoolExecutor(6) as pool:
            for f in [pool.submit(SqliteStore, path) for _ in range(6)]:
                try:
                    f.result()
                except Exception as exc:  # noqa: BLE001 - the assertion lists them
                    failures.append(repr(exc))
    assert failures == []
