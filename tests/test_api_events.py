"""The server-sent-event stream over a real HTTP server (uvicorn on a free local port): events from the running
core arrive as `event/data/id` frames, filtered by kind prefix, with keep-alive comments; a slow client loses its
oldest events and never blocks the runtime; a reconnect resumes after Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from api.app import create_app
from api.events import EventHub, parse_types
from config.settings import ApiSettings, ApiToken
from dialer.commands import Emit
from tests.test_api import api_env, co_row, make_campaign


@asynccontextmanager
async def http_server(app: Any) -> AsyncIterator[str]:
    """`app` served by uvicorn on 127.0.0.1 and a free port, in this loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


class SseReader:
    """SSE frames off one streamed response (comments as {"comment": ...})."""

    def __init__(self, resp: httpx.Response) -> None:
        self._lines = resp.aiter_lines()

    async def frames(self, want: int, timeout_s: float = 10.0) -> list[dict[str, str]]:
        frames: list[dict[str, str]] = []
        frame: dict[str, str] = {}

        async def collect() -> None:
            nonlocal frame
            async for line in self._lines:
                if line == "":
                    if frame:
                        frames.append(frame)
                        frame = {}
                        if len(frames) >= want:
                            return
                    continue
                if line.startswith(":"):
                    frame["comment"] = line[1:].strip()
                else:
                    key, _, value = line.partition(": ")
                    frame[key] = value

        await asyncio.wait_for(collect(), timeout_s)
        return frames


async def test_sse_streams_core_events_filtered_with_ids() -> None:
    async with api_env() as env:
        app = create_app(env.runtime, ApiSettings(events_heartbeat_s=0.3))
        await make_campaign(env.api)
        async with http_server(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("GET", "/api/v1/events", params={"types": "campaign.,call.ended"}) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                sse = SseReader(resp)
                hello = await sse.frames(1)
                assert hello == [{"comment": "connected"}]
                await env.api.post("/api/v1/campaigns/c1/leads", json=[co_row(1, last=2)])  # busy
                await env.api.post("/api/v1/agents/a1/login")
                await env.api.post("/api/v1/campaigns/c1/start")
                frames = [f for f in await sse.frames(3) if "event" in f]
                kinds = [f["event"] for f in frames]
                assert kinds[:2] == ["campaign.state", "call.ended"], kinds
                assert json.loads(frames[0]["data"]) == {"campaign_id": "c1", "status": "running"}
                ended = json.loads(frames[1]["data"])
                assert ended["outcome"] == "busy" and ended["number"] == "+573001200012"  # integrators need it
                assert int(frames[1]["id"]) > int(frames[0]["id"])
                assert "agent.state" not in kinds  # filtered out
                # nothing else comes: the next frame is a keep-alive comment
                quiet = await sse.frames(1, timeout_s=3)
                assert quiet == [{"comment": "keep-alive"}]
            # the client went away: the hub forgets it
            for _ in range(100):
                if not app.state.hub.clients:
                    break
                await asyncio.sleep(0.02)
            assert not app.state.hub.clients


async def test_sse_needs_a_reader_token() -> None:
    async with api_env() as env:
        tokens = [ApiToken(name="v", token="viewer-token-0123456789", role="viewer"),
                  ApiToken(name="a", token="agent-token-0123456789", role="agent", agent_id="a1")]
        app: FastAPI = create_app(env.runtime, ApiSettings(tokens=tokens, events_heartbeat_s=0.2))
        async with http_server(app) as base, httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/api/v1/events")).status_code == 401
            r = await http.get("/api/v1/events", headers={"Authorization": "Bearer agent-token-0123456789"})
            assert r.status_code == 403
            async with http.stream("GET", "/api/v1/events",
                                   headers={"Authorization": "Bearer viewer-token-0123456789"}) as resp:
                assert resp.status_code == 200
                assert (await SseReader(resp).frames(1)) == [{"comment": "connected"}]


async def test_a_slow_client_loses_its_oldest_events_and_never_blocks() -> None:
    hub = EventHub(lambda: 0.0, replay=5, client_queue=3)
    slow = hub.connect(parse_types("call."))
    fast = hub.connect(())
    for i in range(10):
        hub(Emit("call.dialed", {"i": i}))  # returns at once whatever the clients do
        hub(Emit("agent.state", {"i": i}))
    assert [e.data["i"] for e in slow.queue] == [7, 8, 9] and slow.dropped == 7
    assert fast.dropped == 17 and hub.dropped == 24
    # a reconnect with Last-Event-ID gets the replayed tail after that id
    again = hub.connect((), last_id=17)
    assert [e.seq for e in again.queue] == [18, 19, 20]


def test_type_filters() -> None:
    assert parse_types(None) == () and parse_types("*") == () and parse_types("call.*, agent.") == ("call.",
                                                                                                    "agent.")


async def _frames(hub: EventHub, client: Any, n: int) -> list[str]:
    stream = hub.stream(client, lambda: asyncio.sleep(0, result=False))
    out = [await asyncio.wait_for(anext(stream), 1) for _ in range(n + 1)][1:]  # after ": connected"
    hub.disconnect(client)
    return out


def _gap(frame: str) -> dict[str, Any]:
    assert frame.startswith("event: stream.gap\n") and "\nid:" not in frame, frame  # no id: resumes stay put
    return json.loads(frame.split("data: ", 1)[1])  # type: ignore[no-any-return]


async def test_a_client_is_told_when_events_were_lost_never_left_to_guess() -> None:
    """Past the replay buffer, after a restart (an id this run never gave) or as a slow client, events are lost by
    design; the stream now says so with a `stream.gap` frame, so an integrator knows to reconcile (GET /attempts)
    instead of silently missing a call's outcome."""
    hub = EventHub(lambda: 0.0, replay=5, client_queue=3)
    for i in range(10):
        hub(Emit("call.ended", {"i": i}))  # ids 1..10; ids 6..10 kept
    late = hub.connect(("call.",), last_id=2)  # 3, 4, 5 are gone
    frames = await _frames(hub, late, 4)
    assert _gap(frames[0]) == {"reason": "replay_exceeded", "from_id": 3, "to_id": 5}
    assert [f.split("\n")[0] for f in frames[1:]] == ["id: 6", "id: 7", "id: 8"]

    restarted = hub.connect((), last_id=5000)  # an id from before a restart: replay what this run kept
    frames = await _frames(hub, restarted, 2)
    assert _gap(frames[0]) == {"reason": "unknown_id", "last_event_id": 5000, "oldest_id": 6}
    assert frames[1].startswith("id: 6\n")

    in_time = hub.connect((), last_id=7)
    assert (await _frames(hub, in_time, 1))[0].startswith("id: 8\n")  # nothing lost: no notice

    slow = hub.connect(("call.",))
    for i in range(5):
        hub(Emit("call.ended", {"i": i}))  # ids 11..15: a queue of 3 loses 11 and 12
    frames = await _frames(hub, slow, 4)
    assert _gap(frames[0]) == {"reason": "slow_client", "dropped": 2, "from_id": 11, "to_id": 12}
    assert [f.split("\n")[0] for f in frames[1:]] == ["id: 13", "id: 14", "id: 15"]


async def test_a_resume_after_a_restart_is_told_even_when_the_new_run_has_passed_its_id() -> None:
    """Ids counted from 1 in every run, so a Last-Event-ID from before a restart looked like one of this run as
    soon as the new run had sent that many events (on a busy floor, within seconds): the client was replayed
    only the events after it and silently missed the new run's first ones, the loss `unknown_id` exists to
    announce. Ids now start past every id an earlier run gave, so such an id is always recognised."""
    async with api_env() as env:
        before = create_app(env.runtime, ApiSettings(events_heartbeat_s=0.3)).state.hub
        for i in range(3):
            before(Emit("call.ended", {"run": 1, "i": i}))
        last_seen = before.seq  # what an SSE client of the first run holds when the engine restarts
        await asyncio.sleep(0.01)
        app = create_app(env.runtime, ApiSettings(events_heartbeat_s=0.3))  # the restarted engine's API
        for i in range(5):
            app.state.hub(Emit("call.ended", {"run": 2, "i": i}))
        async with http_server(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(last_seen)}) as resp:
                frames = (await SseReader(resp).frames(7))[1:]  # after ": connected"
    assert frames[0]["event"] == "stream.gap" and json.loads(frames[0]["data"])["reason"] == "unknown_id"
    assert [json.loads(f["data"]) for f in frames[1:]] == [{"run": 2, "i": i} for i in range(5)]


