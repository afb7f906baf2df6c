"""The one place that imports every room and wires concrete parts to the runtime's ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import uvicorn

from ami_bridge.client import AmiAuthError
from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from api.app import create_app
from config.settings import MarcadorSettings
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead
from dialer.ports import Store
from dialer.runtime import Runtime, RuntimeConfig
from dialer.store_factory import open_store, redact_url
from marcador_cli.lifecycle import EXIT_CONFIG, ApiServer, StartupError, StopSignals, bind_api
from marcador_cli.settings_check import ami_config
from sim.pbx import SimulatedPbx

log = logging.getLogger("marcador")

DEMO_CAMPAIGN = "demo"
DRAIN_TIMEOUT_S = 30.0  # a stopping node waits this long for its calls to end (keep it above ring timeouts)
STORE_START_TIMEOUT_S = 10.0
# Simulated-PBX numbers end in O NN TTT (outcome, ring seconds, talk seconds): a mix like a real list.
_DEMO_OUTCOMES = [(1, 0.30), (2, 0.08), (3, 0.04), (4, 0.50), (5, 0.08)]


def demo_leads(count: int, seed: int = 7) -> list[Lead]:
    rng = random.Random(seed)
    kinds, weights = zip(*_DEMO_OUTCOMES, strict=True)
    leads = []
    for i in range(count):
        kind = rng.choices(kinds, weights)[0]
        ring = rng.randint(3, 12)
        talk = rng.randint(20, 90)
        leads.append(Lead(f"demo-{i:06d}", DEMO_CAMPAIGN, (f"+1555{i % 1000:04d}{kind}{ring:02d}{talk:03d}",)))
    return leads


@contextlib.asynccontextmanager
async def pbx_link(settings: MarcadorSettings) -> AsyncIterator[AmiConfig]:
    """The AMI endpoint to use: the embedded simulated PBX, or the configured Asterisk."""
    ami = settings.ami
    if settings.pbx.mode == "asterisk":
        yield ami_config(settings)
        return
    secret = secrets.token_urlsafe(16)
    async with SimulatedPbx(host="127.0.0.1", port=ami.port if ami.port != 5038 else 0, username=ami.username,
                            secret=secret, scenario=settings.pbx.scenario, speed=settings.pbx.speed,
                            call_log_path=getattr(settings.pbx, "call_log", None)) as pbx:
        log.info("simulated PBX listening", extra={"fields": {"ami": f"127.0.0.1:{pbx.port}"}})
        yield AmiConfig(host="127.0.0.1", port=pbx.port, username=ami.username, secret=secret, auth=ami.auth,
                        call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")


async def start_demo(runtime: Runtime, settings: MarcadorSettings) -> None:
    demo = settings.demo
    if await runtime.store.get_campaign(DEMO_CAMPAIGN) is None:
        await runtime.create_campaign(CampaignSettings(campaign_id=DEMO_CAMPAIGN, name="Demo collections",
                                                       strategy=demo.strategy, wrapup_s=5.0))
    await runtime.add_leads(DEMO_CAMPAIGN, demo_leads(demo.leads))  # ids already there are left alone
    # With a shared store several nodes run the demo: agent ids name their node (the node registry lists them).
    prefix = "" if isinstance(runtime.store, InMemoryStore) else f"{settings.node_id}-"
    for i in range(demo.agents):
        runtime.submit(AgentLogin(f"{prefix}demo{i + 1:02d}"))
    await runtime.control_campaign(DEMO_CAMPAIGN, "start")  # on every node sharing the store


async def open_checked_store(url: str, node_id: str) -> Store:
    """The store, once it has answered: an unreachable Redis stops the start-up with its reason."""
    store = open_store(url, node_id=node_id)
    try:
        await asyncio.wait_for(store.list_campaigns(), STORE_START_TIMEOUT_S)
    except Exception as exc:
        closer = getattr(store, "aclose", None)
        if callable(closer):
            with contextlib.suppress(Exception):
                await closer()
        raise StartupError(f"the store {redact_url(url)} cannot be used: {exc or type(exc).__name__} "
                           "(store_url, MARCADOR_STORE_URL)") from None
    return store


async def serve(settings: MarcadorSettings) -> None:
    """The service until SIGTERM/SIGINT; `StartupError` when it cannot start. On a stop it dials nothing more
    and, when calls are real (Asterisk) or their records shared (Redis), waits for the calls up to end."""
    sock = bind_api(settings.api.host, settings.api.port)
    try:
        await _serve(settings, sock)
    finally:
        sock.close()


async def _serve(settings: MarcadorSettings, sock: socket.socket) -> None:
    store = await open_checked_store(settings.store_url, settings.node_id)  # leases are owned by this node
    # Call ids must never repeat across restarts of this node: the boot time is part of them.
    boot = format(int(time.time()), "x")
    core = DialerCore(CoreConfig(id_prefix=f"{settings.node_id}-{boot}"))
    async with pbx_link(settings) as ami:
        runtime = Runtime(core, store, AmiTelephony(ami, id_prefix=f"{settings.node_id}-{boot}",
                                                      node_id=settings.node_id))
        try:
            await runtime.start()
        except AmiAuthError as exc:
            await runtime.stop()
            raise StartupError(f"{exc} (ami.username, ami.secret / MARCADOR_AMI__SECRET, manager.conf); "
                               "not retried", EXIT_CONFIG) from None
        if settings.pbx.mode == "sim" and settings.demo.enabled:
            await start_demo(runtime, settings)
        app = create_app(runtime, settings.api)
        server = ApiServer(uvicorn.Config(app, log_config=None, lifespan="off"))
        signals = StopSignals(server)
        host, port = settings.api.host, sock.getsockname()[1]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        # A drain matters when calls are real (a debtor answering after we left would wait on hold in silence)
        # or their records shared (an attempt left open is later written `lost`).
        drain = settings.pbx.mode == "asterisk" or not isinstance(store, InMemoryStore)
        with signals.installed():
            print(f"Marcador is running: API {url}/api/v1  docs {url}/docs  metrics {url}/metrics  (Ctrl-C stops)",
                  flush=True)
            try:
                await server.serve(sockets=[sock])
            finally:
                if drain:
                    signals.drain_task = asyncio.ensure_future(runtime.drain(DRAIN_TIMEOUT_S))
                    with contextlib.suppress(asyncio.CancelledError):
                        await signals.drain_task  # leave no call or attempt of this node open
                await runtime.stop()
                webhooks = getattr(app.state, "webhooks", None)
                if webhooks is not None:
                    await webhooks.aclose()  # uvicorn runs without lifespan: deliver what is queued before exit


# ---------------------------------------------------------------------------------------------- a headless node


@dataclass(slots=True)
class NodeOptions:
    """One dialer node beside its own simulated PBX, sharing a Redis store with other nodes (bench/multinode.py)."""

    store_url: str
    node_id: str
    campaign: CampaignSettings
    agents: int = 100
    speed: float = 10.0
    call_log: str | None = None  # the simulated PBX's JSONL log of every customer Originate
    seed: int = 1
    drain_timeout_s: float = DRAIN_TIMEOUT_S


async def join_campaign(runtime: Runtime, campaign: CampaignSettings, agent_ids: Sequence[str],
                        leads: Sequence[Lead] = ()) -> None:
    """Create the campaign if no node has yet (the first node creates, the others join), add leads (ids already
    present are left alone, so several nodes may load the same list), log this node's agents in, start."""
    stored = await runtime.store.get_campaign(campaign.campaign_id)
    if stored is None and not await runtime.create_campaign(campaign):
        stored = await runtime.store.get_campaign(campaign.campaign_id)  # another node created it meanwhile
    if stored is not None and campaign.campaign_id not in runtime.core.campaigns:
        runtime.apply_campaign(stored)  # created by another node after this one started
    if leads:
        await runtime.add_leads(campaign.campaign_id, leads)
    for agent_id in agent_ids:
        runtime.submit(AgentLogin(agent_id, frozenset({campaign.campaign_id})))
    await runtime.control_campaign(campaign.campaign_id, "start")  # kept in the store: running on every node


