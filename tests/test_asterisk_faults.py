"""Real Asterisk 22: the abandon path, an Asterisk restart and a TCP link cut mid-campaign, agent legs left by a
stopped engine.

After each fault: every Originate was sent once per attempt record, every attempt has a final outcome,
and dialing resumed (the campaign finished its leads).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ami_bridge.telephony import AmiTelephony
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, CampaignControl
from dialer.memory_store import InMemoryStore
from dialer.model import AgentStatus, CampaignSettings, Lead, Outcome
from dialer.runtime import Runtime, RuntimeConfig
from tests.harness.campaign import (
    CountingTelephony,
    answered_call_left_alone,
    burst_config,
    check_forced_run,
    run_campaign,
)

pytestmark = pytest.mark.asterisk


async def test_abandon_path_plays_message_and_counts(asterisk: Any) -> None:
    # One agent, three answers at once: one is connected, two wait past 1 s and hear the abandon message.
    leads = [{"lead_id": f"A{i}", "phone": f"+1555000{i}102020"} for i in range(3)]
    run = await run_campaign(asterisk.telephony(reconnect_delay_s=1.0), leads, ("ag1",),
                             {"campaign_id": "ab", "ring_timeout_s": 15, "wrapup_s": 1, "abandon_threshold_s": 1.0},
                             core_config=burst_config(3))
    check_forced_run(run, {lead["lead_id"]: {"connected", "abandoned"} for lead in leads})
    by = Counter(a["outcome"] for a in run.attempts)
    assert by == {"connected": 1, "abandoned": 2}
    for a in run.attempts:
        if a["outcome"] == "abandoned":
            # the message (about 2 s) was played before the line was hung up, not a silent drop
            assert a["ended_at"] - a["answered_at"] >= 1.0 + 1.0


async def test_an_answered_call_the_engine_never_takes_hears_the_abandon_message_after_the_hold_limit(
        asterisk: Any) -> None:
    # marcador-answered used to Wait(3600) in a loop: with the engine gone, a debtor who answered sat in silence.
    held, would_talk = await answered_call_left_alone(asterisk.telephony(reconnect_delay_s=1.0), hold_s=1)
    assert 1.0 + 1.0 <= held < would_talk / 4, held  # the hold, then the message (silence/1&sorry), then hang-up


def _fault_leads() -> list[dict[str, Any]]:
    kinds = ["102004", "102004", "102004", "201000"]  # answer after 2 s, talk 4 s; busy after 1 s
    return [{"lead_id": f"F{i:02d}", "phone": f"+1555{i:04d}{kinds[i % 4]}"} for i in range(24)]


def _check_fault_run(run: Any, tel: CountingTelephony, fault_at: list[float]) -> None:
    # every Originate went out once per attempt record, and every attempt record had its Originate
    assert all(n == 1 for n in tel.originated.values()), tel.originated
    assert set(tel.originated) == {a["call_id"] for a in run.attempts}
    # every attempt has a final outcome; a lead in doubt may be `lost` and then dialed under a new attempt
    assert all(a["outcome"] for a in run.attempts)
    final = {a["lead_id"]: a["outcome"] for a in sorted(run.attempts, key=lambda a: a["dialed_at"])}
    assert len(final) == 24 and "lost" not in final.values()
    # dialing resumed after the fault
    assert fault_at and any(t > fault_at[0] for t in tel.originated_at.values())


async def _run_with_fault(asterisk: Any, campaign_id: str, at_s: float,
                          fault: Callable[[CountingTelephony], Awaitable[None]]) -> CountingTelephony:
    tel = CountingTelephony(asterisk.telephony(reconnect_delay_s=1.0))
    fault_at: list[float] = []

    async def chaos(runtime: Runtime) -> None:
        await asyncio.sleep(at_s)
        fault_at.append(asyncio.get_running_loop().time())
        await fault(tel)

    run = await run_campaign(tel, _fault_leads(), ("ag1", "ag2", "ag3"),
                             {"campaign_id": campaign_id, "ring_timeout_s": 15, "wrapup_s": 1},
                             core_config=burst_config(2), chaos=chaos, timeout_s=150)
    _check_fault_run(run, tel, fault_at)
    return tel


async def test_asterisk_restart_mid_campaign(asterisk: Any) -> None:
    async def restart(tel: CountingTelephony) -> None:
        await asyncio.to_thread(asterisk.restart)

    tel = await _run_with_fault(asterisk, "rs", 6, restart)
    assert tel.inner.resyncs >= 1


async def test_tcp_link_cut_mid_campaign(asterisk: Any) -> None:
    async def cut(tel: CountingTelephony) -> None:
        tel.inner.client._manager.protocol.transport.abort()  # the link dies; Asterisk and the calls live on

    tel = await _run_with_fault(asterisk, "tc", 5, cut)
    assert tel.inner.client.reconnects >= 1 and tel.inner.resyncs >= 1


async def _engine(asterisk: Any, prefix: str, node_id: str) -> tuple[Runtime, AmiTelephony]:
    tel = asterisk.telephony(id_prefix=prefix, node_id=node_id, reconnect_delay_s=1.0)
    rt = Runtime(DialerCore(CoreConfig(id_prefix=prefix)), InMemoryStore(), tel, RuntimeConfig(tick_interval_s=0.05))
    await rt.start()
    return rt, tel


async def _until(ok: Callable[[], Any], why: str, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not ok():
        assert loop.time() < end, why
        await asyncio.sleep(0.05)


def _ready(rt: Runtime, agent_id: str) -> bool:
    agent = rt.core.agents.get(agent_id)
    return agent is not None and agent.status is AgentStatus.READY


async def _rooms(asterisk: Any) -> str:
    return str(await asyncio.to_thread(asterisk.cli, "confbridge list"))  # the engines' loop keeps running


async def test_agent_legs_left_by_a_stopped_engine_are_hung_up_by_the_next_run_of_its_node_only(
        asterisk: Any, caplog: pytest.LogCaptureFixture) -> None:
    # A stopped engine leaves its agents' legs in their rooms. The next run's customers were checked into a room
    # by CONFBRIDGE_INFO(marked), which counted such a leg as the agent: a debtor could be put into a room whose
    # agent the engine did not have. The next run of the same node hangs those legs up as its link comes up; another
    # node's legs on the same Asterisk, and its own legs after a link flap, stay.
    caplog.set_level(logging.INFO, logger="marcador.ami")
    other, _ = await _engine(asterisk, "sl-o", "sl-other")
    try:
        old, _ = await _engine(asterisk, "sl-1", "sl-node")
        try:
            other.submit(AgentLogin("sl-theirs"))
            old.submit(AgentLogin("sl-stale"))
            await _until(lambda: _ready(other, "sl-theirs") and _ready(old, "sl-stale"), "agents never in rooms")
        finally:
            await old.stop()  # no logout: its leg stays in its room
        assert "agent-sl-stale" in await _rooms(asterisk)

        new, tel = await _engine(asterisk, "sl-2", "sl-node")  # the same node, started again
        try:
            rooms = ""
            for _ in range(20):
                rooms = await _rooms(asterisk)
                if "agent-sl-stale" not in rooms:
                    break
            assert "agent-sl-stale" not in rooms and "agent-sl-theirs" in rooms, rooms
            assert tel.stale_legs_hung_up == 1  # by start(), before the link was ready: before any dial
            # found in its room (a leg with a debtor in the room would wait for the debtor to leave)
            assert [getattr(r, "fields", {}).get("room") for r in caplog.records
                    if r.getMessage() == "stale agent leg hung up"] == ["agent-sl-stale"]

            new.submit(AgentLogin("sl-live"))
            await _until(lambda: _ready(new, "sl-live"), "the new run's agent never reached its room")
            leg = tel.translator.legs["sl-live"].uniqueid
            assert tel.client._manager is not None
            tel.client._manager.protocol.transport.abort()  # a link flap: Asterisk and the legs live on
            await _until(lambda: not tel.ready, "the link never went down")
            await _until(lambda: tel.ready and tel.client.reconnects >= 1, "the link never came back")
            await asyncio.sleep(1.0)  # time for a wrong hang-up to show
            assert _ready(new, "sl-live") and tel.translator.legs["sl-live"].uniqueid == leg
            assert tel.stale_legs_hung_up == 1
            rooms = await _rooms(asterisk)
            assert "agent-sl-live" in rooms and "agent-sl-theirs" in rooms, rooms
        finally:
            await new.stop()
    finally:
        await other.stop()


async def test_an_agent_back_while_its_phone_is_on_a_call_from_before_the_restart_gets_no_debtor_into_that_call(
        asterisk: Any) -> None:
    # A deploy mid-shift: the old run stops with the agent talking to a debtor (its leg and the debtor stay in the
    # room) and the agent logs in to the new run at once. Its new leg was called into that room and the agent was
    # ready there: the next debtor answered joined the conversation. The new leg now waits for that call to end.
    old, _ = await _engine(asterisk, "hl-1", "hl-node")
    try:
        await old.create_campaign(CampaignSettings(campaign_id="h", strategy="progressive", wrapup_s=1))
        await old.add_leads("h", [Lead("H1", "h", ("+15550001100006",))])  # answers at once, talks 6 s
        old.submit(AgentLogin("hl-agent"))
        old.submit(CampaignControl("h", "start"))
        await _until(lambda: any(c.state == "connected" for c in old.core.calls.values()), "the call never connected")
    finally:
        await old.stop()  # no logout: the agent's leg stays in its conversation
    new, tel = await _engine(asterisk, "hl-2", "hl-node")
    try:
        await new.create_campaign(CampaignSettings(campaign_id="h", strategy="progressive", wrapup_s=1))
        await new.add_leads("h", [Lead("H2", "h", ("+15550001100002",))])
        new.submit(AgentLogin("hl-agent"))
        new.submit(CampaignControl("h", "start"))
        await _until(lambda: (a := new.core.agents.get("hl-agent")) is not None
                     and a.reason == "on a call from before the restart", "the leg was not held")
        assert not new.core.calls  # nothing dialed for an agent whose phone is busy
        await _until(lambda: _ready(new, "hl-agent") or bool(new.core.calls), "the held leg was never called")
        assert tel.stale_legs_hung_up == 1  # the old leg, once its debtor left
        done: list[Any] = []
        for _ in range(400):
            done = [a for a in await new.attempts("h") if a.outcome is not None]
            if done:
                break
            await asyncio.sleep(0.05)
        assert [(a.outcome, a.agent_id) for a in done] == [(Outcome.CONNECTED, "hl-agent")]
    finally:
        await new.stop()
