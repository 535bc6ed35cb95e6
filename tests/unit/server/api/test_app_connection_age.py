"""``server.max_connection_age_s``: the gateway's server ends connections after that age (GOAWAY),
so a client balancing over DNS reconnects and re-resolves (deploy/kubernetes); 0 keeps them."""

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.app import Gateway
from server.settings import load_settings


def state_after_idle(tmp_path, age_s: str) -> grpc.ChannelConnectivity:
    """The client channel's state some time after one call, its connection otherwise idle."""

    async def go():
        gw = Gateway(load_settings(env={"RERANKD_STORE_URL": f"sqlite:///{tmp_path / 's.db'}",
                                        "RERANKD_SERVER_MAX_CONNECTION_AGE_S": age_s,
                                        "RERANKD_SERVER_MAX_CONNECTION_AGE_GRACE_S": "0.2"}))
        health_pb2_grpc.add_HealthServicer_to_server(gw.health, gw.server)
        port = gw.server.add_insecure_port("127.0.0.1:0")
        await gw.server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert channel.get_state() == grpc.ChannelConnectivity.READY
                await asyncio.sleep(1.5)
                return channel.get_state()
        finally:
            await gw.server.stop(0)
            await gw.store.close()

    return asyncio.run(go())


def test_connections_end_after_max_age(tmp_path):
    # GOAWAY moves the client's channel out of READY (to IDLE until its next call).
    assert state_after_idle(tmp_path, "0.3") != grpc.ChannelConnectivity.READY


def test_connections_live_on_without_max_age(tmp_path):
    assert state_after_idle(tmp_path, "0") == grpc.ChannelConnectivity.READY
