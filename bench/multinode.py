"""Several dialer nodes sharing one Redis: a node killed mid-run (SIGKILL) and Redis restarted once.

Starts redis-server (AOF on, appendfsync everysec) on a free loopback port in a temporary directory, loads
one shared campaign's leads straight into Redis, then starts N node processes (`python -m bench.multinode
node ...`, each a `marcador_cli.wiring.run_node`: its own simulated PBX at a speed factor, its own agents).
Mid-run one node is SIGKILLed and later Redis is shut down and started again on the same AOF; at the end
the other nodes get SIGTERM (they drain their calls and stop). Everything is then counted from the Redis
attempt records and the simulated PBXs' own call logs (JSONL, one line per Originate, flushed at once), never
from the nodes' counters:

- attempts: attempt records; double_dials: a call id originated twice, or a lead with two PBX calls
  overlapping in time (a call ends at its record's ended_at, or — lost or unrecorded — at the longest a call
  can last); lost_leads: loaded leads neither done nor waiting to be dialed (hopper or schedule);
  attempts_without_outcome; dialed_outside_lease: a PBX call with no attempt record (dials are written
  ahead, so there should be none); abandon_rate: abandoned / live answers over the records;
  recovery_s: Redis shutdown → the first PBX Originate after it was back; redialed_early: a lead dialed again
  before the recycle delay of its previous attempt's outcome had passed (the hopper's defaults; a `lost` attempt
  has none), as when a killed node's recycled leads went back in line afresh.

    python bench/multinode.py [--nodes 4] [--agents 100] [--leads 40000] [--speed 10] [--duration 90] [--json]
    python bench/multinode.py --store-url 'redis+cluster://h:7000,h:7001?prefix=mn1:' ...   (a Cluster; no restart)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import parser, report  # noqa: E402
from dialer.hopper import DEFAULT_RECYCLE_S  # noqa: E402
from dialer.model import Attempt, CampaignSettings, Lead, Outcome  # noqa: E402
from dialer.redis_store import RedisStore  # noqa: E402
from dialer.store_factory import open_store, redact_url  # noqa: E402
from tests.harness.redis import RedisServer, start_server  # noqa: E402

CAMPAIGN = "shared"
# The simulated PBX reads a number's last six digits O NN TTT (outcome, ring s, talk s; 1 answer, 2 busy,
# 3 congestion, 4 no answer, 5 unallocated). A mix with enough answers to keep 100 agents per node busy.
_MIX = [(1, 0.45), (2, 0.10), (3, 0.05), (4, 0.30), (5, 0.10)]
RING_TIMEOUT_S = 25.0
MAX_TALK_S = 120
ABANDON_MESSAGE_S = 2.0


def bench_campaign(strategy: str = "erlang") -> CampaignSettings:
    return CampaignSettings(campaign_id=CAMPAIGN, name="Shared collections", strategy=strategy,
                            abandon_target=0.03, wrapup_s=1.0, ring_timeout_s=RING_TIMEOUT_S, max_lines=400)


def make_leads(n: int, seed: int = 11) -> list[Lead]:
    """Unique numbers (the PBX logs name a lead by its number): +1, the lead's index, then its fate code."""
    import random

    rng = random.Random(seed)
    kinds, weights = zip(*_MIX, strict=True)
    out = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        code = f"{kind}{rng.randint(2, 12):02d}{rng.randint(30, MAX_TALK_S):03d}"
        out.append(Lead(f"L{i:07d}", CAMPAIGN, (f"+1{i:07d}{code}",)))
    return out


# ---------------------------------------------------------------------------------------------- one node


def node_main(argv: list[str]) -> None:
    from dialer.logs import setup_logging
    from marcador_cli.wiring import NodeOptions, run_node

    ap = argparse.ArgumentParser(prog="multinode node")
    ap.add_argument("--store-url", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--call-log", required=True)
    ap.add_argument("--strategy", default="erlang")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    setup_logging("WARNING")
    opts = NodeOptions(store_url=a.store_url, node_id=a.node_id, campaign=bench_campaign(a.strategy),
                       agents=a.agents, speed=a.speed, call_log=a.call_log, seed=a.seed)
    asyncio.run(run_node(opts))


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Node:
    node_id: str
    call_log: Path
    out: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, url: str, agents: int, speed: float, strategy: str, seed: int) -> None:
        args = [sys.executable, "-m", "bench.multinode", "node", "--store-url", url, "--node-id", self.node_id,
                "--agents", str(agents), "--speed", str(speed), "--call-log", str(self.call_log),
                "--strategy", strategy, "--seed", str(seed)]
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def dialing(self) -> bool:
        try:
            return "dialing" in self.out.read_text(errors="replace")
        except OSError:
            return False


@dataclass
class Timeline:
    started: float = 0.0
    killed: float = 0.0
    redis_down: float = 0.0
    redis_up: float = 0.0
    stopping: float = 0.0
    ended: float = 0.0
    notes: list[str] = field(default_factory=list)


