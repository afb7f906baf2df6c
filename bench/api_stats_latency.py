"""Stats latency under load: GET /api/v1/campaigns/{id}/stats while the engine paces N simulated agents.

Starts the engine as `make run` does (`python -m marcador_cli.main run`: simulated PBX over AMI, in-memory store,
the demo campaign) but with `--agents` agents, `--leads` leads and the PBX at `--speed`, its API on a free
loopback port. Waits until the agents are logged in and calls flow, then one client (this process, httpx,
keep-alive) asks for the demo campaign's stats `--requests` times, one after another, and prints p50/p99.

    python bench/api_stats_latency.py [--agents 200] [--requests 2000] [--speed 10] [--json]
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, report
from tests.harness.services import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_CAMPAIGN = "demo"  # marcador_cli.wiring.DEMO_CAMPAIGN (not imported: the engine runs in its own process)
TARGET_P99_MS = 20.0


@dataclass
class EngineProcess:
    """A `marcador run` child process and its API's base URL."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def engine(env: dict[str, str], startup_s: float = 60.0) -> Iterator[EngineProcess]:
    """Run `marcador run` with MARCADOR_* settings from `env` (the API port is picked here), wait for /healthz,
    and stop it with SIGINT at the end (SIGKILL if it does not stop in 20 s)."""
    port = free_port()
    full = {**os.environ, "MARCADOR_API__HOST": "127.0.0.1", "MARCADOR_API__PORT": str(port),
            "MARCADOR_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **env}
    with tempfile.TemporaryDirectory(prefix="marcador-bench-") as tmp:
        log_path = Path(tmp) / "engine.log"
        log: IO[bytes] = log_path.open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "marcador_cli.main", "run"], cwd=ROOT, env=full,
                                stdout=log, stderr=subprocess.STDOUT)
        eng = EngineProcess(proc, f"http://127.0.0.1:{port}", log_path)
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"engine exited with {proc.returncode}:\n{eng.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{eng.url}/healthz", timeout=1.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"engine API not up after {startup_s:.0f} s:\n{eng.log_tail()}")
                time.sleep(0.1)
            yield eng
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()


def wait_for_calls(client: httpx.Client, agents: int, attempts: int, timeout_s: float) -> dict[str, Any]:
    """Stats once every agent is logged in to the demo campaign and `attempts` calls were placed."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/api/v1/campaigns/{DEMO_CAMPAIGN}/stats")
        if r.status_code == 200:
            stats = r.json()
            logged_in = sum(n for state, n in stats["agents"].items() if state != "offline")
            if logged_in >= agents and stats["attempts"] >= attempts:
                return stats
        time.sleep(0.2)
    raise SystemExit(f"calls did not flow within {timeout_s:.0f} s; last stats: {stats}")


def measure(agents: int, requests: int, speed: float, leads: int, strategy: str, warm_attempts: int) -> dict[str, Any]:
    env = {"MARCADOR_DEMO__AGENTS": str(agents), "MARCADOR_DEMO__LEADS": str(leads),
           "MARCADOR_DEMO__STRATEGY": strategy, "MARCADOR_PBX__SPEED": str(speed)}
    with engine(env) as eng, httpx.Client(base_url=eng.url, timeout=5.0) as client:
        before = wait_for_calls(client, agents, warm_attempts, timeout_s=120.0)
        path = f"/api/v1/campaigns/{DEMO_CAMPAIGN}/stats"
        ms = np.empty(requests)
        started = time.perf_counter()
        for i in range(requests):
            t0 = time.perf_counter()
            r = client.get(path)
            ms[i] = (time.perf_counter() - t0) * 1000.0
            if r.status_code != 200:
                raise SystemExit(f"stats answered {r.status_code}: {r.text[:200]}")
        wall = time.perf_counter() - started
        after = r.json()
    busy = {k: n for k, n in after["agents"].items() if n}
    return {
        "agents": agents, "requests": requests, "speed": speed, "strategy": after["strategy"],
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2), "seconds": round(wall, 2),
        "attempts_during": after["attempts"] - before["attempts"],
        "attempts_per_s": round((after["attempts"] - before["attempts"]) / wall, 1),
        "agents_at_end": busy, "target_p99_ms": TARGET_P99_MS, "ok": float(np.percentile(ms, 99)) <= TARGET_P99_MS,
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--speed", type=float, default=10.0, help="simulated PBX speed factor (ring and talk times)")
    ap.add_argument("--leads", type=int, default=200_000, help="demo leads (enough not to run out)")
    ap.add_argument("--strategy", default="erlang", help="pacing strategy of the demo campaign")
    ap.add_argument("--warm-attempts", type=int, default=500, help="calls placed before measuring starts")
    args = ap.parse_args()
    result = measure(args.agents, args.requests, args.speed, args.leads, args.strategy, args.warm_attempts)
    report(result, args.json, lambda r: (
        f"api_stats_latency: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (max {r['max_ms']}) over {r['requests']} "
        f"stats requests while {r['agents']} agents were paced ({r['strategy']}, PBX x{r['speed']:g}): "
        f"{r['attempts_during']} attempts during ({r['attempts_per_s']}/s); target p99 ≤ {r['target_p99_ms']:g} ms "
        f"{'met' if r['ok'] else 'MISSED'}"))


if __name__ == "__main__":
    main()
