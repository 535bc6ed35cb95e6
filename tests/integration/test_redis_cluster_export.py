"""The export and impressions contract tests (``tests/unit/server/features/test_store_export.py``,
``test_store_impressions.py``) against the 3-node Redis Cluster of ``test_redis_cluster``:
each module's per-backend tests, collected here with a cluster ``open_store``."""

from __future__ import annotations

import inspect
import uuid

import pytest

from server.features.redis import RedisStore
from tests.integration.test_redis_cluster import aio, cluster  # noqa: F401 (fixtures)
from tests.unit.server.features import test_store_export as export_contract

pytestmark = pytest.mark.integration


@pytest.fixture
def open_store(cluster):  # noqa: F811
    url, _ = cluster
    prefix = f"t[{uuid.uuid4().hex[:8]}]*:"  # glob characters: the scan must not widen
    return lambda: RedisStore(url, history_len=5, key_prefix=prefix)


CONTRACT = {name: fn for name, fn in vars(export_contract).items()
            if name.startswith("test_") and callable(fn) and "open_store" in inspect.signature(fn).parameters}
globals().update(CONTRACT)


def test_the_export_tests_were_found():
    assert CONTRACT
