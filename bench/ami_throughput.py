"""AMI events per second through parse → translation → core, on one core.

A synthetic AMI byte stream (the events Asterisk sends for answered, connected and hung-up calls, in TCP-sized
chunks) is fed to the bridge's protocol parser; each parsed event is translated and handed to the real core.

    python bench/ami_throughput.py [--calls N] [--json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ami_bridge.client import _Protocol
from ami_bridge.config import AmiConfig
from ami_bridge.translate import Translator
from bench._report import parser, report
from dialer.commands import ConnectToAgent, Originate
from dialer.core import DialerCore
from dialer.events import AgentConnected, AgentLogin, CampaignControl, LeadsAvailable
from dialer.model import CampaignSettings, Lead


def _block(**headers: Any) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"


def build(calls: int) -> tuple[DialerCore, Translator, bytes, list[str]]:
    core = DialerCore()
    core.add_campaign(CampaignSettings(campaign_id="b", max_lines=calls, max_lines_per_agent=1,
                                       max_calls_per_s=calls))
    for i in range(calls):
        core.handle(AgentLogin(f"a{i}"), 0.0)
        core.handle(AgentConnected(f"a{i}"), 0.0)
    core.handle(CampaignControl("b", "start"), 0.0)
    leads = tuple(Lead(f"L{i}", "b", (f"+1555{i:07d}",)) for i in range(calls))
    core.handle(LeadsAvailable("b", leads), 0.0)
    translator = Translator(AmiConfig(secret="x", call_channel="Local/{number}@sim-customer",
                                      agent_channel="Local/{agent_id}@sim-agent"))
    call_ids = []
    for cmd in core.tick(1.0):
        if isinstance(cmd, Originate):
            translator.actions_for(cmd)
            call_ids.append(cmd.call_id)
    parts = ["Asterisk Call Manager/11.0.0\r\n"]
    for n, cid in enumerate(call_ids):
        ch = f"Local/+1555{n:07d}@sim-customer-{n:08x};1"
        far = ch[:-2] + ";2"
        parts += [
            _block(Event="Newchannel", Channel=ch, ChannelState="0", ChannelStateDesc="Down", Uniqueid=cid,
                   Linkedid=cid),
            _block(Event="Newchannel", Channel=far, ChannelState="0", ChannelStateDesc="Down",
                   Uniqueid=f"{cid};2", Linkedid=cid),
            _block(Event="Newstate", Channel=far, ChannelState="5", ChannelStateDesc="Ringing",
                   Uniqueid=f"{cid};2", Linkedid=cid),
            _block(Event="UserEvent", UserEvent="DialerAnswered", Channel=ch, Uniqueid=cid, CallId=cid,
                   AMDStatus="HUMAN"),
            _block(Event="ConfbridgeJoin", Conference=f"agent-a{n}", Channel=ch, Uniqueid=cid),
            _block(Event="ConfbridgeLeave", Conference=f"agent-a{n}", Channel=ch, Uniqueid=cid),
            _block(Event="Hangup", Channel=far, Uniqueid=f"{cid};2", Cause="16", **{"Cause-txt": "Normal"}),
            _block(Event="Hangup", Channel=ch, Uniqueid=cid, Cause="16", **{"Cause-txt": "Normal"}),
        ]
    return core, translator, "".join(parts).encode(), call_ids


def run(calls: int) -> dict[str, Any]:
    core, translator, stream, _ = build(calls)
    events = 0
    redirects = 0
    now = 2.0

    class Factory:
        awaiting_actions: list[Any] = []  # noqa: RUF012

        def dispatch(self, message: Any) -> None:
            nonlocal events, redirects
            events += 1
            core_events, _ = translator.on_event(message)
            for ev in core_events:
                for cmd in core.handle(ev, now):
                    if isinstance(cmd, ConnectToAgent):
                        redirects += len(translator.actions_for(cmd))

    proto = _Protocol()
    proto.connection_made(_Null())  # type: ignore[arg-type]
    proto.factory = Factory()
    chunk = 4096  # Asterisk writes in small pieces; blocks get split across reads
    started = time.perf_counter()
    for i in range(0, len(stream), chunk):
        proto.data_received(stream[i:i + chunk])
    elapsed = time.perf_counter() - started
    return {"calls": calls, "events": events, "seconds": round(elapsed, 4),
            "events_per_s": round(events / elapsed), "redirects": redirects, "bytes": len(stream)}


class _Null:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    result = run(args.calls)
    report(result, args.json, lambda r: (
        f"ami_throughput: {r['events_per_s']:,} events/s ({r['events']:,} events, "
        f"{r['calls']:,} calls, {r['seconds']} s, {r['redirects']:,} redirects)"))


if __name__ == "__main__":
    main()
