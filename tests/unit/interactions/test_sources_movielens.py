"""MovieLens-100K loaded into a feature store (as ``rerankd data movielens`` loads it, every
interaction) and read back with ``--source store`` splits exactly as the MovieLens files do:
same train sequences, validation and test targets for all 943 users, same items. Needs the
real data (``movielens_folder``: fetched into .cache/data, skipped only when pip cannot)."""

import asyncio

from interactions.movielens import leave_one_out
from interactions.sources import MovieLensSource, StoreSource
from interactions.to_store import load_into_store
from server.features.sqlite import SqliteStore


def test_movielens_through_the_store_gives_the_same_split_and_items(movielens_folder, tmp_path):
    ml = MovieLensSource(movielens_folder).load()
    split = leave_one_out(ml.interactions)

    async def load():
        store = SqliteStore(tmp_path / "ml.db")
        try:
            await load_into_store(store, movielens_folder, split, upto="all", batch=20_000, log=lambda *_: None)
        finally:
            await store.close()

    asyncio.run(load())
    got = StoreSource(f"sqlite:///{tmp_path / 'ml.db'}").load()
    via_store = leave_one_out(got.interactions)

    assert got.items == ml.items and len(got.items) == 1682
    assert via_store.users == split.users and len(split.users) == 943
    assert via_store.valid == split.valid and via_store.test == split.test
    for u in split.users:
        assert via_store.history(u, "valid") == split.history(u, "valid"), u
    assert len(via_store.train) == len(split.train)
    assert got.description["events_used"] == 100_000 and got.description["dropped_repeated_user_item"] == 0
    # The ties matter here: hundreds of users' last two ratings share a timestamp.
    tied = sum(1 for u in split.users if u in split.valid_interactions
               and split.valid_interactions[u].timestamp == split.test_interactions[u].timestamp)
    assert tied > 100
