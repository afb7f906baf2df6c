"""Answer → Redirect latency with hundreds of concurrent calls on the simulated PBX.

The engine (runtime + core + AMI bridge) and the simulated PBX run over loopback TCP. The PBX stamps the
moment it writes a call's answered event and the moment the engine's Redirect into an agent's room arrives:
that round trip includes the bridge's read, translation, the core's decision and the write back.

    python bench/answer_latency.py [--agents 500] [--seconds 40] [--json]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
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
from sim.pbx import SimulatedPbx


async def run(agents: int, seconds: float) -> dict[str, Any]:
    rng = random.Random(5)
    async with SimulatedPbx(secret="bench-secret") as pbx:
        tel = AmiTelephony(AmiConfig(port=pbx.port, secret="bench-secret", auth="md5",
                                     call_channel="Local/{number}@sim-customer",
                                     agent_channel="Local/{agent_id}@sim-agent"))
        store = InMemoryStore()
        runtime = Runtime(DialerCore(CoreConfig(id_prefix="b")), store, tel)
        await runtime.start()
        await runtime.create_campaign(CampaignSettings(campaign_id="lat", max_lines=agents * 2,
                                                       max_calls_per_s=agents, wrapup_s=2.0))
        # everyone answers after 2-25 s and talks 120 s: the floor fills up to `agents` concurrent calls
        leads = [Lead(f"L{i}", "lat", (f"+1555{i:06d}1{rng.randint(2, 25):02d}120",)) for i in range(agents * 4)]
        await runtime.add_leads("lat", leads)
        for i in range(agents):
            runtime.submit(AgentLogin(f"ag{i}"))
        await asyncio.sleep(2.0)
        runtime.submit(CampaignControl("lat", "start"))
        await asyncio.sleep(seconds)
        await runtime.stop()
        lat = sorted(x * 1000 for x in pbx.connect_latencies)
    if not lat:
        raise SystemExit("no call was connected: nothing measured")
    return {
        "agents": agents,
        "concurrent_calls": pbx.max_concurrent_calls,
        "connects": len(lat),
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
        "max_ms": round(lat[-1], 3),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=40.0)
    args = ap.parse_args()
    result = asyncio.run(run(args.agents, args.seconds))
    report(result, args.json, lambda r: (
        f"answer_latency: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms "
        f"over {r['connects']} connects at up to {r['concurrent_calls']} concurrent calls"))


if __name__ == "__main__":
    main()
