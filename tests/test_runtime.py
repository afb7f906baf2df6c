"""The asyncio runtime around the core, with an in-process PBX stand-in (a unit test of the runtime's
dispatch and store ordering; the real PBX paths are proven in the simulated-PBX and Asterisk suites)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from dialer.commands import Emit, RecordAttempt
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, CampaignControl
from dialer.memory_store import InMemoryStore
from dialer.model import Attempt, CampaignSettings, CampaignStatus, Lead, Outcome
from dialer.runtime import Runtime, RuntimeConfig
from tests.harness.scripted_pbx import ScriptedPbx


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


async def test_stop_ends_even_when_an_event_lands_as_the_loop_is_cancelled() -> None:
    """stop() right after a login: the PBX's AgentConnected reaches the queue in the loop iteration that cancels
    the core's task. asyncio.wait_for (Python 3.11) returned that event and swallowed the cancellation, the loop
    ran on, and stop() waited for it for ever (a test run, or `marcador run` after SIGTERM, hung)."""
    runtime = Runtime(DialerCore(CoreConfig(id_prefix="t")), InMemoryStore(), ScriptedPbx(),
                      RuntimeConfig(tick_interval_s=0.02))
    await runtime.start()
    runtime.submit(AgentLogin("a1", frozenset()))  # handled as stop() begins; the PBX answers its leg at once
    stopping = asyncio.ensure_future(runtime.stop())
    done, _ = await asyncio.wait([stopping], timeout=10.0)
    assert done, "stop() hung"
    await stopping


class _CampaignsUnreadable(InMemoryStore):
    """Its campaign version cannot be read (a network store failing on that one key); every other call works."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def campaign_version(self) -> int:
        if self.failing:
            raise ConnectionError("campaigns unreadable")
        return await super().campaign_version()


async def test_a_campaign_sync_failure_leaves_dialing_to_the_store_down_handling(
        caplog: pytest.LogCaptureFixture) -> None:
    """The campaign sync cannot read the store: it logs (no settings, no numbers), and the store-down handling
    decides; the store still answering its ping, dialing goes on as it was and the sync resumes after."""
    store = _CampaignsUnreadable()
    pbx = ScriptedPbx()
    rt = Runtime(DialerCore(CoreConfig(id_prefix="rt")), store, pbx,
                 RuntimeConfig(tick_interval_s=0.01, campaign_sync_interval_s=0.05))
    await rt.start()
    await rt.create_campaign(CampaignSettings(campaign_id="c1", wrapup_s=0.01, caller_id="Sales <5550100>"))
    await rt.add_leads("c1", [Lead(f"L{i}", "c1", (f"+1555000{i:04d}0",)) for i in range(2000)])
    rt.submit(AgentLogin("a1"))
    assert await rt.control_campaign("c1", "start")
    store.failing = True
    await asyncio.sleep(0.3)
    dialed = len(pbx.originated)
    await asyncio.sleep(0.3)
    assert len(pbx.originated) > dialed > 0 and rt.store_up  # still dialing: the store answers its ping
    assert "campaigns unreadable" in caplog.text and "5550100" not in caplog.text
    await store.update_campaign("c1", lambda c: dataclasses.replace(c, max_lines=3))
    store.failing = False
    for _ in range(100):
        if rt.core.campaigns["c1"].settings.max_lines == 3:
            break
        await asyncio.sleep(0.02)
    assert rt.core.campaigns["c1"].settings.max_lines == 3  # taken once the store reads again
    await rt.stop()


async def _started_without_sync(store: InMemoryStore) -> Runtime:
    """A started runtime on `store` whose campaign and callback sync never runs by itself (the test runs it)."""
    rt = Runtime(DialerCore(CoreConfig(id_prefix="rt")), store, ScriptedPbx(),
                 RuntimeConfig(tick_interval_s=0.01, campaign_sync_interval_s=3600))
    await rt.start()
    return rt


