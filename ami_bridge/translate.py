"""AMI ↔ core, sans-IO: AMI messages in, core events and AMI actions out.

The translator keeps just enough per-call state to name channels in Redirect/Hangup and to classify
outcomes. It never performs I/O, so it is unit-tested and benchmarked without a socket.

Conventions (asterisk-docker/config/extensions.conf):
- a customer call is originated with `ChannelId = call_id`, so its first channel's Uniqueid is the call id
  (with Local channels, the second half is `call_id;2`); it runs the answered context when answered, which
  raises `UserEvent DialerAnswered` carrying the AMD verdict;
- a customer redirected into an agent's room whose agent leg is not in it raises `UserEvent DialerNoAgent`
  and hears the abandon message instead of joining;
- an agent's leg is originated with `ChannelId = <prefix>-agent-<agent_id>-<n>` into the login context and
  joins the ConfBridge `agent-<agent_id>`; a customer is redirected into the same bridge to be connected. With a
  node id, the leg carries the channel variable `MARCADOR_NODE=<node id>`: a later run of the same node finds the
  legs an earlier run left behind (`stale_leg_candidates`) and hangs them up.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ami_bridge.config import AmiConfig
from dialer.commands import ConnectToAgent, Hangup, HangupAgentLeg, Originate, OriginateAgentLeg, PlayAbandonMessage
from dialer.events import (
    AMD_HANGUP,
    AgentConnected,
    AgentDisconnected,
    AgentJoinedCall,
    AgentMissing,
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
    Event,
)
from dialer.model import Outcome, outcome_for_cause
from dialer.ports import TelephonyCommand

log = logging.getLogger("marcador.ami")

Message = Mapping[str, Any]  # a parsed AMI message; header names as Asterisk sends them

# OriginateResponse `Reason` (the last control frame seen) → outcome of a call that never answered. Only a busy
# or congestion tone, or the Originate's own timeout, say something; a far end that just hangs up (a SIP trunk's
# 486, 480, 503 or 404 alike) gives Reason 0 or 1, and then the channel's Hangup cause tells what happened.
_REASON_OUTCOME = {
    "3": Outcome.NO_ANSWER,  # still ringing at the Originate timeout
    "5": Outcome.BUSY,
    "8": Outcome.CONGESTION,
}
ROOM_PREFIX = "agent-"
LEG_MARK = "-agent-"  # in every agent leg's ChannelId, between the run's prefix and the agent id
NODE_VARIABLE = "MARCADOR_NODE"  # the node that originated an agent leg


@dataclass(slots=True)
class AmiAction:
    """An AMI action to send. `call_id`/`agent_id` say whose result it is (for Originate results)."""

    fields: dict[str, str | list[str]]
    call_id: str | None = None
    agent_id: str | None = None

    @property
    def name(self) -> str:
        return str(self.fields["Action"])


@dataclass(slots=True)
class CallTrack:
    call_id: str
    channel: str | None = None
    answered: bool = False
    hangup_requested: bool = False
    hangup_cause: int | None = None
    progress_seen: bool = False
    gone: bool = False  # our channel's Hangup seen
    up: bool = False  # the far end answered (our channel went Up), whether or not DialerAnswered came
    failure_reason: str | None = None  # a failed Originate's Reason, held until the channel's Hangup gives the cause


@dataclass(slots=True)
class LegTrack:
    agent_id: str
    uniqueid: str
    channel: str | None = None
    hangup_requested: bool = False  # asked before its channel was announced: sent when it is


@dataclass(frozen=True, slots=True)
class StaleLeg:
    """A channel that looks like an agent leg this run did not originate (whose it is: `MARCADOR_NODE`)."""

    uniqueid: str
    channel: str
    room: str | None  # the ConfBridge it is in, None while its phone still rings


@dataclass(slots=True)
class Translator:
    config: AmiConfig
    id_prefix: str = "m"
    node_id: str | None = None  # tags agent legs (MARCADOR_NODE); None: untagged, no stale-leg sweep
    calls: dict[str, CallTrack] = field(default_factory=dict)
    legs: dict[str, LegTrack] = field(default_factory=dict)  # by agent id
    _leg_uids: dict[str, str] = field(default_factory=dict)  # uniqueid → agent id
    own_legs: set[str] = field(default_factory=set)  # every leg uniqueid this run originated (never swept)
    _leg_seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------ commands → actions

    def actions_for(self, cmd: TelephonyCommand) -> list[AmiAction]:
        match cmd:
            case Originate():
                return [self._originate(cmd)]
            case ConnectToAgent():
                return self._redirect(cmd.call_id, self.config.room_context, cmd.agent_id)
            case PlayAbandonMessage():
                return self._redirect(cmd.call_id, self.config.abandon_context, "s")
            case Hangup():
                return self._hangup_call(cmd.call_id)
            case OriginateAgentLeg():
                return [self._agent_leg(cmd.agent_id)]
            case HangupAgentLeg():
                leg = self.legs.get(cmd.agent_id)
                if leg is None:
                    return []
                if leg.channel is None:
                    # A logout right after the login: dropping this left the phone in its room and the agent
                    # "logging out" for good. Sent as soon as the channel is announced, as for calls.
                    leg.hangup_requested = True
                    return []
                return [_hang_up_leg(leg, leg.channel)]
        return []

    def _originate(self, cmd: Originate) -> AmiAction:
        self.calls[cmd.call_id] = CallTrack(cmd.call_id)
        variables = {"MARCADOR_CALL_ID": cmd.call_id, "MARCADOR_AMD": "0", **cmd.variables}
        fields: dict[str, str | list[str]] = {
            "Action": "Originate",
            "ActionID": f"orig-{cmd.call_id}",
            "Channel": self.config.call_channel.format(number=cmd.number),
            "Context": self.config.answered_context,
            "Exten": "s",
            "Priority": "1",
            "Timeout": str(int(cmd.timeout_s * 1000)),
            "ChannelId": cmd.call_id,
            "Async": "true",
            "Variable": [f"{k}={v}" for k, v in variables.items()],
        }
        if cmd.caller_id:
            # `Name <number>` as configured goes as is; a bare number (a pool DID) is wrapped. Wrapping both sent
            # "<Marcador <1000>>": the number right, the name shown "<Marcador".
            fields["CallerID"] = cmd.caller_id if "<" in cmd.caller_id else f"<{cmd.caller_id}>"
        return AmiAction(fields, call_id=cmd.call_id)

    def _agent_leg(self, agent_id: str) -> AmiAction:
        uid = f"{self.id_prefix}-agent-{agent_id}-{next(self._leg_seq)}"
        old = self.legs.get(agent_id)
        if old is not None:
            self._leg_uids.pop(old.uniqueid, None)
        self.legs[agent_id] = LegTrack(agent_id, uid)
        self._leg_uids[uid] = agent_id
        self.own_legs.add(uid)
        fields: dict[str, str | list[str]] = {
            "Action": "Originate",
            "ActionID": f"leg-{uid}",
            "Channel": self.config.agent_channel.format(agent_id=agent_id),
            "Context": self.config.login_context,
            "Exten": agent_id,
            "Priority": "1",
            "Timeout": "30000",
            "ChannelId": uid,
            "Async": "true",
        }
        if self.node_id is not None:
            fields["Variable"] = [f"{NODE_VARIABLE}={self.node_id}"]
        return AmiAction(fields, agent_id=agent_id)

    def _redirect(self, call_id: str, context: str, exten: str) -> list[AmiAction]:
        track = self.calls.get(call_id)
        if track is None or track.channel is None:
            log.warning("redirect for a call without a channel", extra={"fields": {"call_id": call_id}})
            return []
        return [AmiAction({"Action": "Redirect", "Channel": track.channel, "Context": context, "Exten": exten,
                           "Priority": "1"}, call_id=call_id)]

    def _hangup_call(self, call_id: str) -> list[AmiAction]:
        track = self.calls.get(call_id)
        if track is None:
            return []
        if track.channel is None:
            track.hangup_requested = True  # sent as soon as the channel is announced
            return []
        return [AmiAction({"Action": "Hangup", "Channel": track.channel, "Cause": "16"}, call_id=call_id)]

    # ------------------------------------------------------------------ results and events → core events

    def originate_result(self, action: AmiAction, messages: Sequence[Message] | None) -> list[Event]:
        """The Originate's response and its OriginateResponse event, or None when the link failed first."""
        if action.agent_id is not None:
            return self._leg_result(action, action.agent_id, messages)
        call_id = action.call_id
        track = self.calls.get(call_id or "")
        if track is None or call_id is None:
            return []
        if messages is None:
            return []  # fate unknown: resolved by `reconcile` once the link is back, never redialed
        final = messages[-1]
        if str(final.get("Response", "")).lower() == "success" or track.answered:
            return []  # answered: the DialerAnswered user event has told (or will tell) the core
        if "Reason" not in final:  # the action itself was refused (bad channel, permission)
            del self.calls[call_id]
            return [CallFailed(call_id, Outcome.FAILED, track.hangup_cause)]
        reason = str(final.get("Reason"))
        if reason not in _REASON_OUTCOME and track.hangup_cause is None and track.channel is not None \
                and not track.gone:
            # Asterisk often sends the OriginateResponse before the channel's Hangup: wait for its cause.
            track.failure_reason = reason
            return []
        del self.calls[call_id]
        return [CallFailed(call_id, _failure_outcome(reason, track.hangup_cause), track.hangup_cause)]

    def _leg_result(self, action: AmiAction, agent_id: str, messages: Sequence[Message] | None) -> list[Event]:
        if messages is not None and str(messages[-1].get("Response", "")).lower() == "success":
            return []
        leg = self.legs.get(agent_id)
        uid = str(action.fields.get("ActionID", ""))[len("leg-"):]
        if leg is None or (uid and leg.uniqueid != uid):
            # That leg's end is already told (its Hangup came first, as it usually does for a failed dial) or a
            # newer leg replaced it: a second AgentDisconnected spent a second rejoin on one failed call-back.
            return []
        del self.legs[agent_id]
        self._leg_uids.pop(leg.uniqueid, None)
        return [AgentDisconnected(agent_id)]

    def on_event(self, msg: Message) -> tuple[list[Event], list[AmiAction]]:
        name = msg.get("Event")
        if name == "UserEvent":
            return self._user_event(msg), []
        if name == "Newchannel":
            return self._new_channel(msg)
        if name == "Newstate":
            return self._new_state(msg), []
        if name == "Hangup":
            return self._hangup_event(msg), []
        if name == "ConfbridgeJoin":
            return self._confbridge_join(msg), []
        if name == "OriginateResponse":
            return self._late_originate_response(msg), []
        return [], []

    def _late_originate_response(self, msg: Message) -> list[Event]:
        """An OriginateResponse that reached us as a plain event: its action was sent on a link that has
        since been replaced, so no pending action holds it. It still classifies the call."""
        action_id = str(msg.get("ActionID", ""))
        if action_id.startswith("orig-"):
            return self.originate_result(AmiAction({}, call_id=action_id[5:]), [msg])
        if action_id.startswith("leg-"):
            agent_id = self._leg_uids.get(action_id[4:])
            if agent_id is not None:
                return self.originate_result(AmiAction({"ActionID": action_id}, agent_id=agent_id), [msg])
        return []

    def _user_event(self, msg: Message) -> list[Event]:
        kind = msg.get("UserEvent")
        if kind not in ("DialerAnswered", "DialerNoAgent"):
            return []
        # The channel's Uniqueid is our ChannelId, the call id as sent. The CallId header is the call id passed
        # through UserEvent()'s argument parser, which cuts it at a comma (call ids carry the free-text node id).
        uid = str(msg.get("Uniqueid", ""))
        call_id = uid if uid in self.calls else str(msg.get("CallId", ""))
        track = self.calls.get(call_id)
        if kind == "DialerNoAgent":
            return [] if track is None else [AgentMissing(call_id, str(msg.get("AgentId", "")))]
        if track is None or track.answered:
            return []
        track.answered = True
        track.channel = str(msg.get("Channel") or track.channel or "") or None
        return [CallAnswered(call_id, str(msg.get("AMDStatus") or "HUMAN"))]

    def _new_channel(self, msg: Message) -> tuple[list[Event], list[AmiAction]]:
        uid = str(msg.get("Uniqueid", ""))
        track = self.calls.get(uid)
        if track is not None:
            track.channel = str(msg.get("Channel", "")) or None
            if track.hangup_requested and track.channel:
                return [], [AmiAction({"Action": "Hangup", "Channel": track.channel, "Cause": "16"}, call_id=uid)]
            return [], []
        agent_id = self._leg_uids.get(uid)
        if agent_id is not None:
            leg = self.legs[agent_id]
            leg.channel = str(msg.get("Channel", "")) or None
            if leg.hangup_requested and leg.channel:
                return [], [_hang_up_leg(leg, leg.channel)]
        return [], []

    def _new_state(self, msg: Message) -> list[Event]:
        # The far half of a Local channel (`call_id;2`) or the call's own channel starts ringing.
        uid = str(msg.get("Uniqueid", ""))
        call_id = uid[:-2] if uid.endswith(";2") else uid
        track = self.calls.get(call_id)
        if track is None:
            return []
        if uid == call_id and msg.get("ChannelStateDesc") == "Up":
            track.up = True
        if track.progress_seen or track.answered:
            return []
        if msg.get("ChannelStateDesc") in ("Ringing", "Ring"):
            track.progress_seen = True
            return [CallProgress(call_id, "ringing")]
        return []

    def _hangup_event(self, msg: Message) -> list[Event]:
        uid = str(msg.get("Uniqueid", ""))
        cause = _int(msg.get("Cause"))
        track = self.calls.get(uid)
        if track is not None:
            track.hangup_cause = cause
            track.gone = True
            if track.answered:
                del self.calls[uid]
                return [CallEnded(uid, cause)]
            if track.failure_reason is not None:  # the OriginateResponse came first and waited for this cause
                del self.calls[uid]
                return [CallFailed(uid, _failure_outcome(track.failure_reason, cause), cause)]
            if track.up:
                # Answered, then hung up before the dialplan announced it (AMD() still listening: the dialplan
                # stops, DialerAnswered never comes, and the OriginateResponse already said Success). Without
                # this the call stayed "dialing" in the core for ever. A live answer the dialer could not serve.
                del self.calls[uid]
                return [CallAnswered(uid, AMD_HANGUP), CallEnded(uid, cause)]
            return []  # not answered: the OriginateResponse that follows classifies it
        if uid.endswith(";2"):
            far = self.calls.get(uid[:-2])
            if far is not None and not far.answered and far.hangup_cause is None:
                far.hangup_cause = cause
            return []
        agent_id = self._leg_uids.pop(uid, None)
        if agent_id is not None:
            self.legs.pop(agent_id, None)
            return [AgentDisconnected(agent_id)]
        return []

    def _confbridge_join(self, msg: Message) -> list[Event]:
        conference = str(msg.get("Conference", ""))
        if not conference.startswith(ROOM_PREFIX):
            return []
        room_agent = conference[len(ROOM_PREFIX):]
        uid = str(msg.get("Uniqueid", ""))
        if uid in self.calls:
            return [AgentJoinedCall(uid, room_agent)]
        agent_id = self._leg_uids.get(uid)
        if agent_id is not None and agent_id == room_agent:
            return [AgentConnected(agent_id)]
        return []

    # ------------------------------------------------------------------ after a reconnect

    def reconcile(self, channels: Sequence[Message]) -> list[Event]:
        """After the link came back: compare what we track with Asterisk's own channel list
        (`CoreShowChannel` events) and resolve every call in doubt. Nothing is ever dialed again:
        gone and unanswered → `lost`; gone after the answer → ended; up but its answer unseen → answered.
        """
        live = {str(c.get("Uniqueid", "")): c for c in channels}
        out: list[Event] = []
        for call_id, track in list(self.calls.items()):
            mine = live.get(call_id)
            if mine is None and f"{call_id};2" not in live:
                del self.calls[call_id]
                if track.answered:
                    out.append(CallEnded(call_id, track.hangup_cause))
                elif track.failure_reason is not None:  # its failure was reported; only the cause was missed
                    out.append(CallFailed(call_id, _failure_outcome(track.failure_reason, track.hangup_cause),
                                          track.hangup_cause))
                else:
                    out.append(CallFailed(call_id, Outcome.LOST, track.hangup_cause))
                continue
            if mine is not None:
                track.channel = str(mine.get("Channel") or track.channel or "") or None
                if not track.answered and mine.get("ChannelStateDesc") == "Up" and \
                        mine.get("Context") == self.config.answered_context:
                    track.answered = True  # answered while we were deaf: AMD verdict lost, treat as a person
                    out.append(CallAnswered(call_id, "NOTSURE"))
        for agent_id, leg in list(self.legs.items()):
            if leg.uniqueid not in live:
                self.legs.pop(agent_id)
                self._leg_uids.pop(leg.uniqueid, None)
                out.append(AgentDisconnected(agent_id))
        return out

    def stale_leg_candidates(self, channels: Sequence[Message]) -> list[StaleLeg]:
        """Agent legs in Asterisk's channel list (`CoreShowChannel` events) that this run did not originate: an
        earlier run's, or another node's on a shared Asterisk. Whose they are is told by `owned_by_us`."""
        out: list[StaleLeg] = []
        for c in channels:
            uid, name = str(c.get("Uniqueid", "")), str(c.get("Channel", ""))
            if LEG_MARK not in uid or uid.endswith(";2") or uid in self.own_legs or not name:
                continue  # ;2: the far half of a Local leg, hung up with its first half
            room = None
            if str(c.get("Application", "")) == "ConfBridge":
                room = str(c.get("ApplicationData", "")).partition(",")[0] or None
            out.append(StaleLeg(uid, name, room))
        return out

    def owned_by_us(self, leg: StaleLeg, node_variable: str) -> bool:
        """Whether a stale leg is this node's: its MARCADOR_NODE says so. A leg without it (originated by an
        engine older than the variable) is ours when its ChannelId is `<node id>-<boot, hex>-agent-...`."""
        if self.node_id is None:
            return False
        if node_variable:
            return node_variable == self.node_id
        return re.match(rf"{re.escape(self.node_id)}-[0-9a-f]+{LEG_MARK}", leg.uniqueid) is not None

    def reconcile_room(self, agent_id: str, members: Sequence[Message]) -> tuple[list[Event], list[AmiAction]]:
        """One agent room as `ConfbridgeList` shows it after a reconnect. A customer we track found in the room
        is re-announced (its join may have been missed); an agent leg that is alive but not in its room is
        hung up so that the core calls the phone back into it."""
        uids = {str(m.get("Uniqueid", "")) for m in members}
        events: list[Event] = [AgentJoinedCall(uid, agent_id) for uid in sorted(uids) if uid in self.calls]
        leg = self.legs.get(agent_id)
        if leg is not None and leg.uniqueid not in uids and leg.channel is not None:
            return events, [AmiAction({"Action": "Hangup", "Channel": leg.channel, "Cause": "16"},
                                      agent_id=agent_id)]
        return events, []


def _failure_outcome(reason: str, cause: int | None) -> Outcome:
    """A failed Originate's outcome: its Reason when that is a tone or the timeout, else its hangup cause."""
    by_reason = _REASON_OUTCOME.get(reason)
    if by_reason is not None:
        return by_reason
    return Outcome.FAILED if cause is None else outcome_for_cause(cause)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _hang_up_leg(leg: LegTrack, channel: str) -> AmiAction:
    return AmiAction({"Action": "Hangup", "Channel": channel, "Cause": "16"}, agent_id=leg.agent_id)
