"""On a real Asterisk 22 over loopback: answered → customer in the agent's room.

Starts its own Asterisk with asterisk-docker/provision.sh (needs root and the provisioned root), runs a
campaign whose customers answer after 1-3 s, and measures, at the bridge, the time from the answered
event (`UserEvent DialerAnswered`) to the customer's `ConfbridgeJoin` in the agent's room.

    python bench/asterisk_connect_latency.py [--agents 10] [--leads 60] [--json]
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from bench._report import parser, report
from dialer.core import CoreConfig, DialerCore
from dialer.events import AgentLogin, CampaignControl
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead
from dialer.runtime import Runtime
from tests.harness.asterisk import AsteriskInstance, free_port


class StampingTelephony(AmiTelephony):
    """Notes when each call's answered event and its room join are read off the socket."""

    def __init__(self, config: AmiConfig) -> None:
        super().__init__(config)
        self.answered: dict[str, float] = {}
        self.joined: dict[str, float] = {}

    def _on_message(self, message: Any) -> None:
        now = time.perf_counter()
        name = message.get("Event")
        if name == "UserEvent" and message.get("UserEvent") == "DialerAnswered":
            self.answered.setdefault(str(message.get("CallId")), now)
        elif name == "ConfbridgeJoin":
            self.joined.setdefault(str(message.get("Uniqueid")), now)
        super()._on_message(message)


async def run(ast: AsteriskInstance, agents: int, leads: int) -> dict[str, Any]:
    tel = StampingTelephony(AmiConfig(port=ast.port, secret=ast.secret, auth="md5",
                                      call_channel="Local/{number}@sim-customer",
                                      agent_channel="Local/{agent_id}@sim-agent"))
    runtime = Runtime(DialerCore(CoreConfig(id_prefix="lat")), InMemoryStore(), tel)
    await runtime.start()
    await runtime.create_campaign(CampaignSettings(campaign_id="lat", wrapup_s=0.5, ring_timeout_s=15))
    await runtime.add_leads("lat", [Lead(f"L{i}", "lat", (f"+1555{i:06d}10{1 + i % 3}002",)) for i in range(leads)])
    for i in range(agents):
        runtime.submit(AgentLogin(f"ag{i}"))
    await asyncio.sleep(2.0)
    runtime.submit(CampaignControl("lat", "start"))
    deadline = time.monotonic() + 30 + leads * 6 / max(1, agents)
    while time.monotonic() < deadline:
        stats = runtime.stats("lat")
        if stats["attempts"] >= leads and stats["in_flight"] == 0 and stats["waiting"] == 0:
            break
        await asyncio.sleep(0.2)
    await runtime.stop()
    lat = sorted((tel.joined[c] - t) * 1000 for c, t in tel.answered.items() if c in tel.joined)
    if not lat:
        raise SystemExit("no answered call reached a room: nothing measured")
    return {"calls": len(lat), "agents": agents, "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2), "max_ms": round(lat[-1], 2)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--leads", type=int, default=60)
    args = ap.parse_args()
    ast = AsteriskInstance(host="127.0.0.1", port=free_port(), username="marcador",
                           secret=secrets.token_urlsafe(18), rundir=Path(tempfile.mkdtemp(prefix="ast-bench-")))
    ast.start()
    try:
        result = asyncio.run(run(ast, args.agents, args.leads))
    finally:
        ast.stop()
    report(result, args.json, lambda r: (
        f"asterisk_connect_latency: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
        f"max {r['max_ms']} ms over {r['calls']} calls"))


if __name__ == "__main__":
    main()