async def test_a_pause_after_a_stop_through_another_node_does_nothing() -> None:
    """The API read "running" and then asked for a pause, while another node's stop landed in the store: the pause
    neither overwrites the stop nor pauses this node (it stops at its next reload)."""
    store = InMemoryStore()
    rt = await _started_without_sync(store)
    try:
        await rt.create_campaign(CampaignSettings(campaign_id="c1"))
        assert await rt.control_campaign("c1", "start") is CampaignStatus.CREATED
        for _ in range(100):
            if rt.core.campaigns["c1"].status is CampaignStatus.RUNNING:
                break
            await asyncio.sleep(0.01)
        await store.set_campaign_status("c1", CampaignStatus.STOPPED)  # another node's stop
        assert await rt.control_campaign("c1", "pause") is CampaignStatus.STOPPED
        await asyncio.sleep(0.05)
        assert await store.campaign_status("c1") is CampaignStatus.STOPPED
        assert rt.core.campaigns["c1"].status is CampaignStatus.RUNNING  # not paused: the reload stops it
        assert await rt.control_campaign("nope", "pause") is None
    finally:
        await rt.stop()


class _SlowAttempts(InMemoryStore):
    """Its attempt writes wait until let go (a store answering slowly, or a write being retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def record_attempt(self, attempt: Attempt) -> None:
        await self.go.wait()
        await super().record_attempt(attempt)


async def test_pending_writes_counts_the_write_in_hand() -> None:
    """The write the writer holds is not in the queue any more; it is pending all the same until it lands (the
    gauge, drain() and anyone waiting for a node's writes to be done count it: with one write in hand and none
    queued, they read 0 and moved on while its outcome was still unwritten)."""
    store = _SlowAttempts()
    rt = Runtime(DialerCore(CoreConfig(id_prefix="rt")), store, ScriptedPbx())
    await rt.start()
    try:
        done = Attempt("k1", "c", "l0", "+15550000", "1000", 1_700_000_000.0, ended_at=1_700_000_009.0,
                       outcome=Outcome.BUSY)
        rt._dispatch([RecordAttempt(done)])
        await asyncio.sleep(0.05)
        assert rt.pending_writes == 1
        store.go.set()
        for _ in range(100):
            if not rt.pending_writes:
                break
            await asyncio.sleep(0.01)
        assert rt.pending_writes == 0
        assert [a.outcome for a in await store.attempts("c")] == [Outcome.BUSY]
    finally:
        await rt.stop()


class _SlowCheckpoints(InMemoryStore):
    """A shared store's callback hand-over, in memory: a callback asked of the store for a lead held here
    (`held_callbacks`), cleared once applied (`clear_callbacks`), and checkpoints that land only when let go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.asked: dict[str, tuple[float, str | None]] = {}
        self.cleared: list[str] = []
        self.kept: dict[str, dict[str, object]] = {}

    async def checkpoint_lead(self, campaign_id: str, lead_id: str, state: dict[str, object]) -> bool:
        await self.go.wait()
        self.kept[lead_id] = dict(state)
        return True

    async def held_callbacks(self, campaign_id: str) -> dict[str, tuple[float, str | None]]:
        return dict(self.asked)

    async def clear_callbacks(self, campaign_id: str, applied: object) -> int:
        self.cleared += list(self.asked)
        self.asked.clear()
        return len(self.cleared)


async def test_a_callback_taken_from_the_store_is_cleared_there_only_once_its_checkpoint_landed() -> None:
    """Cleared before the lead's new state was kept with its lease, a callback would be lost by a node killed in
    between: neither asked in the store any more nor in the state its lead expires back with."""
    store = _SlowCheckpoints()
    rt = await _started_without_sync(store)
    try:
        await rt.create_campaign(CampaignSettings(campaign_id="c1"))
        await rt.add_leads("c1", [Lead("L0", "c1", ("+15550000001",))])
        assert await rt.control_campaign("c1", "start")  # no agent: leased, never dialed
        hop = rt.core.campaigns["c1"].hopper
        for _ in range(200):
            if hop.info("L0") is not None:
                break
            await asyncio.sleep(0.01)
        at = rt.clock() + 3600
        store.asked = {"L0": (at, None)}
        await rt._sync_callbacks()
        assert hop.info("L0").callback_at == at  # type: ignore[union-attr]  # the core has it
        assert store.cleared == [] and rt.pending_writes  # its checkpoint not in: kept asked in the store
        store.go.set()
        await rt._sync_callbacks()  # applied already: not again; cleared now
        assert store.cleared == ["L0"] and store.kept["L0"]["cb"] == at
    finally:
        await rt.stop()