async def load(url: str, leads: list[Lead], strategy: str) -> None:
    store = open_store(url, node_id="loader")
    assert isinstance(store, RedisStore)
    try:
        await store.save_campaign(bench_campaign(strategy))
        assert await store.add_leads(CAMPAIGN, leads) == len(leads)
    finally:
        await store.aclose()


def wait_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def run_cluster(workdir: Path, nodes: int, agents: int, leads: list[Lead], speed: float, duration: float,
                kill_at: float, restart_at: float | None, redis_down: float, lease_ttl: float, strategy: str,
                store_url: str | None = None) -> tuple[RedisServer | None, str, list[Node], Timeline]:
    """With `store_url` (a Redis of the caller's, e.g. a Cluster) no redis-server is started, and none restarted."""
    server = start_server(workdir / "redis") if store_url is None else None
    base = server.url if server is not None else str(store_url)
    url = f"{base}{'&' if '?' in base else '?'}lease_ttl={lease_ttl:g}"
    asyncio.run(load(url, leads, strategy))
    tl = Timeline()
    cluster = [Node(f"n{i + 1}", workdir / f"calls-n{i + 1}.jsonl", workdir / f"n{i + 1}.out") for i in range(nodes)]
    for i, node in enumerate(cluster):
        node.start(url, agents, speed, strategy, seed=i + 1)
    deadline = time.time() + 60
    while not all(n.dialing() for n in cluster):
        if time.time() > deadline or any(n.proc is not None and n.proc.poll() is not None for n in cluster):
            raise RuntimeError("nodes did not start: " + " | ".join(n.out.read_text()[-500:] for n in cluster))
        time.sleep(0.1)
    tl.started = time.time()
    victim = cluster[-1]
    wait_until(tl.started + kill_at)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    tl.killed = time.time()
    if server is not None and restart_at is not None:
        wait_until(tl.started + restart_at)
        tl.redis_down = time.time()
        server.stop()  # SHUTDOWN: the AOF is fsynced; then start again on the same port and AOF
        time.sleep(redis_down)
        server.start()
        tl.redis_up = time.time()
    wait_until(tl.started + duration)
    tl.stopping = time.time()
    for node in cluster[:-1]:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGTERM)
    for node in cluster[:-1]:
        if node.proc is not None:
            try:
                node.proc.wait(60)
            except subprocess.TimeoutExpired:
                tl.notes.append(f"{node.node_id} did not stop in 60 s: killed")
                node.proc.kill()
                node.proc.wait()
            if node.proc.returncode not in (0, -signal.SIGTERM):
                tl.notes.append(f"{node.node_id} exited with {node.proc.returncode}")
    tl.ended = time.time()
    return server, url, cluster, tl


# ---------------------------------------------------------------------------------------------- counting


def read_call_logs(cluster: list[Node]) -> list[dict[str, Any]]:
    rows = []
    for node in cluster:
        if node.call_log.exists():
            for line in node.call_log.read_text().splitlines():
                if line.strip():
                    rows.append({**json.loads(line), "node": node.node_id})
    return rows


async def redis_state(url: str) -> tuple[list[Attempt], set[str], dict[str, int]]:
    store = open_store(url, node_id="auditor")
    assert isinstance(store, RedisStore)
    try:
        records = await store.attempts(CAMPAIGN)
        r = store.client
        done = {str(x) for x in await r.hkeys(store._k(CAMPAIGN, "done"))}
        waiting = {str(x) for x in await r.zrange(store._k(CAMPAIGN, "hopper"), 0, -1)}
        waiting |= {str(x) for x in await r.zrange(store._k(CAMPAIGN, "sched"), 0, -1)}
        counts = await store.lead_counts(CAMPAIGN)
        return records, done | waiting, counts
    finally:
        await store.aclose()


def audit(records: list[Attempt], accounted: set[str], lead_ids: list[str], rows: list[dict[str, Any]],
          speed: float, tl: Timeline) -> dict[str, Any]:
    by_call = {a.call_id: a for a in records}
    longest = (RING_TIMEOUT_S + MAX_TALK_S + ABANDON_MESSAGE_S) / speed + 1.0
    originated = Counter(row["call_id"] for row in rows)
    double = sum(n - 1 for n in originated.values() if n > 1)  # one attempt record, dialed more than once
    per_lead: dict[str, list[tuple[float, float]]] = defaultdict(list)
    outside = 0
    for row in rows:
        att = by_call.get(row["call_id"])
        if att is None or att.number.lstrip("+") != str(row["number"]).lstrip("+"):
            outside += 1
            per_lead["?" + str(row["number"])].append((row["t"], row["t"] + longest))
            continue
        end = att.ended_at if att.ended_at is not None and att.outcome is not Outcome.LOST else row["t"] + longest
        per_lead[att.lead_id].append((row["t"], end))
    for calls in per_lead.values():
        calls.sort()
        for (_, end), (start, _) in itertools.pairwise(calls):
            if start < end:
                double += 1
    by_lead: dict[str, list[Attempt]] = defaultdict(list)
    for a in records:
        by_lead[a.lead_id].append(a)
    early = 0
    for tries in by_lead.values():
        tries.sort(key=lambda a: a.dialed_at)
        for prev, nxt in itertools.pairwise(tries):
            if prev.outcome is not None and prev.outcome is not Outcome.LOST and prev.ended_at is not None and \
                    nxt.dialed_at < prev.ended_at + DEFAULT_RECYCLE_S[prev.outcome] - 1.0:
                early += 1
    outcomes = Counter(a.outcome.value if a.outcome else "none" for a in records)
    live = outcomes["connected"] + outcomes["abandoned"]
    after_up = [row["t"] for row in rows if row["t"] >= tl.redis_up]
    first_after = min(after_up) if after_up else float("nan")
    run_s = tl.stopping - tl.started
    return {
        "attempts": len(records),
        "pbx_calls": len(rows),
        "double_dials": double,
        "lost_leads": len(set(lead_ids) - accounted),
        "attempts_without_outcome": outcomes["none"],
        "dialed_outside_lease": outside,
        "abandon_rate": round(outcomes["abandoned"] / live, 4) if live else 0.0,
        "recovery_s": round(first_after - tl.redis_down, 3) if tl.redis_up else None,  # None: not restarted
        "redis_down_s": round(tl.redis_up - tl.redis_down, 3) if tl.redis_up else None,
        "lost_attempts": outcomes["lost"],
        "live_answers": live,
        "outcomes": dict(sorted(outcomes.items())),
        "dials_per_s": round(len(rows) / run_s, 1) if run_s > 0 else 0.0,
        "redialed_early": early,
    }


