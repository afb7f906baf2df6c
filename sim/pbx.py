"""A simulated PBX that speaks AMI on loopback TCP, so the engine runs end to end without Asterisk.

It plays the part of Asterisk with Marcador's dialplan (asterisk-docker/config/extensions.conf):
Originate (async, with our ChannelId) → ringing → answer (UserEvent DialerAnswered, OriginateResponse) or
a failure OriginateResponse with Asterisk's Reason codes; Redirect into an agent's ConfBridge room (its agent leg
not in it: UserEvent DialerNoAgent and the abandon message instead) or to the abandon message; Hangup; agent legs
joining their rooms, and the customer in a room hung up when its agent leg leaves (end_marked); CoreShowChannels,
ConfbridgeList and Getvar for resync and the stale-leg sweep; Ping; plain and MD5 login. The fate of each call
comes from a call model: by default the number's last six digits `O NN TTT` as in the `sim-customer` context
(outcome, ring seconds, talk seconds).

Faults on demand: `drop_connections()`, `stall(seconds)`, `restart()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import random
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sim.scenario import Scenario, draw_fate, load_scenario, random_streams

log = logging.getLogger("marcador.sim.pbx")

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
EVENT_CLASS = {"UserEvent": "user"}  # everything else we emit is class "call"
# The contexts of asterisk-docker/config/extensions.conf that the simulated PBX plays.
DIALPLAN_CONTEXTS = frozenset({"marcador-answered", "marcador-abandon", "marcador-agent-room", "marcador-agent-login",
                               "sim-agent", "sim-customer"})


@dataclass(frozen=True, slots=True)
class Fate:
    """What the far end does: `answer` (person), `machine`, `busy`, `congestion`, `no_answer`, `unallocated`."""

    kind: str
    ring_s: float = 0.0
    talk_s: float = 0.0
    amd_verdict: str | None = None  # what AMD would say when the dialplan runs it (None: the truth)
    patience_s: float = math.inf  # a person left waiting hangs up after this
    cause: int = 16  # kind `cause`: the Q.850 cause the far end hangs up with, without a tone


class CallModel(Protocol):
    def fate(self, number: str, ring_s: float) -> Fate:
        """What the called party does, the line ringing `ring_s` (the Originate's timeout)."""


class NumberCodedModel:
    """The sim-customer convention: last six digits O NN TTT (1 answer, 2 busy, 3 congestion, 4 no answer,
    5 unallocated, 6 machine; NN ring seconds, TTT talk seconds; 7 hang up with Q.850 cause TTT, as a SIP trunk)."""

    KINDS: ClassVar[dict[str, str]] = {
        "1": "answer", "2": "busy", "3": "congestion", "4": "no_answer", "5": "unallocated", "6": "machine",
    }

    def fate(self, number: str, ring_s: float) -> Fate:
        digits = "".join(ch for ch in number if ch.isdigit())
        if len(digits) < 6:
            return Fate("unallocated")
        code = digits[-6:]
        if code[0] == "7":
            return Fate("cause", float(code[1:3]), cause=int(code[3:6]))
        return Fate(self.KINDS.get(code[0], "congestion"), float(code[1:3]), float(code[3:6]))


_REASON = {"busy": ("5", 17), "congestion": ("8", 34), "no_answer": ("3", 19), "unallocated": ("0", 1)}


@dataclass(slots=True)
class Channel:
    uid: str
    name: str
    kind: str  # "call" | "agent"
    action_id: str
    session: Session | None
    call_id: str = ""
    number: str = ""
    agent_id: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    state: str = "ringing"  # ringing → up → gone
    room: str | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    patience: asyncio.TimerHandle | None = None  # running while an answered person waits for an agent
    hold: asyncio.TimerHandle | None = None  # marcador-answered's hold limit, running until a Redirect

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()
        self.stop_waiting()

    def stop_waiting(self) -> None:
        for timer in (self.patience, self.hold):
            if timer is not None:
                timer.cancel()
        self.patience = self.hold = None


class SimulatedPbx:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "marcador",
        secret: str = "",
        scenario: str | None = None,
        speed: float = 1.0,
        model: CallModel | None = None,
        abandon_message_s: float = 2.0,
        seed: int = 1,
        ssl_context: ssl.SSLContext | None = None,
        call_log_path: str | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed: must be > 0, got {speed}")
        self.host = host
        self._port = port
        self.username = username
        self.secret = secret
        self.speed = speed
        self.model: CallModel = model or _scenario_model(scenario, seed, speed) or NumberCodedModel()
        self.abandon_message_s = abandon_message_s
        self.ssl_context = ssl_context  # AMI over TLS when given
        # Every customer Originate received, one JSON line each, flushed at once: audits read it even after
        # the engine beside this PBX was killed (bench/multinode.py counts double dials from it).
        self._call_log_file = open(call_log_path, "a", encoding="utf-8") if call_log_path else None
        self.channels: dict[str, Channel] = {}
        self._by_name: dict[str, Channel] = {}
        self.sessions: set[Session] = set()
        self.call_log: list[dict[str, Any]] = []  # one row per customer Originate received (double-dial audits)
        self._seq = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self.stalled_until = 0.0
        self.originates = 0
        self.actions: Counter[str] = Counter()  # AMI actions received, by lower-cased name (tests count listings)
        self._rng = random.Random(seed)
        # answered-event written → Redirect into a room received, per call (bench/answer_latency.py)
        self._answered_at: dict[str, float] = {}
        self.connect_latencies: deque[float] = deque(maxlen=100_000)
        self.max_concurrent_calls = 0
        self._calls_now = 0
        self._agents_in: dict[str, int] = {}  # room → agent legs in it (CONFBRIDGE_INFO(marked,...))

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port, ssl=self.ssl_context)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for ch in list(self.channels.values()):
            ch.cancel_timers()
        self.channels.clear()
        self._by_name.clear()
        self._calls_now = 0
        self._agents_in.clear()
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._call_log_file is not None:
            self._call_log_file.close()
            self._call_log_file = None

    async def __aenter__(self) -> SimulatedPbx:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults

    def drop_connections(self) -> None:
        """Cut every AMI connection (calls go on, as when a TCP link dies)."""
        for s in list(self.sessions):
            s.close()

    def stall(self, seconds: float) -> None:
        """Stop answering and sending for a while (a hung Asterisk); what was pending is sent afterwards."""
        self.stalled_until = time.monotonic() + seconds
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, self._unstall)

    def _unstall(self) -> None:
        for s in list(self.sessions):
            s.flush()

    async def restart(self, down_s: float = 1.0) -> None:
        """Asterisk restarts: links drop, every channel vanishes without events, AMI refuses for `down_s`."""
        for ch in list(self.channels.values()):
            ch.cancel_timers()
        self.channels.clear()
        self._by_name.clear()
        self._calls_now = 0
        self._agents_in.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.drop_connections()
        await asyncio.sleep(down_s)
        self._server = await asyncio.start_server(self._accept, self.host, self._port, ssl=self.ssl_context)

    @property
    def stalled(self) -> bool:
        return time.monotonic() < self.stalled_until

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, writer)
        self.sessions.add(session)
        writer.write(BANNER)
        try:
            buf = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                *blocks, buf = buf.split(b"\r\n\r\n")
                for block in blocks:
                    if block.strip():
                        await self._wait_unstalled()
                        self._action(session, _parse(block.decode("utf-8", "replace")))
                        if session.closed:
                            return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer left, or the server is shutting down
        finally:
            session.close()
            self.sessions.discard(session)

    async def _wait_unstalled(self) -> None:
        while self.stalled:
            await asyncio.sleep(self.stalled_until - time.monotonic())

    # ------------------------------------------------------------------ actions

    def _action(self, s: Session, a: dict[str, Any]) -> None:
        name = str(a.get("action", "")).lower()
        aid = a.get("actionid")
        self.actions[name] += 1
        if name == "login":
            self._login(s, a, aid)
        elif name == "challenge":
            s.challenge = str(self._rng.randrange(10**8, 10**9))
            s.reply(aid, "Success", Challenge=s.challenge)
        elif not s.authenticated:
            s.reply(aid, "Error", Message="Permission denied")
        elif name == "ping":
            s.reply(aid, "Success", Ping="Pong", Timestamp=f"{time.time():.6f}")
        elif name == "logoff":
            s.reply(aid, "Goodbye", Message="Thanks for all the fish.")
            s.close()
        elif name == "originate":
            self._originate(s, a, aid)
        elif name == "redirect":
            self._redirect(s, a, aid)
        elif name == "hangup":
            self._hangup_action(s, a, aid)
        elif name == "getvar":
            self._getvar(s, a, aid)
        elif name == "coreshowchannels":
            self._core_show_channels(s, aid)
        elif name == "confbridgelist":
            self._confbridge_list(s, a, aid)
        elif name == "confbridgelistrooms":
            self._confbridge_list_rooms(s, aid)
        elif name == "showdialplan":
            self._show_dialplan(s, a, aid)
        else:
            s.reply(aid, "Error", Message="Invalid/unknown command")

    def _login(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        ok = a.get("username") == self.username
        if str(a.get("authtype", "")).lower() == "md5":
            expected = hashlib.md5(((s.challenge or "") + self.secret).encode()).hexdigest()
            ok = ok and s.challenge is not None and a.get("key") == expected
        else:
            ok = ok and a.get("secret") == self.secret
        if not ok:
            s.reply(aid, "Error", Message="Authentication failed")
            return
        s.authenticated = True
        s.set_events(str(a.get("events", "on")))
        s.reply(aid, "Success", Message="Authentication accepted")
        s.event("FullyBooted", Status="Fully Booted")

    def _originate(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        if str(a.get("async", "false")).lower() not in ("true", "yes", "1"):
            s.reply(aid, "Error", Message="the simulated PBX only supports Async originates")
            return
        tech = str(a.get("channel", ""))
        dest, _, ctx = tech.partition("/")[2].partition("@")
        uid = str(a.get("channelid") or f"sim-{next(self._seq)}")
        if uid in self.channels:
            s.reply(aid, "Error", Message="Originate failed: channel id in use")
            return
        variables = dict(v.split("=", 1) for v in _as_list(a.get("variable")) if "=" in v)
        seq = next(self._seq)
        s.reply(aid, "Success", Message="Originate successfully queued")
        if ctx.startswith("sim-agent") or str(a.get("context", "")).endswith("agent-login"):
            ch = Channel(uid, f"Local/{dest}@{ctx}-{seq:08x};1", "agent", str(aid or ""), s, agent_id=str(
                a.get("exten", dest)), variables=variables)
            self._add(ch)
            self._emit_new(ch)
            ch.state = "up"
            self._after(ch, 0.05, self._agent_leg_up, ch)
            return
        self.originates += 1
        ch = Channel(uid, f"Local/{dest}@{ctx or 'sim-customer'}-{seq:08x};1", "call", str(aid or ""), s,
                     call_id=variables.get("MARCADOR_CALL_ID", uid), number=dest, variables=variables)
        timeout_s = float(a.get("timeout", 30000)) / 1000
        fate = self.model.fate(dest, timeout_s)
        row = {"call_id": ch.call_id, "uniqueid": uid, "number": dest, "fate": fate.kind, "t": time.time()}
        self.call_log.append(row)
        if self._call_log_file is not None:
            self._call_log_file.write(json.dumps(row) + "\n")
            self._call_log_file.flush()
        self._add(ch)
        self._calls_now += 1
        self.max_concurrent_calls = max(self.max_concurrent_calls, self._calls_now)
        self._emit_new(ch)
        if fate.kind == "unallocated":
            self._after(ch, 0.01, self._fail, ch, "unallocated")
        elif fate.kind in ("answer", "machine") and fate.ring_s < timeout_s:
            self._after(ch, 0.1, self._ringing, ch)
            self._after(ch, fate.ring_s, self._answer, ch, fate)
        elif fate.kind in ("busy", "congestion") and fate.ring_s < timeout_s:
            self._after(ch, 0.1, self._ringing, ch)
            self._after(ch, fate.ring_s, self._fail, ch, fate.kind)
        elif fate.kind == "cause" and fate.ring_s < timeout_s:
            self._after(ch, 0.1, self._ringing, ch)
            self._after(ch, fate.ring_s, self._hung_up, ch, fate.cause)
        else:
            self._after(ch, 0.1, self._ringing, ch)
            self._after(ch, timeout_s, self._fail, ch, "no_answer")

    def _redirect(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        ch = self._by_name.get(str(a.get("channel", "")))
        if ch is None or ch.state != "up":
            s.reply(aid, "Error", Message="Channel specified does not exist")
            return
        s.reply(aid, "Success", Message="Redirect successful")
        ch.stop_waiting()  # taken by an agent or by the abandon message: no longer waiting
        context = str(a.get("context", ""))
        self._leave_room(ch)
        if context.endswith("agent-room"):
            answered = self._answered_at.pop(ch.uid, None)
            if answered is not None:
                self.connect_latencies.append(time.perf_counter() - answered)
            agent_id = str(a.get("exten", ""))
            room = f"agent-{agent_id}"
            if not self._agents_in.get(room):
                # As the dialplan: no agent leg (marked user) in the room, so no joining it to wait in silence.
                self.broadcast("UserEvent", UserEvent="DialerNoAgent", Channel=ch.name, Uniqueid=ch.uid,
                               CallId=ch.call_id, AgentId=agent_id)
                self._after(ch, self.abandon_message_s, self._abandon_done, ch)
                return
            ch.room = room
            self.broadcast("ConfbridgeJoin", Conference=ch.room, Channel=ch.name, Uniqueid=ch.uid,
                           Linkedid=ch.uid)
        elif context.endswith("abandon"):
            self._after(ch, self.abandon_message_s, self._abandon_done, ch)

    def _hangup_action(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        ch = self._by_name.get(str(a.get("channel", "")))
        if ch is None:
            s.reply(aid, "Error", Message="No such channel")
            return
        s.reply(aid, "Success", Message="Channel Hungup")
        cause = int(a.get("cause", 16) or 16)
        if ch.kind == "call" and ch.state == "ringing":
            self._fail(ch, "hangup")
        else:
            self._gone(ch, cause)

    def _getvar(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        ch = self._by_name.get(str(a.get("channel", "")))
        if ch is None:
            s.reply(aid, "Error", Message="No such channel")
            return
        variable = str(a.get("variable", ""))
        s.reply(aid, "Success", Variable=variable, Value=ch.variables.get(variable, ""))

    def _core_show_channels(self, s: Session, aid: Any) -> None:
        s.reply(aid, "Success", EventList="start", Message="Channels will follow")
        listed = 0
        for ch in list(self.channels.values()):
            for uid, name in ((ch.uid, ch.name), (f"{ch.uid};2", ch.name[:-2] + ";2")):
                listed += 1
                s.event("CoreShowChannel", ActionID=aid, Channel=name, Uniqueid=uid, Linkedid=ch.uid,
                        ChannelStateDesc="Up" if ch.state == "up" else "Ringing", Context=_context(ch),
                        Application="ConfBridge" if ch.room else "Wait", ApplicationData=_app_data(ch))
        s.event("CoreShowChannelsComplete", ActionID=aid, EventList="Complete", ListItems=listed)

    def _confbridge_list(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        conference = str(a.get("conference", ""))
        members = [ch for ch in self.channels.values() if ch.room == conference]
        if not members:
            s.reply(aid, "Error", Message="No active conferences.")
            return
        s.reply(aid, "Success", EventList="start", Message="Confbridge user list will follow")
        for ch in members:
            s.event("ConfbridgeList", ActionID=aid, Conference=conference, Channel=ch.name, Uniqueid=ch.uid,
                    MarkedUser="Yes" if ch.kind == "agent" else "No")
        s.event("ConfbridgeListComplete", ActionID=aid, EventList="Complete", ListItems=len(members))

    def _confbridge_list_rooms(self, s: Session, aid: Any) -> None:
        rooms: dict[str, int] = {}
        for ch in self.channels.values():
            if ch.room is not None:
                rooms[ch.room] = rooms.get(ch.room, 0) + 1
        if not rooms:
            s.reply(aid, "Error", Message="No active conferences.")
            return
        s.reply(aid, "Success", EventList="start", Message="Confbridge conferences will follow")
        for room, parties in sorted(rooms.items()):
            s.event("ConfbridgeListRooms", ActionID=aid, Conference=room, Parties=parties, Marked=1, Locked="No")
        s.event("ConfbridgeListRoomsComplete", ActionID=aid, EventList="Complete", ListItems=len(rooms))

    def _show_dialplan(self, s: Session, a: dict[str, Any], aid: Any) -> None:
        context = str(a.get("context", ""))
        if context and context not in DIALPLAN_CONTEXTS:
            s.reply(aid, "Error", Message=f"Did not find context {context}")
            return
        s.reply(aid, "Success", EventList="start", Message="DialPlan list will follow")
        shown = [context] if context else sorted(DIALPLAN_CONTEXTS)
        for ctx in shown:
            s.event("ListDialplan", ActionID=aid, Context=ctx, Extension="s", Priority="1", Application="NoOp")
        s.event("ShowDialPlanComplete", ActionID=aid, EventList="Complete", ListItems=len(shown),
                ListExtensions=len(shown), ListPriorities=len(shown), ListContexts=len(shown))

    # ------------------------------------------------------------------ the call model in time

    def _after(self, ch: Channel, seconds: float, fn: Callable[..., None], *args: Any) -> None:
        handle = asyncio.get_running_loop().call_later(seconds / self.speed, fn, *args)
        ch.timers.append(handle)

    def _add(self, ch: Channel) -> None:
        self.channels[ch.uid] = ch
        self._by_name[ch.name] = ch

    def _emit_new(self, ch: Channel) -> None:
        for uid, name in ((ch.uid, ch.name), (f"{ch.uid};2", ch.name[:-2] + ";2")):
            self.broadcast("Newchannel", Channel=name, Uniqueid=uid, Linkedid=ch.uid, ChannelState="0",
                           ChannelStateDesc="Down")

    def _ringing(self, ch: Channel) -> None:
        if ch.uid in self.channels and ch.state == "ringing":
            self.broadcast("Newstate", Channel=ch.name[:-2] + ";2", Uniqueid=f"{ch.uid};2", Linkedid=ch.uid,
                           ChannelState="5", ChannelStateDesc="Ringing")

    def _agent_leg_up(self, ch: Channel) -> None:
        ch.room = f"agent-{ch.agent_id}"
        self._agents_in[ch.room] = self._agents_in.get(ch.room, 0) + 1
        self.broadcast("ConfbridgeJoin", Conference=ch.room, Channel=ch.name, Uniqueid=ch.uid, Linkedid=ch.uid)
        self._originate_response(ch, "Success", "4")

    def _answer(self, ch: Channel, fate: Fate) -> None:
        if ch.uid not in self.channels:
            return
        ch.state = "up"
        amd = "HUMAN"
        if ch.variables.get("MARCADOR_AMD") == "1":
            amd = fate.amd_verdict or ("MACHINE" if fate.kind == "machine" else "HUMAN")
        self.broadcast("UserEvent", UserEvent="DialerAnswered", Channel=ch.name, Uniqueid=ch.uid,
                       CallId=ch.call_id, AMDStatus=amd)
        self._answered_at[ch.uid] = time.perf_counter()
        self._originate_response(ch, "Success", "4")
        self._after(ch, fate.talk_s, self._gone, ch, 16)  # the person hangs up after talking
        if math.isfinite(fate.patience_s):
            ch.patience = asyncio.get_running_loop().call_later(fate.patience_s / self.speed, self._gave_up, ch)
        # As the dialplan: held past MARCADOR_HOLD_S with no Redirect, the caller hears the abandon message. Not
        # shortened by `speed`: the limit waits for the engine, whose threshold runs on its own (real) clock; at
        # 10× a hold of 0.7 s beat the engine's 2 s and abandoned calls it would have connected.
        hold_s = float(ch.variables.get("MARCADOR_HOLD_S") or 10)
        ch.hold = asyncio.get_running_loop().call_later(hold_s, self._hold_ran_out, ch)

    def _hold_ran_out(self, ch: Channel) -> None:
        ch.stop_waiting()
        if ch.uid in self.channels and ch.room is None:
            self._after(ch, self.abandon_message_s, self._abandon_done, ch)

    def _gave_up(self, ch: Channel) -> None:
        ch.patience = None
        if ch.uid in self.channels and ch.room is None:
            self._gone(ch, 16)  # the person hung up while waiting for an agent

    def _fail(self, ch: Channel, kind: str) -> None:
        if ch.uid not in self.channels:
            return
        reason, cause = _REASON.get(kind, ("1", 16))
        self._gone(ch, cause, respond=False)
        self._originate_response(ch, "Failure", reason)

    def _hung_up(self, ch: Channel, cause: int) -> None:
        # As Asterisk 22 does for a far end that hangs up without a tone: Reason 0 whatever the cause, and the
        # OriginateResponse often before the channel's Hangup.
        if ch.uid not in self.channels:
            return
        self._originate_response(ch, "Failure", "0")
        self._gone(ch, cause, respond=False)

    def _abandon_done(self, ch: Channel) -> None:
        self.broadcast("UserEvent", UserEvent="DialerAbandoned", Channel=ch.name, Uniqueid=ch.uid,
                       CallId=ch.call_id)
        self._gone(ch, 16)

    def _leave_room(self, ch: Channel) -> None:
        if ch.room is not None:
            room, ch.room = ch.room, None
            self.broadcast("ConfbridgeLeave", Conference=room, Channel=ch.name, Uniqueid=ch.uid)
            if ch.kind == "agent":
                left = self._agents_in.pop(room, 0) - 1
                if left > 0:
                    self._agents_in[room] = left
                else:
                    self._end_marked(room)

    def _end_marked(self, room: str) -> None:
        """The room's last agent leg (marked user) left: as confbridge.conf's end_marked, every customer in it is
        put out of the ConfBridge and marcador-agent-room hangs it up (`Hangup(16)`). Asterisk then sends the two
        halves' Hangups in either order; here the dialplan half's first."""
        for ch in [c for c in self.channels.values() if c.room == room and c.kind == "call"]:
            self._leave_room(ch)
            self._after(ch, 0, self._gone, ch, 16, True, True)

    def _gone(self, ch: Channel, cause: int, respond: bool = True, dialplan_first: bool = False) -> None:
        if self.channels.pop(ch.uid, None) is None:
            return
        self._answered_at.pop(ch.uid, None)
        if ch.kind == "call":
            self._calls_now -= 1
        self._by_name.pop(ch.name, None)
        ch.cancel_timers()
        self._leave_room(ch)
        ch.state = "gone"
        # The far end hangs up first (the ;2 half, in sim-customer), unless our dialplan half ended the call.
        halves = [(f"{ch.uid};2", ch.name[:-2] + ";2"), (ch.uid, ch.name)]
        for uid, name in reversed(halves) if dialplan_first else halves:
            self.broadcast("Hangup", Channel=name, Uniqueid=uid, Linkedid=ch.uid, Cause=str(cause))

    def _originate_response(self, ch: Channel, response: str, reason: str) -> None:
        s = ch.session
        if s is None or s.closed or not ch.action_id:
            return  # its link is gone: Asterisk does not replay an OriginateResponse to a new session
        s.event("OriginateResponse", ActionID=ch.action_id, Response=response, Channel=ch.name,
                Context="", Exten="", Reason=reason, Uniqueid=ch.uid if response == "Success" else "<null>")

    def broadcast(self, event: str, **headers: Any) -> None:
        for s in list(self.sessions):
            if s.authenticated and s.wants(EVENT_CLASS.get(event, "call")):
                s.event(event, **headers)


class Session:
    def __init__(self, pbx: SimulatedPbx, writer: asyncio.StreamWriter) -> None:
        self.pbx = pbx
        self.writer = writer
        self.authenticated = False
        self.challenge: str | None = None
        self.classes: set[str] | None = set()  # None: every class
        self.closed = False
        self._held: list[bytes] = []

    def set_events(self, spec: str) -> None:
        spec = spec.strip().lower()
        if spec in ("on", "all", "yes", "1"):
            self.classes = None
        elif spec in ("off", "no", "0", ""):
            self.classes = set()
        else:
            self.classes = {c.strip() for c in spec.split(",") if c.strip()}

    def wants(self, klass: str) -> bool:
        return self.classes is None or klass in self.classes

    def reply(self, action_id: Any, response: str, **headers: Any) -> None:
        head = {"Response": response}
        if action_id is not None:
            head["ActionID"] = str(action_id)
        self._write({**head, **headers})

    def event(self, name: str, **headers: Any) -> None:
        head = {"Event": name}
        if headers.get("ActionID") is None:
            headers.pop("ActionID", None)
        self._write({**head, **headers})

    def _write(self, headers: dict[str, Any]) -> None:
        if self.closed:
            return
        data = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        if self.pbx.stalled:
            self._held.append(data.encode())
            return
        self.writer.write(data.encode())

    def flush(self) -> None:
        if self.closed or not self._held:
            return
        self.writer.write(b"".join(self._held))
        self._held.clear()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


def _context(ch: Channel) -> str:
    if ch.room is not None:
        return "marcador-agent-login" if ch.kind == "agent" else "marcador-agent-room"
    return "marcador-answered" if ch.kind == "call" else "marcador-agent-login"


def _app_data(ch: Channel) -> str:
    if ch.room is None:
        return ""
    return f"{ch.room},marcador_bridge,{'marcador_agent' if ch.kind == 'agent' else 'marcador_customer'}"


def _parse(block: str) -> dict[str, Any]:
    """An AMI action block → lower-cased header names; repeated headers (Variable) become lists."""
    out: dict[str, Any] = {}
    for line in block.split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        k, v = key.strip().lower(), value.strip()
        if k in out:
            prev = out[k]
            out[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
        else:
            out[k] = v
    return out


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _scenario_model(scenario: str | None, seed: int, speed: float) -> CallModel | None:
    if scenario is None:
        return None
    return ScenarioCallModel(load_scenario(scenario), seed, speed)


class ScenarioCallModel:
    """The discrete-event simulator's call model (sim/scenario.py), in real time: the same scenario file
    drives both. Parameters that change over the shift follow the time since the PBX started."""

    KINDS: ClassVar[dict[str, str]] = {"live": "answer", "machine": "machine", "busy": "busy",
                                       "fail": "congestion", "no_answer": "no_answer"}

    def __init__(self, scenario: Scenario, seed: int | None = None, speed: float = 1.0) -> None:
        self.scenario = scenario
        self.rng = random_streams(scenario.seed if seed is None else seed)[0]  # the simulator's callers, in order
        self.speed = speed
        self._t0 = time.monotonic()

    def fate(self, number: str, ring_s: float) -> Fate:
        t = (time.monotonic() - self._t0) * self.speed
        f = draw_fate(self.scenario, self.rng, t % self.scenario.duration_s, ring_s)
        detect = self.scenario.amd.detect_s if self.scenario.amd.enabled and f.kind in ("live", "machine") else 0.0
        verdict = ("MACHINE" if f.amd_says_machine else "HUMAN") if self.scenario.amd.enabled else None
        return Fate(self.KINDS[f.kind], f.answer_s + detect, f.talk_s, verdict, f.patience_s)
