"""Fixtures of the store tests: one real redis-server for the session, and an event loop per test."""

from __future__ import annotations

import asyncio

import pytest

from tests.redis_server import SKIP_REASON, RedisServerNotInstalled, start_redis


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory):
    """A real redis-server (AOF on, as rerankd requires); tests skip when it is not installed."""
    try:
        proc = start_redis(tmp_path_factory.mktemp("redis"), appendonly=True)
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    yield proc
    proc.stop()


@pytest.fixture
def aio():
    """Run coroutines on one event loop for the whole test (stores are bound to it)."""
    with asyncio.Runner() as runner:
        yield runner.run
