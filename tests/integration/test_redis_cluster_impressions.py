"""The impressions contract tests (``tests/unit/server/features/test_store_impressions.py``)
against the 3-node Redis Cluster of ``test_redis_cluster``, with a cluster ``open_store``."""

from __future__ import annotations

import inspect
import uuid

import pytest

from server.features.redis import RedisStore
from tests.integration.test_redis_cluster import aio, cluster  # noqa: F401 (fixtures)
from tests.unit.server.features import test_store_impressions as impressions_contract

pytestmark = pytest.mark.integration


@pytest.fixture
def open_store(cluster, aio):  # noqa: F811
    url, _ = cluster
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    opened = []

    def open_(**kw):
        store = RedisStore(url, key_prefix=prefix, **kw)
        opened.append(store)
        return store

    open_.backend = "redis-cluster"
    yield open_
    for store in opened:
        aio(store.close())


CONTRACT = {name: fn for name, fn in vars(impressions_contract).items()
            if name.startswith("test_") and callable(fn)
            and set(inspect.signature(fn).parameters) <= {"open_store", "aio"}}
globals().update(CONTRACT)


def test_the_impression_tests_were_found():
    assert CONTRACT