@pytest.mark.parametrize("replay", [0, 1, 2, 5])
def test_events_replay_keeps_exactly_that_many_events_for_a_resume(replay: int) -> None:
    """`events_replay: 0` still replayed one event (the buffer was at least 1 long): a resume got the last event
    before it connected, which a setting of 0 says it must not."""
    hub = EventHub(lambda: 0.0, replay=replay)
    for i in range(3):
        hub(Emit("call.ended", {"i": i}))  # ids 1..3
    client = hub.connect((), last_id=0)
    assert [e.seq for e in client.queue] == [1, 2, 3][3 - min(replay, 3):]
    told = client.take_notices()
    assert told == ([] if replay >= 3 else [{"reason": "replay_exceeded", "from_id": 1, "to_id": 3 - replay}])


async def test_with_events_replay_0_a_resume_over_sse_gets_the_gap_and_no_past_event() -> None:
    async with api_env() as env:
        app = create_app(env.runtime, ApiSettings(events_replay=0, events_heartbeat_s=0.3))
        hub = app.state.hub
        for i in range(3):
            hub(Emit("call.ended", {"i": i}))
        async with http_server(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(hub.seq - 2)}) as resp:
                frames = (await SseReader(resp).frames(3))[1:]  # after ": connected"
    assert frames[0]["event"] == "stream.gap"
    assert json.loads(frames[0]["data"]) == {"reason": "replay_exceeded", "from_id": hub.seq - 1, "to_id": hub.seq}
    assert frames[1] == {"comment": "keep-alive"}  # and no event: none was kept


def test_a_negative_events_replay_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        ApiSettings(events_replay=-1)
    (problem,) = err.value.errors()
    assert problem["loc"] == ("events_replay",)
    with pytest.raises(ValueError, match="replay"):
        EventHub(lambda: 0.0, replay=-1)
