"""A Redis Cluster failover under dialing engines: 3 masters, each with a replica (`cluster-node-timeout` 1 s); two
nodes dial one campaign, and the master holding its hash slot is SIGKILLed (or frozen) mid-run; its replica takes
over. The nodes must ride through without a restart: dialing pauses while the slot has no master (/readyz says the
store is down), resumes within a bounded time of the promotion (redis-py's Cluster client finds the new master), no
lead is dialed twice at once across them, every call the PBXs saw has its record, and no lease is left behind. The
gap measured (kill → dialing again) is printed with `pytest -s`; the README's figures come from it. Leases wait for
the replica (`wait_replicas`). Under CI=true this runs (a missing redis-server fails it), never skips.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from dialer.model import CampaignSettings, Lead
from dialer.redis_store import RedisStore
from dialer.store_factory import open_store
from tests.harness.failover import dial_through_failover
from tests.harness.redis import RedisClusterServers, RedisServer

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_the_campaigns_master_dies_its_replica_takes_over_and_dialing_resumes(
        redis_cluster_with_replicas: RedisClusterServers, caplog: pytest.LogCaptureFixture, how: str) -> None:
    """Two nodes dial one campaign; its slot's master is killed (SIGKILL: its connections are refused at once) or
    frozen (SIGSTOP: as a host that vanished or a partition, nothing answers and commands wait for the socket
    timeout, 1 s here). Both nodes pause and resume by themselves; no lead is dialed twice at once across them;
    every call has its record; no lease is left."""
    cluster = redis_cluster_with_replicas
    await dial_through_failover(cluster.url, how, caplog, "cluster failover", cluster.master_of,
                                cluster.kill if how == "kill" else cluster.freeze,
                                lambda key, dead: cluster.await_promotion(key, dead, 20.0))


async def test_leases_wait_for_a_replica_and_say_so_when_none_acknowledges(
        redis_cluster_with_replicas: RedisClusterServers, redis_server: RedisServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """With wait_replicas=1 a lease batch returns once the slot's replica has it (WAIT on the connection that ran the
    lease script); a replica that does not answer holds the batch up to 100 ms, the leases stand, and a warning says
    a failover could lose them, once, until the replica acknowledges again. A Redis without replicas: the same."""
    cluster = redis_cluster_with_replicas
    caplog.set_level(logging.INFO, logger="marcador.store.redis")
    store = open_store(f"{cluster.url}?prefix=w{uuid.uuid4().hex[:8]}:&wait_replicas=1", node_id="n1")
    assert isinstance(store, RedisStore)
    try:
        await store.save_campaign(CampaignSettings(campaign_id="c"))
        await store.add_leads("c", [Lead(f"L{i}", "c", (f"+1555000{i:04d}",)) for i in range(300)])
        leased = 0

        async def lease() -> tuple[int, float]:
            nonlocal leased
            t = time.monotonic()
            got = len(await store.lease_leads("c", 5, time.time()))
            leased += got
            return got, time.monotonic() - t

        assert [(await lease())[0] for _ in range(2)] == [5, 5]
        assert "not acknowledged" not in caplog.text  # the replica had them
        (replica,) = cluster.replicas_of(store._k("c", "leases"))
        cluster.freeze(replica)
        try:
            got, took = await lease()
            again, _ = await lease()
        finally:
            cluster.freeze(replica, frozen=False)
        assert (got, again) == (5, 5) and took >= 0.09  # a WAIT on another connection would not have waited
        assert caplog.text.count("leases not acknowledged by enough replicas") == 1
        for _ in range(50):  # the replica catches up
            await lease()
            if "acknowledged by replicas again" in caplog.text:
                break
        assert "acknowledged by replicas again" in caplog.text
        assert (await store.lead_counts("c"))["leased"] == leased  # every lease stood, acknowledged or not
    finally:
        await store.aclose()

    plain = open_store(f"{redis_server.url}?prefix=w{uuid.uuid4().hex[:8]}:&wait_replicas=1", node_id="n1")
    assert isinstance(plain, RedisStore)
    try:
        await plain.save_campaign(CampaignSettings(campaign_id="c"))
        await plain.add_leads("c", [Lead("L1", "c", ("+15550000001",))])
        t = time.monotonic()
        assert [x.lead_id for x in await plain.lease_leads("c", 5, time.time())] == ["L1"]
        assert time.monotonic() - t >= 0.09 and caplog.text.count("leases not acknowledged by enough replicas") == 2
    finally:
        await plain.aclose()


def test_the_wait_replicas_option() -> None:
    from dialer.store_factory import parse_store_url

    assert parse_store_url("redis+cluster://n1:7000,n2:7001?wait_replicas=1").wait_replicas == 1
    assert parse_store_url("redis://h:6379/0").wait_replicas == 0
    for bad in ("x", "-1", "1.5", "", "²"):
        with pytest.raises(ValueError, match="wait_replicas"):
            parse_store_url(f"redis+sentinel://s1/mymaster?wait_replicas={bad}")
    store = open_store("redis+cluster://n1:7000?wait_replicas=2")
    assert isinstance(store, RedisStore) and store.wait_replicas == 2
