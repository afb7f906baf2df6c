"""Real Asterisk 22: the abandon path, an Asterisk restart and a TCP link cut mid-campaign.

After each fault: every Originate was sent once per attempt record, every attempt has a final outcome,
and dialing resumed (the campaign finished its leads).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dialer.runtime import Runtime
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
