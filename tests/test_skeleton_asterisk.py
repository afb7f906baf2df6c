"""The walking skeleton end to end on a real Asterisk 22: REST API → core → AMI bridge → Asterisk → agent rooms.

20 leads whose numbers force each outcome (sim-customer dialplan: last 6 digits O NN TTT), 3 agents.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from api.app import create_app
from dialer.commands import Emit
from dialer.core import CoreConfig, DialerCore
from dialer.memory_store import InMemoryStore
from dialer.runtime import Runtime, RuntimeConfig

pytestmark = pytest.mark.asterisk

# (outcome digit, how many, expected outcome(s))
PLAN = [
    (1, 8, {"connected", "abandoned"}),
    (2, 3, {"busy"}),
    (3, 3, {"congestion"}),
    (4, 3, {"no_answer"}),
    (5, 3, {"failed"}),
]


def _leads() -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    leads, expected = [], {}
    n = 0
    for digit, count, outcomes in PLAN:
        for _ in range(count):
            n += 1
            # answer after 2 s and talk 3 s; busy/congestion/unallocated after 1 s of ringing
            tail = f"{digit}02003" if digit == 1 else f"{digit}01000"
            lead_id = f"L{n:02d}"
            leads.append({"lead_id": lead_id, "phone": f"+1555{n:04d}{tail}"})
            expected[lead_id] = outcomes
    return leads, expected


async def test_campaign_of_20_leads_through_real_asterisk(asterisk: Any) -> None:
    telephony = AmiTelephony(
        AmiConfig(host=asterisk.host, port=asterisk.port, username=asterisk.username, secret=asterisk.secret,
                  call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")
    )
    store = InMemoryStore()
    runtime = Runtime(DialerCore(CoreConfig(id_prefix="sk")), store, telephony, RuntimeConfig(tick_interval_s=0.1))
    joined: set[str] = set()
    agent_states: Counter[str] = Counter()

    def watch(ev: Emit) -> None:
        if ev.kind == "call.joined":
            joined.add(ev.data["call_id"])
        elif ev.kind == "agent.state":
            agent_states[ev.data["state"]] += 1

    runtime.subscribe(watch)
    await runtime.start()
    app = create_app(runtime)
    leads, expected = _leads()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
            r = await api.post("/api/v1/campaigns", json={"campaign_id": "sk", "ring_timeout_s": 15, "wrapup_s": 1})
            assert r.status_code == 201, r.text
            r = await api.post("/api/v1/campaigns/sk/leads", json=leads)
            assert r.json() == {"accepted": 20, "duplicates": 0, "rejected": []}
            for agent in ("ag1", "ag2", "ag3"):
                assert (await api.post(f"/api/v1/agents/{agent}/login")).status_code == 202
            for _ in range(200):  # agents' legs must be in their rooms before dialing
                if sum(1 for a in (await api.get("/api/v1/agents")).json() if a["state"] == "ready") == 3:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("agents never reached their rooms")
            assert (await api.post("/api/v1/campaigns/sk/start")).status_code == 200
            for _ in range(900):
                stats = (await api.get("/api/v1/campaigns/sk/stats")).json()
                if stats["leads"]["done"] == 20 and stats["in_flight"] == 0 and stats["waiting"] == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"campaign did not finish: {stats}")
            attempts = (await api.get("/api/v1/campaigns/sk/attempts")).json()
    finally:
        await runtime.stop()

    # every lead attempted exactly once
    assert sorted(a["lead_id"] for a in attempts) == sorted(expected)
    # each outcome classified right
    wrong = {a["lead_id"]: a["outcome"] for a in attempts if a["outcome"] not in expected[a["lead_id"]]}
    assert not wrong, wrong
    # every answered call joined an agent's room (ConfbridgeJoin seen) or was counted abandoned
    for a in attempts:
        if a["outcome"] == "connected":
            assert a["call_id"] in joined, f"{a['call_id']} connected but never seen in an agent room"
    # the stats endpoint agrees with the attempt records
    by_outcome = Counter(a["outcome"] for a in attempts)
    assert stats["attempts"] == 20
    assert stats["outcomes"] == dict(by_outcome)
    assert stats["connected"] == by_outcome["connected"]
    assert stats["abandoned"] == by_outcome["abandoned"]
    assert stats["live_answers"] == by_outcome["connected"] + by_outcome["abandoned"] == 8
