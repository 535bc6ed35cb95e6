"""The gateway's wiring of the impression log (``online`` settings): on by default with its
metrics, off on request, bad sizes refused naming the setting, flushed by ``stop``."""

import asyncio

import pytest

from server.api.app import Gateway
from server.errors import InvalidArgument
from server.settings import load_settings
from server.types import Candidate, RerankRequest, RerankResponse, ScoredItem


def settings(tmp_path, **env):
    return load_settings(env={"RERANKD_STORE_URL": f"sqlite:///{tmp_path / 's.db'}", **env})


def test_on_by_default_counted_in_metrics_and_written_on_stop(tmp_path):
    from prometheus_client import generate_latest

    async def go():
        gw = Gateway(settings(tmp_path, RERANKD_ONLINE_LOG_TOP_K="2"))
        assert gw.pipeline.impressions is gw.impressions and gw.impressions.top_k == 2
        req = RerankRequest("u1", (Candidate("a"),), request_id="r1")
        gw.impressions.offer(req, RerankResponse([ScoredItem("a", 1.0, 1)], "reranker", "1", {}, request_id="r1"))
        text = generate_latest(gw.metrics.registry).decode().splitlines()
        await gw.stop(grace_s=0.1)  # never started: stop still writes what is queued
        from server.features.sqlite import SqliteStore

        store = SqliteStore(tmp_path / "s.db")
        rows = await store.export_impressions()
        await store.close()
        return text, rows

    text, rows = asyncio.run(go())
    assert "rerankd_impressions_queued 1.0" in text and "rerankd_impressions_dropped_total 0.0" in text
    assert [(r.request_id, r.item_ids) for r in rows] == [("r1", ("a",))]


def test_off_when_asked(tmp_path):
    async def go():
        gw = Gateway(settings(tmp_path, RERANKD_ONLINE_LOG_IMPRESSIONS="false"))
        await gw.store.close()
        return gw

    gw = asyncio.run(go())
    assert gw.impressions is None and gw.pipeline.impressions is None


@pytest.mark.parametrize("name", ["LOG_TOP_K", "QUEUE_SIZE"])
def test_bad_sizes_are_refused_naming_the_setting(tmp_path, name):
    with pytest.raises(InvalidArgument, match=f"online.{name.lower()}"):
        asyncio.run(_make(settings(tmp_path, **{f"RERANKD_ONLINE_{name}": "0"})))


async def _make(s):
    return Gateway(s)
