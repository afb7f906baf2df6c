"""Routing and dialing properties of the core under random event sequences (hypothesis): an answered call only
ever reaches a free agent who serves its campaign with the skill it needs, at the best level free at that
moment; no agent holds two calls; no lead is dialed twice at once; no DNC number is dialed; every refusal has a
reason."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.commands import ConnectToAgent, Emit, Originate
from dialer.core import CoreConfig, DialerCore
from dialer.events import (
    AgentConnected,
    AgentLogin,
    AgentState,
    CallAnswered,
    CallEnded,
    CallFailed,
    CampaignControl,
    DncAdd,
    LeadsAvailable,
)
from dialer.model import AgentStatus, CampaignSettings, Lead, Outcome

SKILLS = ("legal", "spanish")
agents_st = st.lists(
    st.tuples(st.sampled_from(SKILLS), st.integers(1, 5), st.frozensets(st.sampled_from(("a", "b")))),
    min_size=1, max_size=6)
steps_st = st.lists(st.tuples(st.sampled_from(("tick", "answer", "fail", "end", "ready", "pause", "dnc")),
                              st.integers(0, 50)), min_size=5, max_size=80)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agents=agents_st, steps=steps_st, ratio=st.sampled_from(("progressive", "ratio")))
def test_random_floors_route_and_dial_within_the_rules(agents, steps, ratio) -> None:
    core = DialerCore(CoreConfig(id_prefix="p"))
    core.add_campaign(CampaignSettings(campaign_id="a", skill="legal", strategy=ratio, wrapup_s=None))
    core.add_campaign(CampaignSettings(campaign_id="b", skill="spanish", strategy=ratio, wrapup_s=None, weight=2))
    skills: dict[str, dict[str, int]] = {}
    camps: dict[str, frozenset[str]] = {}
    for i, (skill, level, campaigns) in enumerate(agents):
        aid = f"ag{i}"
        skills[aid], camps[aid] = {skill: level}, campaigns
        core.handle(AgentLogin(aid, campaigns, ((skill, level),)), 0.0)
        core.handle(AgentConnected(aid), 0.0)
    for cid in ("a", "b"):
        core.handle(CampaignControl(cid, "start"), 0.0)
        leads = tuple(Lead(f"{cid}{k}", cid, (f"+1212555{ord(cid)}{k:03d}",)) for k in range(30))
        core.handle(LeadsAvailable(cid, leads), 0.0)
    dnc: set[str] = set()
    live: dict[str, str] = {}  # call id → lead id, dialed and not ended
    holder: dict[str, str] = {}  # agent id → call id it was connected to, until the call ends
    now = 0.0

    def check(cmds: list) -> None:
        for c in cmds:
            if isinstance(c, Originate):
                assert c.number not in dnc
                assert c.lead_id not in live.values(), "a lead dialed twice at once"
                live[c.call_id] = c.lead_id
            elif isinstance(c, ConnectToAgent):
                call = core.calls[c.call_id]
                cid = call.attempt.campaign_id
                need = core.campaigns[cid].settings.skill
                assert need is not None and need in skills[c.agent_id], "routed to an agent without the skill"
                assert not camps[c.agent_id] or cid in camps[c.agent_id], "routed to an agent of another campaign"
                assert c.agent_id not in holder, "an agent given two calls"
                holder[c.agent_id] = c.call_id
            elif isinstance(c, Emit) and c.kind == "dial.refused":
                assert c.data["reason"] and c.data["detail"]

    for kind, k in steps:
        now += 1.0
        calls = sorted(core.calls)
        if kind == "tick":
            check(core.tick(now))
        elif kind in ("answer", "fail", "end") and calls:
            call_id = calls[k % len(calls)]
            state = core.calls[call_id].state
            if kind == "answer" and state in ("dialing", "ringing"):
                free_before = {a.agent_id: a for a in core.agents.all() if a.status is AgentStatus.READY}
                cmds = core.handle(CallAnswered(call_id), now)
                check(cmds)
                for c in cmds:
                    if isinstance(c, ConnectToAgent):
                        need = core.campaigns[core.calls[call_id].attempt.campaign_id].settings.skill
                        assert need is not None
                        best = max((skills[a][need] for a in free_before if need in skills[a]
                                    and (not camps[a] or core.calls[call_id].attempt.campaign_id in camps[a])),
                                   default=0)
                        assert skills[c.agent_id][need] == best, "not the best level free"
            elif kind == "fail" and state in ("dialing", "ringing"):
                check(core.handle(CallFailed(call_id, Outcome.BUSY, 17), now))
                live.pop(call_id, None)
            elif kind == "end":
                check(core.handle(CallEnded(call_id), now))
                live.pop(call_id, None)
                for aid, held in list(holder.items()):
                    if held == call_id:
                        del holder[aid]
        elif kind in ("ready", "pause"):
            aid = f"ag{k % len(agents)}"
            state = AgentStatus.READY if kind == "ready" else AgentStatus.PAUSED
            check(core.handle(AgentState(aid, state), now))  # type: ignore[arg-type]
        elif kind == "dnc":
            cid = "a" if k % 2 else "b"
            number = f"+1212555{ord(cid)}{k % 30:03d}"
            dnc.add(number)
            check(core.handle(DncAdd(number), now))
        # the core's own view agrees: every call it holds is one we saw dialed
        assert set(core.calls) <= set(live)
