"""The asyncio runtime around the core, with an in-process PBX stand-in (a unit test of the runtime's
dispatch and store ordering; the real PBX paths are proven in the simulated-PBX and Asterisk suites)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dialer.commands import ConnectToAgent, Emit, Originate, OriginateAgentLeg, PlayAbandonMessage
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentConnected, AgentLogin, CallAnswered, CallEnded, CallFailed, CampaignControl
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead, Outcome
from dialer.ports import EventSink, TelephonyCommand
from dialer.runtime import Runtime, RuntimeConfig


class ScriptedPbx:
    """Answers numbers ending in 1, fails the rest as busy; customers talk 0.05 s."""

    def __init__(self) -> None:
        self.sink: EventSink | None = None
        self.originated: list[str] = []

    @property
    def ready(self) -> bool:
        return self.sink is not None

    async def start(self, sink: EventSink) -> None:
        self.sink = sink

    def execute(self, cmd: TelephonyCommand) -> None:
        loop = asyncio.get_running_loop()
        assert self.sink is not None
        sink = self.sink
        if isinstance(cmd, OriginateAgentLeg):
            loop.call_soon(sink, AgentConnected(cmd.agent_id))
        elif isinstance(cmd, Originate):
            self.originated.append(cmd.call_id)
            if cmd.number.endswith("1"):
                loop.call_later(0.01, sink, CallAnswered(cmd.call_id))
            else:
                loop.call_later(0.01, sink, CallFailed(cmd.call_id, Outcome.BUSY, 17))
        elif isinstance(cmd, ConnectToAgent | PlayAbandonMessage):
            loop.call_later(0.05, sink, CallEnded(cmd.call_id, 16))

    async def close(self) -> None:
        self.sink = None


async def test_runtime_dials_every_lead_once_and_stores_final_attempts():
    store = InMemoryStore()
    pbx = ScriptedPbx()
    rt = Runtime(DialerCore(CoreConfig(id_prefix="rt")), store, pbx, RuntimeConfig(tick_interval_s=0.01))
    await rt.start()
    await rt.create_campaign(CampaignSettings(campaign_id="c1", wrapup_s=0.01))
    leads = [Lead(f"L{i}", "c1", (f"+1555000{i:03d}{i % 2}",)) for i in range(30)]
    assert await rt.add_leads("c1", leads) == 30
    for a in ("a1", "a2", "a3"):
        rt.submit(AgentLogin(a))
    rt.submit(CampaignControl("c1", "start"))
    for _ in range(400):
        await asyncio.sleep(0.01)
        counts = await store.lead_counts("c1")
        if counts["done"] == 30:
            break
    await rt.stop()
    attempts = await store.attempts("c1")
    assert sorted(a.lead_id for a in attempts) == sorted(lead.lead_id for lead in leads)
    assert len(pbx.originated) == len(set(pbx.originated)) == 30
    by_lead = {a.lead_id: a for a in attempts}
    for i in range(30):
        att = by_lead[f"L{i}"]
        assert att.outcome is (Outcome.CONNECTED if i % 2 else Outcome.BUSY) or att.outcome is Outcome.ABANDONED
        assert att.ended_at is not None
    stats = rt.stats("c1")
    assert stats["attempts"] == 30
    assert stats["connected"] + stats["abandoned"] == stats["live_answers"] == 15


def test_call_lifecycle_log_lines_mask_the_number(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="marcador.runtime")
    rt = Runtime(DialerCore(), InMemoryStore(), ScriptedPbx())
    rt._emit(Emit("call.dialed", {"call_id": "c1", "campaign_id": "k", "lead_id": "L1", "number": "+15551234567"}))
    (record,) = caplog.records
    assert record.getMessage() == "call dialed"
    assert record.__dict__["fields"] == {"call_id": "c1", "campaign_id": "k", "lead_id": "L1", "number": "+155******67"}
    assert "1234" not in caplog.text
