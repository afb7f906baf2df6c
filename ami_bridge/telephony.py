"""`AmiTelephony`: the runtime's Telephony port over AMI (a real Asterisk or the simulated PBX).

Commands are fired without awaiting one another: many Originates are in flight at once, each result
handled by a callback. Events are translated on the reader's callback and handed to the core's sink,
which never blocks.

Agent legs left behind: a stopped engine leaves its agents' legs in their ConfBridge rooms, and the dialplan's
room check (CONFBRIDGE_INFO marked) would count such a leg as the agent. Each time the PBX is ready (start and
every reconnect) the bridge lists the channels and hangs up the agent legs of its own node (`MARCADOR_NODE`) that
this run did not originate, before any call is dialed. Legs of this run are never touched (a link flap keeps the
agents in their rooms), nor are other nodes' legs on a shared Asterisk. A stale leg in a conversation (a customer
in its room, left talking by the old run's stop) is hung up when the room's customer leaves, not cut mid-call;
that agent's new leg is held until then (`AgentLegHeld`), so no debtor is put into that conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from ami_bridge.client import AmiClient, LinkLost
from ami_bridge.config import AmiConfig
from ami_bridge.translate import NODE_VARIABLE, ROOM_PREFIX, AmiAction, StaleLeg, Translator
from dialer.commands import HangupAgentLeg, Originate, OriginateAgentLeg
from dialer.events import AgentDisconnected, AgentLegHeld, CallFailed, Event, PbxLink
from dialer.model import Outcome
from dialer.ports import EventSink, TelephonyCommand

log = logging.getLogger("marcador.ami")

HELD_REASON = "on a call from before the restart"


class AmiTelephony:
    def __init__(self, config: AmiConfig, id_prefix: str = "m", node_id: str | None = None) -> None:
        """`id_prefix` starts every call and leg id of this run; `node_id` (the engine's `node_id`) tags agent legs
        so that a later run of the same node hangs up those left behind (None: no tag, no sweep)."""
        self.config = config
        self.translator = Translator(config, id_prefix=id_prefix, node_id=node_id)
        self.client = AmiClient(config, self._on_message, on_login=self._on_login, on_link_down=self._on_link_down)
        self._sink: EventSink | None = None
        self._logins = 0
        self._pbx_ready = False
        self._ready_task: asyncio.Task[None] | None = None
        self.events_in = 0
        self.actions_out = 0
        self.originates_failed_to_send = 0
        self.resyncs = 0
        self.stale_legs_hung_up = 0
        self._stale_in_call: dict[str, StaleLeg] = {}  # room → a stale leg hung up once its customer leaves
        # agent id → its leg, not called while a stale leg of it talks to a debtor in its room: a leg joining
        # that room would make the agent ready there, and the next debtor would be put into that conversation.
        self._held_legs: dict[str, OriginateAgentLeg] = {}

    @property
    def ready(self) -> bool:
        return self.client.logged_in and self._pbx_ready

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._deliver([PbxLink(False)])  # nothing is dialed before the PBX has proven it can take calls
        await self.client.start()
        if self.client.logged_in and self._ready_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ready_task), self.config.connect_timeout_s)

    async def close(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------------ commands

    def execute(self, cmd: TelephonyCommand) -> None:
        if isinstance(cmd, OriginateAgentLeg) and ROOM_PREFIX + cmd.agent_id in self._stale_in_call:
            self._held_legs[cmd.agent_id] = cmd
            log.info("agent leg held: its phone is still on a call from before the restart",
                     extra={"fields": {"agent_id": cmd.agent_id}})
            self._deliver([AgentLegHeld(cmd.agent_id, HELD_REASON)])
            return
        if isinstance(cmd, HangupAgentLeg) and self._held_legs.pop(cmd.agent_id, None) is not None:
            self._deliver([AgentDisconnected(cmd.agent_id)])  # never called: the logout is done
            return
        for action in self.translator.actions_for(cmd):
            if isinstance(cmd, Originate) and not self.client.logged_in:
                # Never sent (the link dropped after the core decided), so nothing is dialing. `lost`, not
                # `failed`: a failure would teach the pacer a dead line, park the lead for an hour and rank the
                # phone last, for a number no one dialed. The lead goes back for a new attempt.
                self.originates_failed_to_send += 1
                self.translator.calls.pop(cmd.call_id, None)
                self._deliver([CallFailed(cmd.call_id, Outcome.LOST)])
                continue
            self._send(action)

    def _send(self, action: AmiAction) -> None:
        self.actions_out += 1
        is_originate = action.name == "Originate"
        # An async Originate is answered twice: "queued" at once, OriginateResponse when its fate is known.
        timeout = None
        if is_originate:
            ring_ms = float(str(action.fields.get("Timeout", "30000")))
            timeout = ring_ms / 1000 + self.config.action_timeout_s + 30
        fut = self.client.send(action.fields, timeout)
        fut.add_done_callback(lambda f: self._action_done(action, f))

    def _action_done(self, action: AmiAction, fut: asyncio.Future[list[Any]]) -> None:
        exc = fut.exception()
        if action.name != "Originate":
            if exc is not None:
                log.warning("AMI action failed", extra={"fields": {"action": action.name, "error": str(exc),
                                                                   "call_id": action.call_id}})
            elif str(fut.result()[0].get("Response", "")).lower() == "error":
                log.warning("AMI action refused", extra={"fields": {
                    "action": action.name, "call_id": action.call_id, "message": fut.result()[0].get("Message")}})
            return
        if isinstance(exc, LinkLost | TimeoutError):
            if self.client.closing:
                return  # we are shutting down: nothing left to reconcile with
            log.warning("originate fate unknown; reconciled after reconnect",
                        extra={"fields": {"call_id": action.call_id, "agent_id": action.agent_id}})
            self._deliver(self.translator.originate_result(action, None))
            if isinstance(exc, TimeoutError) and self.client.logged_in:
                self._spawn_resync()  # the link is up yet the answer never came: ask Asterisk what it has
            return
        self._deliver(self.translator.originate_result(action, None if exc else fut.result()))

    # ------------------------------------------------------------------ events

    def _on_message(self, message: Any) -> None:
        self.events_in += 1
        if self._stale_in_call and message.get("Event") == "ConfbridgeLeave":
            waiting = self._stale_in_call.pop(str(message.get("Conference", "")), None)
            if waiting is not None:
                self._spawn(self._end_stale_leg(waiting))
        events, actions = self.translator.on_event(message)
        self._deliver(events)
        for action in actions:
            self._send(action)

    def _on_link_down(self) -> None:
        self._pbx_ready = False
        self._held_legs.clear()  # the core calls its connecting agents again when the link is back
        self._deliver([PbxLink(False)])

    def _on_login(self) -> None:
        self._logins += 1
        # A reconnect: what happened while deaf is learned from Asterisk itself once it is ready.
        self._ready_task = asyncio.ensure_future(self._when_ready(resync=self._logins > 1))
        self._ready_task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _when_ready(self, resync: bool) -> None:
        """Asterisk accepts AMI logins before it has loaded the dialplan and ConfBridge: a starting PBX would
        fail every call. Probe both (with the `reporting` privilege only) before dialing resumes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.boot_wait_s
        while True:
            try:
                dialplan = await self.client.request(
                    {"Action": "ShowDialPlan", "Context": self.config.answered_context}, timeout=5)
                rooms = await self.client.request({"Action": "ConfbridgeListRooms"}, timeout=5)
            except (LinkLost, TimeoutError):
                return  # the link went down again: the next login starts over
            reason = not_ready_reason(dialplan[0], rooms[0], self.config.answered_context)
            if reason is None:
                break
            if loop.time() > deadline:
                log.error("PBX not ready", extra={"fields": {"reason": reason,
                                                            "context": self.config.answered_context}})
                deadline = loop.time() + self.config.boot_wait_s  # keep probing, say it again later
            await asyncio.sleep(0.5)
        # One channel listing serves both: on a busy PBX it is thousands of events, and no dial goes out between.
        listing = await self._resync() if resync else None
        await self._sweep_stale_legs(listing)
        self._pbx_ready = True
        self._deliver([PbxLink(True)])  # after the reconcile: the core acts on a settled picture

    def _spawn_resync(self) -> None:
        self._spawn(self._resync())

    @staticmethod
    def _spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _sweep_stale_legs(self, channels: list[Mapping[str, Any]] | None = None) -> None:
        """Hang up this node's agent legs that this run did not originate (see the module docstring). `channels`:
        a CoreShowChannel listing just taken (the resync's), else one is asked for."""
        if self.translator.node_id is None:
            return
        try:
            if channels is None:
                channels = _channels(await self.client.request({"Action": "CoreShowChannels"}, timeout=15))
            found = self.translator.stale_leg_candidates(channels)
            tags = await asyncio.gather(*(self.client.request(
                {"Action": "Getvar", "Channel": leg.channel, "Variable": NODE_VARIABLE}) for leg in found))
        except (LinkLost, TimeoutError) as exc:
            log.warning("stale agent leg sweep failed", extra={"fields": {"error": str(exc)}})
            return  # the link is down again: the next login sweeps
        ours = [leg for leg, tag in zip(found, tags, strict=True)
                if str(tag[0].get("Response", "")).lower() == "success"  # else: gone meanwhile
                and self.translator.owned_by_us(leg, str(tag[0].get("Value") or ""))]
        await asyncio.gather(*(self._end_stale_leg(leg) for leg in ours))

    async def _end_stale_leg(self, leg: StaleLeg) -> None:
        await self._hang_up_stale_leg(leg)
        if leg.room is not None and leg.room not in self._stale_in_call:
            # Its conversation is over: the agent's leg held for it (`execute`) is called now.
            held = self._held_legs.pop(leg.room.removeprefix(ROOM_PREFIX), None)
            if held is not None:
                log.info("held agent leg called", extra={"fields": {"agent_id": held.agent_id}})
                self.execute(held)

    async def _hang_up_stale_leg(self, leg: StaleLeg) -> None:
        try:
            if leg.room is not None:
                listing = await self.client.request({"Action": "ConfbridgeList", "Conference": leg.room})
                members = [m for m in listing if m.get("Event") == "ConfbridgeList"]
                if all(str(m.get("Channel", "")) != leg.channel for m in members):
                    return  # it left meanwhile
                if any(str(m.get("MarkedUser", "")).lower() != "yes" for m in members):
                    # A customer talking to the agent on that phone since the old run: not cut mid-call. With
                    # end_marked the customer's end would not end the leg; its leaving the room does.
                    self._stale_in_call[leg.room] = leg
                    log.info("stale agent leg in a call: hung up when the call ends",
                             extra={"fields": {"room": leg.room, "uniqueid": leg.uniqueid}})
                    return
            reply = await self.client.request({"Action": "Hangup", "Channel": leg.channel, "Cause": "16"})
        except (LinkLost, TimeoutError) as exc:
            log.warning("stale agent leg not hung up", extra={"fields": {"uniqueid": leg.uniqueid,
                                                                          "error": str(exc)}})
            return
        if str(reply[0].get("Response", "")).lower() == "success":
            self.stale_legs_hung_up += 1
            log.info("stale agent leg hung up", extra={"fields": {"room": leg.room, "uniqueid": leg.uniqueid}})

    async def _resync(self) -> list[Mapping[str, Any]] | None:
        """Reconcile calls and rooms with what Asterisk has; the channel listing it read (None: the link fell)."""
        try:
            channels = _channels(await self.client.request({"Action": "CoreShowChannels"}, timeout=15))
        except (LinkLost, TimeoutError) as exc:
            log.warning("resync failed", extra={"fields": {"error": str(exc)}})
            return None  # the link is down again: the next login resyncs
        self.resyncs += 1
        self._deliver(self.translator.reconcile(channels))
        await asyncio.gather(*(self._resync_room(agent_id) for agent_id in list(self.translator.legs)))
        return channels

    async def _resync_room(self, agent_id: str) -> None:
        try:
            listing = await self.client.request({"Action": "ConfbridgeList", "Conference": f"agent-{agent_id}"})
        except (LinkLost, TimeoutError):
            return
        members = [m for m in listing if m.get("Event") == "ConfbridgeList"]  # "No active conferences": none
        events, actions = self.translator.reconcile_room(agent_id, members)
        self._deliver(events)
        for action in actions:
            self._send(action)

    def _deliver(self, events: list[Event]) -> None:
        if self._sink is None:
            return
        for event in events:
            self._sink(event)


def _channels(listing: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [m for m in listing if m.get("Event") == "CoreShowChannel"]


def not_ready_reason(dialplan: Mapping[str, Any], rooms: Mapping[str, Any], context: str) -> str | None:
    """Why the readiness probes say Asterisk cannot take calls yet, in words an operator can act on (None: it
    can). A user without `reporting` is refused both probes: that is not a missing dialplan."""
    said = [str(r.get("Message", "")).lower() for r in (dialplan, rooms)]
    if any("permission denied" in m for m in said):
        return "the AMI user may not run ShowDialPlan/ConfbridgeListRooms: add `reporting` to its `write =` " \
               "in manager.conf (`marcador check-asterisk` lists every privilege)"
    if str(dialplan.get("Response", "")).lower() != "success":
        return f"dialplan context {context} not loaded (extensions.conf, `dialplan reload`)"
    if "unknown command" in said[1]:
        return "ConfBridge not loaded (app_confbridge, `module load app_confbridge.so`)"
    return None
