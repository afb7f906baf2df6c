"""A Redis Sentinel failover under dialing engines: a master, its replica and one Sentinel (quorum 1,
`down-after-milliseconds` 1000); two nodes dial one campaign through `redis+sentinel://`, and the master is SIGKILLed
(or frozen) mid-run; Sentinel promotes the replica. The nodes must ride through without a restart: dialing pauses
while there is no master (/readyz says the store is down), resumes within a bounded time of the promotion (redis-py's
Sentinel pool asks Sentinel for the master again), no lead is dialed twice at once across them, every call the PBXs
saw has its record, and no lease is left behind. The gap measured is printed with `pytest -s`; the README's figures
come from it. Leases wait for the replica (`wait_replicas`). Under CI=true this runs (a missing redis-server fails
it), never skips.
"""

from __future__ import annotations

import pytest

from tests.harness.failover import dial_through_failover
from tests.harness.redis import RedisSentinelFailover

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_the_master_dies_sentinel_promotes_its_replica_and_dialing_resumes(
        redis_sentinel_failover: RedisSentinelFailover, caplog: pytest.LogCaptureFixture, how: str) -> None:
    """Two nodes dial one campaign; the master is killed (SIGKILL: its connections are refused at once) or frozen
    (SIGSTOP: nothing answers, commands wait for the socket timeout, 1 s here). Both nodes pause and resume by
    themselves; no lead is dialed twice at once across them; every call has its record; no lease is left."""
    failover = redis_sentinel_failover
    server = failover.master
    await dial_through_failover(failover.url, how, caplog, "sentinel failover", lambda _key: server.port,
                                lambda _port: server.kill() if how == "kill" else server.freeze(),
                                lambda _key, _dead: failover.await_promotion(20.0))
