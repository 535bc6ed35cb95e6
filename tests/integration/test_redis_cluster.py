"""The Redis store on a real 3-node Redis Cluster (``redis-server --cluster-enabled yes``,
joined by ``redis-cli --cluster create``), started by this module.

The store contract tests that the single-node Redis store passes
(``tests/unit/server/features/test_store_conformance.py``) run again here against the
cluster; then checks of the cluster layout: each user's keys in one slot, users spread over
the nodes, ForgetUser leaving no key of the user on any node, pub/sub across nodes.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis

from server.features.invalidation import Invalidation
from server.features.redis import RedisStore
from server.types import Event, Item, RecordResult
from tests.redis_server import (
    SKIP_REASON,
    RedisProcess,
    RedisServerError,
    RedisServerNotInstalled,
    redis_server_binary,
)
from tests.unit.server.features import test_store_conformance as contract

pytestmark = pytest.mark.integration

NODES = 3


class ClusterNode(RedisProcess):
    """One cluster-enabled ``redis-server`` (AOF with fsync always, as rerankd requires)."""

    def _argv(self) -> list[str]:
        return super()._argv() + ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
                                  "--cluster-node-timeout", "2000"]


def _cluster_port() -> int:
    """A free port P with P + 10000 free too (the cluster bus), P <= 55535."""
    while True:
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def _start_node(binary: str, data_dir, attempts: int = 5) -> ClusterNode:
    for attempt in range(attempts):  # a probed port may be taken before the server binds it
        try:
            return ClusterNode(binary, data_dir, _cluster_port(), appendonly=True).start()
        except RedisServerError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as r:
            return b"cluster_state:ok" in r.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The seed URL (``?cluster=true``) and the nodes."""
    cli = shutil.which("redis-cli")
    try:
        binary = redis_server_binary()
    except RedisServerNotInstalled:
        pytest.skip(SKIP_REASON)
    if cli is None:
        pytest.skip("redis-cli not installed (it comes with redis-server: apt-get install -y redis-server)")
    root = tmp_path_factory.mktemp("cluster")
    nodes: list[ClusterNode] = []
    try:
        for i in range(NODES):
            (root / str(i)).mkdir()
            nodes.append(_start_node(binary, root / str(i)))
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(n.port) for n in nodes):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok in 30 s"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{nodes[0].port}/0?cluster=true", nodes
    finally:
        for n in nodes:
            n.stop()


# -- the store contract, on the cluster -----------------------------------------------


@pytest.fixture
def aio():
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture
def backend(cluster, aio):
    url, _ = cluster
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    b = contract.Backend("redis-cluster", lambda h: RedisStore(url, history_len=h, key_prefix=prefix))
    yield b
    for store in b.opened:
        aio(store.close())


@pytest.fixture
def store(backend):
    return backend.open()


def _contract_tests() -> dict:
    """Every contract test run per backend (through ``backend`` or ``store``)."""
    out = {}
    for name, fn in vars(contract).items():
        if name.startswith("test_") and callable(fn):
            params = set(inspect.signature(fn).parameters)
            if params & {"backend", "store"} and params <= {"backend", "store", "aio"}:
                out[name] = fn
    return out


CONTRACT = _contract_tests()
globals().update(CONTRACT)  # collected here, with this module's fixtures: the cluster backend


def test_the_contract_tests_were_found():
    assert {"test_idempotency", "test_forget_user_erases_events_and_their_idempotency_keys",
            "test_concurrent_writers_and_readers_lose_nothing"} <= set(CONTRACT)


# -- cluster layout ---------------------------------------------------------------------


def _keys_by_node(nodes, prefix: str) -> dict[int, set[str]]:
    out = {}
    for n in nodes:
        with redis.Redis(port=n.port, decode_responses=True) as r:
            out[n.port] = set(r.keys(prefix + "*"))
    return out


