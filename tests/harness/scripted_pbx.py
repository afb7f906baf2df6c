"""A scripted PBX for tests of the runtime and the API (a unit-level stand-in; end-to-end tests use the
simulated PBX over AMI or a real Asterisk): numbers ending in 1 answer, the rest fail as busy; agent legs
connect at once; a connected or abandoned customer hangs up after `talk_s`."""

from __future__ import annotations

import asyncio

from dialer.commands import ConnectToAgent, Originate, OriginateAgentLeg, PlayAbandonMessage
from dialer.events import AgentConnected, CallAnswered, CallEnded, CallFailed
from dialer.model import Outcome
from dialer.ports import EventSink, TelephonyCommand


class ScriptedPbx:
    def __init__(self, talk_s: float = 0.05, answer_s: float = 0.01) -> None:
        self.sink: EventSink | None = None
        self.up = True  # tests flip it to make the PBX not ready
        self.talk_s = talk_s
        self.answer_s = answer_s
        self.originated: list[str] = []

    @property
    def ready(self) -> bool:
        return self.sink is not None and self.up

    async def start(self, sink: EventSink) -> None:
        self.sink = sink

    def execute(self, cmd: TelephonyCommand) -> None:
        sink = self.sink
        if sink is None:
            return
        loop = asyncio.get_running_loop()
        if isinstance(cmd, OriginateAgentLeg):
            loop.call_soon(sink, AgentConnected(cmd.agent_id))
        elif isinstance(cmd, Originate):
            self.originated.append(cmd.call_id)
            answered = cmd.number.endswith("1")
            event = CallAnswered(cmd.call_id) if answered else CallFailed(cmd.call_id, Outcome.BUSY, 17)
            loop.call_later(self.answer_s, sink, event)
        elif isinstance(cmd, ConnectToAgent | PlayAbandonMessage):
            loop.call_later(self.talk_s, sink, CallEnded(cmd.call_id, 16))

    async def close(self) -> None:
        self.sink = None
