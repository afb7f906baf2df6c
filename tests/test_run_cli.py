"""`marcador run` as a service: it fails fast with one clear line and an exit code when it cannot start, and on
SIGTERM it stops dialing and waits for its calls to end before it exits. Driven as a process (signals, exit codes)
against the simulated PBX over AMI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dialer.logs import setup_logging
from marcador_cli.main import app
from sim.pbx import SimulatedPbx
from tests.harness.services import free_port

ROOT = Path(__file__).resolve().parents[1]
AMI_ENV = {"MARCADOR_PBX__MODE": "asterisk", "MARCADOR_AMI__CALL_CHANNEL": "Local/{number}@sim-customer",
           "MARCADOR_AMI__AGENT_CHANNEL": "Local/{agent_id}@sim-agent"}


def _run(env: dict[str, str]) -> Any:
    return CliRunner().invoke(app, ["run"], env={"MARCADOR_API__PORT": str(free_port()), **env})


def test_api_port_in_use_stops_the_start_before_anything_dials() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["run"], env={"MARCADOR_API__PORT": str(port), "MARCADOR_DEMO__AGENTS": "1"})
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Marcador is running" not in r.output  # it used to say so, start the demo dialing, then fail to bind


def test_unreachable_store_is_one_line_with_the_password_hidden() -> None:
    url = f"redis://:st0re-pw@127.0.0.1:{free_port()}/0"
    r = _run({"MARCADOR_STORE_URL": url})
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # was a ConnectionError traceback
    assert "st0re-pw" not in r.output


def test_refused_ami_login_exits_2_and_is_not_retried() -> None:
    async def main() -> tuple[Any, int]:
        async with SimulatedPbx(secret="right-one") as pbx:
            env = {**AMI_ENV, "MARCADOR_AMI__PORT": str(pbx.port), "MARCADOR_AMI__SECRET": "wr0ng-one"}
            r = await asyncio.to_thread(_run, env)
            return r, len(pbx.call_log)

    r, dialed = asyncio.run(main())
    assert r.exit_code == 2, r.output  # a configuration error: restarting would only repeat the refused login
    assert r.exception is None or isinstance(r.exception, SystemExit)  # was an AmiAuthError traceback
    assert dialed == 0 and "wr0ng-one" not in r.output


async def _until(api: httpx.AsyncClient, path: str, ok: Any, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            r = await api.get(path)
            if r.status_code == 200 and ok(r.json()):
                return r.json()
        except httpx.TransportError:
            pass
        assert loop.time() < deadline, f"{path}: condition not met in {timeout} s"
        await asyncio.sleep(0.1)


async def test_sigterm_lets_the_calls_up_end_before_the_process_exits() -> None:
    # In-memory store against a PBX: nothing to flush, but the calls are real. Stopping used to leave them up
    # (and SIGTERM, through uvicorn, killed the process before any drain): a debtor who answered then waited on
    # hold with no one to take the call.
    async with SimulatedPbx(secret="term-pbx", speed=2.0) as pbx:
        port = free_port()
        env = {**os.environ, **AMI_ENV, "MARCADOR_AMI__PORT": str(pbx.port), "MARCADOR_AMI__SECRET": "term-pbx",
               "MARCADOR_API__PORT": str(port)}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "marcador_cli.main", "run", cwd=ROOT,
                                                    env=env, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
                await _until(api, "/readyz", lambda body: True)
                r = await api.post("/api/v1/campaigns", json={"campaign_id": "t", "strategy": "progressive",
                                                              "ring_timeout_s": 15, "wrapup_s": 1})
                assert r.status_code == 201, r.text
                # Madrid numbers whose last six digits say: answer after 1 s, talk 20 s (10 s at speed 2).
                leads = [{"lead_id": f"L{i}", "phone": f"+3491{i}101020", "country": "ES",
                          "timezone": "Europe/Madrid"} for i in range(10)]
                assert (await api.post("/api/v1/campaigns/t/leads", json=leads)).json()["accepted"] == 10
                for agent in ("a1", "a2", "a3"):
                    assert (await api.post(f"/api/v1/agents/{agent}/login")).status_code == 202
                await _until(api, "/api/v1/agents", lambda a: sum(x["state"] == "ready" for x in a) == 3)
                assert (await api.post("/api/v1/campaigns/t/start")).status_code == 200
                await _until(api, "/api/v1/campaigns/t/stats", lambda s: s["connected"] >= 2)
            assert [ch for ch in pbx.channels.values() if ch.kind == "call"]  # calls are up now
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode(errors="replace")
        assert rc == 0, err[-2000:]
        assert [ch.name for ch in pbx.channels.values() if ch.kind == "call"] == []
        assert "Traceback" not in err


async def test_the_api_socket_gets_no_nagle_delay_on_its_connections() -> None:
    # socket.create_server made the listening socket with protocol 0, so asyncio left TCP_NODELAY off on every
    # connection: each response waited on the client's delayed ACK (stats p50 2 ms -> 44 ms).
    import socket

    from marcador_cli.lifecycle import bind_api

    sock = bind_api("127.0.0.1", 0)
    nodelay: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, w = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        for _ in range(100):
            if nodelay:
                break
            await asyncio.sleep(0.01)
        w.close()
    assert nodelay and nodelay[0] != 0


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `marcador run` inside a test runner set logging up on a stderr the runner later closed: every later record,
    # from any library (matplotlib building its font cache under `marcador sim --plot`), failed with a "Logging
    # error" written into the next command's output.
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging("INFO", json_lines=True)
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("elsewhere").info("font cache built")
        assert json.loads(second.getvalue().strip().splitlines()[-1])["msg"] == "font cache built"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
