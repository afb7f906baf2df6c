"""Real Asterisk 22: how the call flow's outcomes come out of Asterisk's own events (audit of the AMI bridge).

Numbers follow the sim-customer convention (last six digits O NN TTT, asterisk-docker/config/extensions.conf).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from dialer.commands import Originate
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, AgentLogout, CallAnswered, CallEnded
from dialer.memory_store import InMemoryStore
from dialer.model import AgentStatus
from dialer.runtime import Runtime, RuntimeConfig
from tests.harness.campaign import (
    TRUNK_CAUSES,
    agent_leg_drops_mid_call,
    answer_for_a_vanished_agent,
    check_agent_drop_run,
    check_forced_run,
    check_vanished_agent_run,
    run_campaign,
    trunk_cause_leads,
)

pytestmark = pytest.mark.asterisk


async def test_trunk_hangup_causes_classify_busy_no_answer_and_congestion(asterisk: Any) -> None:
    # A SIP trunk reports busy/no answer/congestion/unallocated as a hang-up cause without a tone, and Asterisk's
    # OriginateResponse then says Reason 0 for all of them: the outcome must come from the cause.
    leads, expected = trunk_cause_leads()
    run = await run_campaign(asterisk.telephony(), leads, ("ag1",),
                             {"campaign_id": "tc", "ring_timeout_s": 15, "wrapup_s": 1}, timeout_s=40)
    check_forced_run(run, expected)
    assert {a["lead_id"]: a["hangup_cause"] for a in run.attempts} == {f"T{c}": int(c) for c in TRUNK_CAUSES}


async def test_a_callee_who_hangs_up_while_amd_listens_ends_the_attempt(asterisk: Any) -> None:
    # Answered, then gone after 1 s, before AMD() decided: the dialplan never reaches its DialerAnswered event.
    # The attempt used to stay "dialing" for ever (the campaign never finished, a line counted in flight).
    leads = [{"lead_id": "H1", "phone": "+15550001100001"}]
    run = await run_campaign(asterisk.telephony(), leads, ("ag1",),
                             {"campaign_id": "ah", "ring_timeout_s": 15, "wrapup_s": 1, "amd": True}, timeout_s=30)
    # Not a machine by AMD: a live answer the dialer could not serve (DESIGN.md, Words and figures).
    check_forced_run(run, {"H1": {"abandoned"}})
    (attempt,) = run.attempts
    assert attempt["amd"] == "HANGUP" and attempt["answered_at"] is not None and attempt["hangup_cause"] == 16
    assert run.events["call.connected"] == 0  # no agent was handed a line that was already dead
    assert Counter(a["outcome"] for a in run.attempts) == {"abandoned": 1}


async def test_a_call_id_with_a_comma_is_still_recognised_when_answered(asterisk: Any) -> None:
    # Call ids start with the node id (settings.node_id, free text). UserEvent() splits its arguments at commas, so
    # "dc1,east-…" came back as CallId "dc1": the answer was never matched, the debtor sat in the hold and then
    # heard the abandon message while an agent stood ready.
    tel = asterisk.telephony()
    seen: list[object] = []
    await tel.start(seen.append)
    call_id = "dc1,east-5f00-1"
    tel.execute(Originate(call_id, "camp", "L1", "+15550001100002", "", 15.0,
                          variables={"MARCADOR_CALL_ID": call_id, "MARCADOR_HOLD_S": "1"}))
    for _ in range(100):
        if any(isinstance(e, CallEnded) for e in seen):
            break
        await asyncio.sleep(0.05)
    await tel.close()
    assert CallAnswered(call_id, "HUMAN") in seen, seen


async def test_a_debtor_redirected_into_a_room_without_its_agent_hears_the_message_and_is_abandoned(
        asterisk: Any) -> None:
    # The agent's leg dropped before the core heard of it: the core connected the answer to that agent, and the
    # debtor sat alone in the conference, in silence, for the whole 30 s, recorded "connected".
    run = await answer_for_a_vanished_agent(asterisk.telephony())
    check_vanished_agent_run(run)


async def test_an_agent_logged_out_right_after_logging_in_leaves_its_room(asterisk: Any) -> None:
    # The logout's hangup came before Asterisk announced the leg's channel and was dropped: the phone joined its
    # room and stayed there, the agent "logging out" for good.
    rt = Runtime(DialerCore(CoreConfig(id_prefix="lo")), InMemoryStore(), asterisk.telephony(),
                 RuntimeConfig(tick_interval_s=0.05))
    await rt.start()
    try:
        rt.submit(AgentLogin("quick"))
        rt.submit(AgentLogout("quick"))
        status = None
        for _ in range(100):
            agent = rt.core.agents.get("quick")
            status = agent.status if agent is not None else None
            if status is AgentStatus.LOGGED_OUT:
                break
            await asyncio.sleep(0.05)
        rooms = asterisk.cli("confbridge list")
    finally:
        await rt.stop()
    assert status is AgentStatus.LOGGED_OUT
    assert "agent-quick" not in rooms, rooms


async def test_the_debtor_is_hung_up_when_the_agent_leg_leaves_the_room(asterisk: Any) -> None:
    # The debtor joins the agent's room with end_marked (confbridge.conf): when the agent's phone hangs up mid-call,
    # Asterisk ends the debtor's call too. The simulated PBX must do the same (tests/test_simpbx_engine.py).
    check_agent_drop_run(await agent_leg_drops_mid_call(asterisk.telephony()))