def run(nodes: int, agents: int, leads: int, speed: float, duration: float, kill_at: float, restart_at: float | None,
        redis_down: float, lease_ttl: float, strategy: str, workdir: Path,
        store_url: str | None = None) -> dict[str, Any]:
    """The run; with `store_url` on that Redis (plain or Cluster, give it a fresh prefix), not restarted."""
    data = make_leads(leads)
    wall = time.time()
    server, url, cluster, tl = run_cluster(workdir, nodes, agents, data, speed, duration, kill_at, restart_at,
                                           redis_down, lease_ttl, strategy, store_url)
    try:
        records, accounted, counts = asyncio.run(redis_state(url))
    finally:
        if server is not None:
            server.stop()
    result = audit(records, accounted, [lead.lead_id for lead in data], read_call_logs(cluster), speed, tl)
    result.update({
        "nodes": nodes, "agents_per_node": agents, "leads": leads, "speed": speed, "strategy": strategy,
        "lease_ttl_s": lease_ttl, "run_s": round(tl.stopping - tl.started, 1), "kill_at_s": kill_at,
        "redis_restart_at_s": restart_at if store_url is None else None,
        "store": "redis-server of its own" if store_url is None else redact_url(store_url),
        "stop_s": round(tl.ended - tl.stopping, 1),
        "lead_counts": counts, "wall_s": round(time.time() - wall, 1), "notes": tl.notes,
    })
    return result


KEYS = ("attempts", "double_dials", "lost_leads", "attempts_without_outcome", "dialed_outside_lease", "abandon_rate",
        "recovery_s", "redialed_early")


def table(r: dict[str, Any]) -> str:
    head = (f"{r['nodes']} nodes x {r['agents_per_node']} agents, {r['leads']} leads, speed {r['speed']:g}x, "
            f"{r['strategy']}, run {r['run_s']} s (node killed at {r['kill_at_s']:g} s, "
            + (f"Redis restarted at {r['redis_restart_at_s']:g} s, down {r['redis_down_s']} s"
               if r["redis_down_s"] is not None else f"store {r['store']}, not restarted")
            + f"), wall {r['wall_s']} s")
    lines = [head] + [f"  {k:<26} {r[k]}" for k in KEYS]
    lines += [f"  {'pbx_calls':<26} {r['pbx_calls']}  ({r['dials_per_s']}/s)",
              f"  {'lost_attempts':<26} {r['lost_attempts']}", f"  {'outcomes':<26} {r['outcomes']}",
              f"  {'lead_counts':<26} {r['lead_counts']}"]
    lines += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        node_main(sys.argv[2:])
        return
    ap = parser(__doc__)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--leads", type=int, default=40_000)
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of dialing before the graceful stop")
    ap.add_argument("--kill-at", type=float, default=25.0)
    ap.add_argument("--restart-at", type=float, default=50.0)
    ap.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down in its restart")
    ap.add_argument("--lease-ttl", type=float, default=9.0)
    ap.add_argument("--strategy", default="erlang")
    ap.add_argument("--keep", help="keep logs in this directory")
    ap.add_argument("--store-url", help="run on this Redis (e.g. redis+cluster://h:p,h:p?prefix=mn1:; no restart) "
                                        "instead of a redis-server of its own")
    a = ap.parse_args()
    def go(workdir: Path) -> dict[str, Any]:
        return run(a.nodes, a.agents, a.leads, a.speed, a.duration, a.kill_at, a.restart_at, a.redis_down,
                   a.lease_ttl, a.strategy, workdir, a.store_url)

    if a.keep:
        Path(a.keep).mkdir(parents=True, exist_ok=True)
        result = go(Path(a.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="marcador-multinode-") as tmp:
            result = go(Path(tmp))
    report(result, a.json, table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
