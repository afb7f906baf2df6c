"""The engine over real AMI TCP against the simulated PBX: the same acceptance as on Asterisk, faster."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from ami_bridge.client import AmiAuthError
from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from dialer.commands import Originate, OriginateAgentLeg
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, CallFailed, CampaignControl, Event, PbxLink
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead, Outcome
from dialer.runtime import Runtime, RuntimeConfig
from sim.pbx import SimulatedPbx
from tests.harness.campaign import (
    agent_leg_drops_mid_call,
    answer_for_a_vanished_agent,
    answered_call_left_alone,
    burst_config,
    check_agent_drop_run,
    check_forced_run,
    check_vanished_agent_run,
    forced_leads,
    run_campaign,
    trunk_cause_leads,
)


def _config(pbx: SimulatedPbx, auth: str = "md5", secret: str = "s3cret-pbx") -> AmiConfig:
    return AmiConfig(host="127.0.0.1", port=pbx.port, username="marcador", secret=secret, auth=auth,  # type: ignore[arg-type]
                     call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")


@pytest.mark.parametrize("auth", ["md5", "plain"])
async def test_forced_outcomes_over_ami(auth: str) -> None:
    async with SimulatedPbx(secret="s3cret-pbx", speed=4.0) as pbx:
        leads, expected = forced_leads()
        run = await run_campaign(AmiTelephony(_config(pbx, auth)), leads, ("ag1", "ag2", "ag3"),
                                 {"campaign_id": "sp", "ring_timeout_s": 15, "wrapup_s": 1})
        check_forced_run(run, expected)
        assert len(pbx.call_log) == 20  # the PBX saw each lead dialed exactly once
        assert len({c["call_id"] for c in pbx.call_log}) == 20


async def test_trunk_hangup_causes_classify_outcomes() -> None:
    # As on Asterisk 22 (tests/test_asterisk_callflow.py): Reason 0 for every cause, the OriginateResponse first.
    async with SimulatedPbx(secret="s3cret-pbx", speed=4.0) as pbx:
        leads, expected = trunk_cause_leads()
        run = await run_campaign(AmiTelephony(_config(pbx)), leads, ("ag1",),
                                 {"campaign_id": "tc", "ring_timeout_s": 15, "wrapup_s": 1})
        check_forced_run(run, expected)


async def test_abandon_when_no_agent_is_free() -> None:
    # 1 agent, 3 answers at the same moment, long talk: two wait past the threshold and are abandoned.
    async with SimulatedPbx(secret="s3cret-pbx", speed=2.0) as pbx:
        leads = [{"lead_id": f"A{i}", "phone": f"+1555000{i}102020"} for i in range(3)]
        run = await run_campaign(AmiTelephony(_config(pbx)), leads, ("ag1",),
                                 {"campaign_id": "ab", "ring_timeout_s": 15, "wrapup_s": 1,
                                  "abandon_threshold_s": 1.0}, core_config=burst_config(3))
        check_forced_run(run, {lead["lead_id"]: {"connected", "abandoned"} for lead in leads})
        assert sorted(a["outcome"] for a in run.attempts) == ["abandoned", "abandoned", "connected"]


async def test_wrong_secret_is_a_clear_error_and_no_retry_storm() -> None:
    async with SimulatedPbx(secret="right-secret") as pbx:
        tel = AmiTelephony(_config(pbx, secret="wrong-secret"))
        with pytest.raises(AmiAuthError, match="marcador"):
            await tel.start(lambda ev: None)
        await asyncio.sleep(1.5)
        assert tel.client.connects == 1
        await tel.close()


async def test_link_cut_mid_call_is_reconciled_not_redialed() -> None:
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        events: list[Event] = []
        tel = AmiTelephony(_config(pbx))
        await tel.start(events.append)
        tel.execute(Originate("c1", "camp", "L1", "+15550001401000", "", 15.0))  # rings until the timeout
        await asyncio.sleep(0.3)
        pbx.drop_connections()
        for ch in list(pbx.channels.values()):  # the call dies while we are deaf
            pbx._gone(ch, 16)
        failed: list[Event] = []
        for _ in range(60):
            failed = [e for e in events if isinstance(e, CallFailed)]
            if failed:
                break
            await asyncio.sleep(0.1)
        await tel.close()
        assert failed == [CallFailed("c1", Outcome.LOST, None)]
        assert len(pbx.call_log) == 1  # reconciled from what the PBX reports, never dialed again


async def test_a_stalled_pbx_is_noticed_within_5_s_and_the_link_comes_back() -> None:
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        events: list[Event] = []
        tel = AmiTelephony(_config(pbx))
        await tel.start(events.append)
        assert tel.ready
        loop = asyncio.get_running_loop()
        stalled_at = loop.time()
        pbx.stall(8.0)  # the TCP link stays up but nothing answers (a hung Asterisk)
        while tel.ready and loop.time() - stalled_at < 10:
            await asyncio.sleep(0.05)
        noticed = loop.time() - stalled_at
        assert not tel.ready and noticed <= 5.0, noticed
        assert PbxLink(False) in events
        for _ in range(150):  # after the stall a new link logs in and resyncs
            if tel.ready and PbxLink(True) in events:
                break
            await asyncio.sleep(0.1)
        assert tel.ready and tel.client.reconnects >= 1 and PbxLink(True) in events
        await tel.close()


async def test_event_lists_are_collected_whole() -> None:
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        tel = AmiTelephony(_config(pbx))
        await tel.start(lambda ev: None)
        for i in range(300):  # 300 calls ringing: 600 channels (both halves of each Local channel)
            tel.execute(Originate(f"c{i}", "camp", f"L{i}", f"+1555{i:04d}401000", "", 60.0))
        await asyncio.sleep(0.5)
        listing = await tel.client.request({"Action": "CoreShowChannels"})
        assert listing[0]["Response"] == "Success"
        assert sum(1 for m in listing if m.get("Event") == "CoreShowChannel") == 600
        assert listing[-1]["Event"] == "CoreShowChannelsComplete"
        await tel.close()


async def test_ami_over_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with SimulatedPbx(secret="s3cret-pbx", ssl_context=server_ctx, speed=4.0) as pbx:
        cfg = AmiConfig(port=pbx.port, secret="s3cret-pbx", auth="md5", tls=True, tls_ca_file=str(cert),
                        call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")
        leads, expected = forced_leads([(1, 2, {"connected", "abandoned"}), (2, 1, {"busy"})])
        run = await run_campaign(AmiTelephony(cfg), leads, ("ag1", "ag2"),
                                 {"campaign_id": "tls", "ring_timeout_s": 15, "wrapup_s": 1})
        check_forced_run(run, expected)


async def test_the_ami_secret_never_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        tel = AmiTelephony(_config(pbx, auth="plain"))
        await tel.start(lambda ev: None)
        pbx.drop_connections()  # pending actions at a link loss are where panoramisk would log them
        await asyncio.sleep(1.5)
        await tel.close()
    assert "s3cret-pbx" not in caplog.text
    assert "s3cret-pbx" not in repr(_config(pbx))


async def test_scenario_file_drives_the_simulated_pbx(tmp_path: Path) -> None:
    # The same scenario file as the discrete-event simulator: here 60 % busy, 40 % live answers, AMD off.
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: pbx\nseed: 2\nduration_s: 3600\nagents: {count: 4}\n"
                        "calls: {p_live: 0.4, p_busy: 0.6, p_fail: 0.0,"
                        " answer_delay_s: {dist: uniform, low: 2, high: 4},"
                        " talk_s: {dist: fixed, value: 5}}\n")
    async with SimulatedPbx(secret="s3cret-pbx", scenario=str(scenario), speed=4.0) as pbx:
        leads = [{"lead_id": f"S{i}", "phone": f"+1555{i:07d}"} for i in range(40)]
        run = await run_campaign(AmiTelephony(_config(pbx)), leads, ("ag1", "ag2", "ag3", "ag4"),
                                 {"campaign_id": "sc", "ring_timeout_s": 15, "wrapup_s": 1})
    outcomes = Counter(a["outcome"] for a in run.attempts)
    assert set(outcomes) <= {"busy", "connected", "abandoned"} and outcomes["connected"] > 0
    assert 0.35 < outcomes["busy"] / 40 < 0.85  # 60 % busy, within sampling noise of 40 calls
    assert len(pbx.call_log) == 40


async def test_an_unreachable_pbx_is_reported_once_with_where_and_why(caplog: pytest.LogCaptureFixture) -> None:
    # panoramisk logged "Not able to reconnect" every second, without host, port or reason, while Asterisk was away.
    caplog.set_level(logging.INFO, logger="marcador.ami")
    async with SimulatedPbx(secret="s3cret-pbx") as gone:
        port = gone.port  # nothing listens here any more
    cfg = AmiConfig(port=port, secret="s3cret-pbx", auth="md5", connect_timeout_s=0.5,
                    call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")
    tel = AmiTelephony(cfg)
    await tel.start(lambda ev: None)
    await asyncio.sleep(3.2)  # about four failed connects, one a second
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Not able to reconnect" not in said, said
    failed = [r for r in caplog.records if r.getMessage() == "AMI connect failed; retrying"]
    assert len(failed) == 1, said
    fields = failed[0].__dict__["fields"]
    assert fields["port"] == port and "refused" in fields["error"].lower()
    async with SimulatedPbx(port=port, secret="s3cret-pbx"):  # Asterisk is back: still retried every second
        for _ in range(40):
            if tel.ready:
                break
            await asyncio.sleep(0.1)
        assert tel.ready
        await tel.close()
    assert "AMI reachable again" in caplog.text
    assert "awaiting actions" not in caplog.text  # panoramisk said it replayed actions; none is ever replayed


async def test_a_login_refused_after_a_reconnect_is_retried_slowly_until_it_works() -> None:
    # manager.conf changed under a running engine (a secret rotated, a reload with a typo): the link used to stay
    # dead until the engine was restarted by hand, while /readyz said 503 and nothing dialed.
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        tel = AmiTelephony(replace(_config(pbx), auth_retry_s=2.0))
        await tel.start(lambda ev: None)
        assert tel.ready
        pbx.secret = "rotated"
        pbx.drop_connections()
        await asyncio.sleep(1.5)  # reconnected, refused
        assert not tel.ready and tel.client.auth_error is None
        connects = tel.client.connects
        pbx.secret = "s3cret-pbx"  # fixed on the Asterisk side
        for _ in range(60):
            if tel.ready:
                break
            await asyncio.sleep(0.1)
        assert tel.ready
        assert tel.client.connects == connects + 1  # one more try after the wait, not a loop of refused logins
        await tel.close()


async def test_an_originate_the_link_could_not_send_is_lost_not_failed() -> None:
    # The link is down when the command comes (it dropped after the core decided): nothing was dialed.
    async with SimulatedPbx(secret="s3cret-pbx") as gone:
        port = gone.port
    events: list[Event] = []
    tel = AmiTelephony(AmiConfig(port=port, secret="s3cret-pbx", connect_timeout_s=0.3,
                                 call_channel="Local/{number}@sim-customer",
                                 agent_channel="Local/{agent_id}@sim-agent"))
    await tel.start(events.append)
    tel.execute(Originate("c1", "camp", "L1", "+15550001102010", "", 15.0))
    await tel.close()
    assert [e for e in events if isinstance(e, CallFailed)] == [CallFailed("c1", Outcome.LOST, None)]
    assert tel.originates_failed_to_send == 1


async def test_a_drain_that_runs_out_hangs_up_the_calls_no_agent_has() -> None:
    # A stop waits for the calls up; at its deadline a call still ringing used to be left on the PBX: answered
    # after the engine had gone, the debtor would wait on hold (marcador-answered's Wait) with no one to take it.
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        store = InMemoryStore()
        rt = Runtime(DialerCore(CoreConfig(id_prefix="dr")), store, AmiTelephony(_config(pbx)),
                     RuntimeConfig(tick_interval_s=0.05))
        await rt.start()
        await rt.create_campaign(CampaignSettings(campaign_id="d", strategy="progressive", ring_timeout_s=60,
                                                  wrapup_s=1))
        # Two numbers that ring until the Originate's timeout (O=4), one agent's talk of 60 s (O=1, ring 0 s).
        await rt.add_leads("d", [Lead("T1", "d", ("+15550001100060",)), Lead("N1", "d", ("+15550002401000",)),
                                 Lead("N2", "d", ("+15550003401000",))])
        for agent in ("a1", "a2", "a3"):
            rt.submit(AgentLogin(agent))
        rt.submit(CampaignControl("d", "start"))
        for _ in range(100):
            if sum(1 for c in rt.core.calls.values() if c.state == "ringing") == 2 and any(
                    c.state == "connected" for c in rt.core.calls.values()):
                break
            await asyncio.sleep(0.05)
        assert len(pbx.call_log) == 3
        assert not await rt.drain(timeout_s=0.5)
        up = {ch.name.split("@")[0] for ch in pbx.channels.values() if ch.kind == "call"}
        await rt.stop()
    assert up == {"Local/+15550001100060"}  # the ringing ones hung up; the conversation with an agent goes on
    outcomes = {a.lead_id: a.outcome for a in await store.attempts("d")}
    assert outcomes["N1"] is not None and outcomes["N2"] is not None



async def test_an_answered_call_the_engine_never_takes_hears_the_abandon_message_after_the_hold_limit() -> None:
    # marcador-answered used to hold it in silence for an hour; the simulated PBX follows the dialplan.
    # At 10× the caller's 30 s of talk take 3 s, the message 0.05 s, but the hold stays 1 s: it waits for the
    # engine, whose clock the speed factor does not touch (a 0.1 s hold beat the engine's threshold at 10×).
    async with SimulatedPbx(secret="s3cret-pbx", abandon_message_s=0.5, speed=10.0) as pbx:
        held, would_talk = await answered_call_left_alone(AmiTelephony(_config(pbx)), hold_s=1)
    assert 1.0 <= held < 1.0 + 1.0 < would_talk / 10, held
    assert [c["call_id"] for c in pbx.call_log] == ["h1"]


async def test_a_debtor_redirected_into_a_room_without_its_agent_hears_the_message_and_is_abandoned() -> None:
    # As on Asterisk (tests/test_asterisk_callflow.py): the dialplan finds no agent in the room and plays the
    # safe-harbour message instead of leaving the debtor alone in it.
    async with SimulatedPbx(secret="s3cret-pbx", abandon_message_s=1.0) as pbx:
        run = await answer_for_a_vanished_agent(AmiTelephony(_config(pbx)))
    check_vanished_agent_run(run)


async def test_the_debtor_is_hung_up_when_the_agent_leg_leaves_the_room() -> None:
    # As on Asterisk (tests/test_asterisk_callflow.py), where the debtor joins with end_marked: the agent's phone
    # hangs up mid-call and the debtor's call ends with it. The simulated PBX used to keep the debtor in the room,
    # alone, for the rest of its talk time.
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        drop = await agent_leg_drops_mid_call(AmiTelephony(_config(pbx)))
    check_agent_drop_run(drop)


async def _old_run_stops_mid_call(pbx: SimulatedPbx, talking: str, *idle: str) -> None:
    """Node "n"'s run n-1: agent `talking` takes a debtor who talks 3 s, the `idle` agents wait; the run stops
    mid-call with no logout, leaving every leg (and the conversation) on the PBX, as a deploy does."""
    old = Runtime(DialerCore(CoreConfig(id_prefix="n-1")), InMemoryStore(),
                  AmiTelephony(_config(pbx), id_prefix="n-1", node_id="n"), RuntimeConfig(tick_interval_s=0.05))
    await old.start()
    await old.create_campaign(CampaignSettings(campaign_id="s", strategy="progressive", wrapup_s=1))
    await old.add_leads("s", [Lead("T1", "s", ("+15550001100003",))])  # answers at once, talks 3 s
    for agent_id in (talking, *idle):
        old.submit(AgentLogin(agent_id))
    old.submit(CampaignControl("s", "start"))
    for _ in range(100):
        if any(c.state == "connected" for c in old.core.calls.values()):
            break
        await asyncio.sleep(0.05)
    await old.stop()


async def test_a_stale_agent_leg_in_a_conversation_is_hung_up_when_the_conversation_ends() -> None:
    # A stopped engine leaves its conversations going (its stop drains only calls no agent has). The next run of
    # the node hangs up the agent legs left behind, but not one still talking to a debtor: that one goes when the
    # debtor leaves the room. A leg of another node stays.
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        other = AmiTelephony(_config(pbx), id_prefix="o-1", node_id="o")
        seen: list[Event] = []
        await other.start(seen.append)
        other.execute(OriginateAgentLeg("theirs"))
        await _old_run_stops_mid_call(pbx, "talking", "idle")  # both legs stay, one of them with the debtor
        legs = {ch.agent_id: ch.uid for ch in pbx.channels.values() if ch.kind == "agent"}
        assert set(legs) == {"talking", "idle", "theirs"}

        tel = AmiTelephony(_config(pbx), id_prefix="n-2", node_id="n")
        await tel.start(seen.append)
        try:
            await asyncio.sleep(0.2)
            assert tel.ready and tel.stale_legs_hung_up == 1
            left = {ch.agent_id for ch in pbx.channels.values() if ch.kind == "agent"}
            assert left == {"talking", "theirs"}  # the idle one went at once; the talking one is still on its call
            for _ in range(100):  # the debtor hangs up after its 3 s of talk
                if not any(ch.kind == "call" for ch in pbx.channels.values()):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            assert {ch.agent_id for ch in pbx.channels.values() if ch.kind == "agent"} == {"theirs"}
            assert tel.stale_legs_hung_up == 2
        finally:
            await tel.close()
            await other.close()


async def test_a_reconnect_lists_the_channels_once() -> None:
    # The resync and the stale-leg sweep each asked for CoreShowChannels at every link start: on a busy PBX that
    # is thousands of events twice over, before dialing may resume. The sweep now reuses the resync's listing.
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        tel = AmiTelephony(_config(pbx), id_prefix="n-1", node_id="n")
        await tel.start(lambda ev: None)
        try:
            assert tel.ready and pbx.actions["coreshowchannels"] == 1  # the first login: the sweep only
            pbx.drop_connections()
            for _ in range(100):
                if tel.client.reconnects >= 1 and tel.ready and tel.resyncs >= 1:
                    break
                await asyncio.sleep(0.05)
            assert tel.ready and tel.resyncs == 1
            assert pbx.actions["coreshowchannels"] == 2  # one more for the reconnect, not two
        finally:
            await tel.close()


async def test_an_agent_logging_in_while_its_phone_is_on_a_call_from_before_the_restart_waits_for_that_call() -> None:
    # A deploy during the shift: the old run stops with an agent talking to a debtor; the agent logs in to the new
    # run at once. Its new leg joined the room where that conversation went on, the agent was ready, and the next
    # debtor answered was put into the same conversation. The leg is now held until that call ends.
    async with SimulatedPbx(secret="s3cret-pbx") as pbx:
        await _old_run_stops_mid_call(pbx, "talking")  # the agent's leg stays in its conversation

        new = Runtime(DialerCore(CoreConfig(id_prefix="n-2")), InMemoryStore(),
                      AmiTelephony(_config(pbx), id_prefix="n-2", node_id="n"), RuntimeConfig(tick_interval_s=0.05))
        await new.start()
        try:
            await new.create_campaign(CampaignSettings(campaign_id="s", strategy="progressive", wrapup_s=1))
            await new.add_leads("s", [Lead("T2", "s", ("+15550001100002",))])
            new.submit(AgentLogin("talking"))
            new.submit(CampaignControl("s", "start"))
            await asyncio.sleep(0.5)
            agent = new.core.agents.get("talking")
            assert agent is not None and agent.status.value == "connecting"
            assert agent.reason == "on a call from before the restart"
            assert [ch.agent_id for ch in pbx.channels.values() if ch.kind == "agent"] == ["talking"]  # the old one
            rooms: list[int] = []
            for _ in range(200):  # the old debtor hangs up after its 3 s; then the held leg is called
                rooms.append(sum(1 for ch in pbx.channels.values() if ch.kind == "call" and ch.room == "agent-talking"))
                if any(a.call_id.startswith("n-2") and a.outcome is not None for a in await new.attempts("s")):
                    break
                await asyncio.sleep(0.05)
            assert max(rooms) == 1  # never two debtors in one room
            (att,) = [a for a in await new.attempts("s") if a.call_id.startswith("n-2")]
            assert att.outcome is Outcome.CONNECTED and att.agent_id == "talking"
        finally:
            await new.stop()