async def run_node(opts: NodeOptions, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set or SIGTERM/SIGINT arrives; then drain (calls up end, writes land) and stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    store = open_store(opts.store_url, node_id=opts.node_id)
    boot = format(int(time.time()), "x")  # call ids never repeat across restarts of a node
    prefix = f"{opts.node_id}-{boot}"
    secret = secrets.token_urlsafe(16)
    async with SimulatedPbx(port=0, secret=secret, speed=opts.speed, seed=opts.seed,
                            call_log_path=opts.call_log) as pbx:
        ami = AmiConfig(host="127.0.0.1", port=pbx.port, username=pbx.username, secret=secret, auth="md5",
                        call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")
        runtime = Runtime(DialerCore(CoreConfig(id_prefix=prefix)), store,
                          AmiTelephony(ami, id_prefix=prefix, node_id=opts.node_id), RuntimeConfig())
        await runtime.start()
        try:
            agents = [f"{opts.node_id}-a{i + 1:03d}" for i in range(opts.agents)]
            await join_campaign(runtime, opts.campaign, agents)
            print(f"node {opts.node_id} dialing (PBX 127.0.0.1:{pbx.port})", flush=True)
            await stop.wait()
            await runtime.drain(opts.drain_timeout_s)
        finally:
            await runtime.stop()