def test_users_keys_share_a_slot_and_users_spread_over_the_nodes(cluster):
    url, nodes = cluster
    prefix = f"lay:{uuid.uuid4().hex[:8]}:"
    users = [f"user-{i}" for i in range(30)]

    async def body():
        s = RedisStore(url, key_prefix=prefix)
        try:
            assert s.cluster and not s.one_slot
            # One batch for thirty users: applied per user, every event once.
            batch = [Event(u, f"i{k}", "click", 10.0 + k, None, f"{u}-k{k}") for u in users for k in range(2)]
            assert await s.record_events(batch) == RecordResult(60, 0)
            assert await s.record_events(batch[:7]) == RecordResult(0, 7)
            await s.upsert_items([Item(f"item-{i}", f"t{i}") for i in range(30)])
            assert await s.durability_problem() is None  # every primary runs AOF, fsync always
            with redis.Redis(port=nodes[-1].port) as r:  # one primary that could lose writes
                r.config_set("appendfsync", "everysec")
                try:
                    assert "appendfsync=everysec" in (await s.durability_problem() or "")
                finally:
                    r.config_set("appendfsync", "always")
            return [s._ev_key(u) for u in users], {u: s._user_keys(u) + [s._idem_key(u, f"{u}-k0")]
                                                    for u in users}
        finally:
            await s.close()

    ev_keys, user_keys = asyncio.run(body())
    by_node = _keys_by_node(nodes, prefix)
    holding_events = [port for port, keys in by_node.items() if keys & set(ev_keys)]
    assert len(holding_events) == NODES, by_node  # 30 users over 3 nodes: every node has some
    assert len([port for port, keys in by_node.items() if any(":item:" in k for k in keys)]) == NODES
    for user, keys in user_keys.items():
        where = {port for port, held in by_node.items() for k in keys if k in held}
        assert len(where) == 1, (user, where)  # the user's history, index, counter, idempotency keys
        node = where.pop()
        assert all(k in by_node[node] for k in keys)


def test_forget_user_leaves_no_key_of_the_user_on_any_node(cluster):
    url, nodes = cluster
    prefix = f"fgt:{uuid.uuid4().hex[:8]}:"

    async def body():
        s = RedisStore(url, key_prefix=prefix, history_len=2)
        try:
            await s.record_events([Event("alice", f"i{i}", "view", float(i), None, f"alice-{i}") for i in range(5)]
                                  + [Event("bob", "i0", "view", 1.0, None, "bob-0")])
            assert await s.forget_user("alice") == 2
            assert await s.recent_events("alice") == []
            assert await s.forget_user("alice") == 0
            assert [e.item_id for e in await s.recent_events("bob")] == ["i0"]
        finally:
            await s.close()

    asyncio.run(body())
    left = set().union(*_keys_by_node(nodes, prefix).values())
    assert not [k for k in left if "alice" in k], left
    assert any("bob" in k for k in left)


def test_changes_reach_a_subscriber_on_another_node(cluster):
    url, _ = cluster
    prefix = f"inv:{uuid.uuid4().hex[:8]}:"

    async def body():
        a, b = RedisStore(url, key_prefix=prefix), RedisStore(url, key_prefix=prefix)
        seen: list = []
        inv = Invalidation(b, on_items=lambda ids: seen.append(list(ids)), on_forget=seen.append,
                           on_resync=lambda: None)
        task = asyncio.create_task(inv.run())
        try:
            await asyncio.wait_for(inv.subscribed.wait(), 10)
            await a.upsert_items([Item("x"), Item("y")])
            await a.forget_user("carol")
            deadline = time.monotonic() + 5
            while len(seen) < 2:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.01)
            assert seen == [["x", "y"], "carol"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await a.close()
            await b.close()

    asyncio.run(body())


def test_hash_tagged_prefix_keeps_one_slot_and_whole_batches(cluster):
    url, nodes = cluster
    prefix = f"{{one-{uuid.uuid4().hex[:6]}}}:"

    async def body():
        s = RedisStore(url, key_prefix=prefix)
        try:
            assert s.one_slot
            assert await s.record_events([Event(f"u{i}", "a", "view", 1.0, None, "k") for i in range(10)]) == RecordResult(10, 0)
        finally:
            await s.close()

    asyncio.run(body())
    assert len([p for p, keys in _keys_by_node(nodes, prefix).items() if keys]) == 1
    with pytest.raises(ValueError):
        RedisStore(url, key_prefix="bad{prefix:")


def test_cluster_url_flag_is_checked(cluster):
    with pytest.raises(ValueError, match="cluster="):
        RedisStore("redis://127.0.0.1:1/0?cluster=maybe")
    assert not RedisStore("redis://127.0.0.1:1/0?cluster=false").cluster

