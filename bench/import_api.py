"""Importing a big lead file through the CLI and the API into a running engine: wall time, the engine's memory
growth, and that a file with bad rows loses none of the good ones.

Writes a CSV of `--rows` debtors (US, CO, MX, ES, GB; E.164 and national spellings; every number drawn from
prefixes phonenumbers accepts) with about 1% bad rows of four kinds (not a number, a comma-decimal amount, an
unknown country, a row with too few fields). Starts the engine (`marcador run`, demo off, in-memory store),
creates a campaign over the API, then times `marcador import-leads FILE --campaign ID --api URL` (a separate
process, 5,000-row chunks). Memory is the engine process's VmRSS from /proc (before, after, and its peak:
VmHWM and a 0.1 s sampler). Then checks: the rows the server rejected are exactly the planted bad rows, and
the campaign holds every good row.

    python bench/import_api.py [--rows 1000000] [--seed 7] [--batch 5000] [--json]
    python bench/import_api.py --profile [--rows 200000]   # where the engine's time and memory go, in-process

`--profile` runs the engine's share of the work in this process on the same kind of file: the CSV parse
(`dialer.leads.iter_csv_leads`) under cProfile, then the parsed leads into an InMemoryStore under tracemalloc
(bytes held per stored lead). The parse is timed once without the profiler.
"""

from __future__ import annotations

import asyncio
import cProfile
import csv
import io
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import phonenumbers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, report
from bench.api_stats_latency import ROOT, engine
from dialer.leads import ParseReport, iter_csv_leads
from dialer.memory_store import InMemoryStore
from dialer.model import CampaignSettings, Lead

CAMPAIGN = "bench-import"
TARGET_S = 60.0
TARGET_MB = 600.0
BAD_FRACTION = 0.01
HEADER = "lead_id,phone,country,timezone,amount_due,days_past_due,segment,account\n"
# National prefixes (the number minus its last four digits) per country, in the spellings exports use; each
# is checked with phonenumbers on three endings before use, so every number drawn from it is valid.
CANDIDATES: dict[str, list[str]] = {
    "US": [f"{a}{e}" for a in ("212", "415", "312", "305", "713", "206", "617", "404") for e in range(201, 990, 37)],
    "CO": [f"3{op}{m:03d}" for op in ("00", "01", "10", "15", "20") for m in range(100, 999, 41)],
    "MX": [f"{a}{m:04d}" for a in ("55", "33", "81") for m in range(1000, 9999, 433)],
    "ES": [f"{p}{m:03d}" for p in ("91", "93", "61", "62", "65") for m in range(100, 999, 47)],
    "GB": [f"7911{m:02d}" for m in range(10, 99, 7)] + [f"20{m:04d}" for m in range(3000, 8999, 617)],
}
CALLING = {"US": "1", "CO": "57", "MX": "52", "ES": "34", "GB": "44"}
NATIONAL_PREFIX = {"GB": "0"}


def valid_prefixes() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for country, prefixes in CANDIDATES.items():
        keep = [p for p in prefixes
                if all(phonenumbers.is_valid_number(phonenumbers.parse(f"+{CALLING[country]}{p}{end}"))
                       for end in ("0000", "5819", "9999"))]
        if len(keep) < 10:
            raise SystemExit(f"import_api: only {len(keep)} valid prefixes for {country}: fix CANDIDATES")
        out[country] = keep
    return out


def write_file(path: Path, rows: int, seed: int) -> set[int]:
    """Write the CSV; returns the data-row numbers (1-based) of the planted bad rows."""
    rng = np.random.default_rng(seed)
    prefixes = valid_prefixes()
    countries = list(prefixes)
    country_of = rng.integers(0, len(countries), rows)
    pick = rng.integers(0, 1 << 30, rows)
    ends = rng.integers(0, 10_000, rows)
    spelling = rng.integers(0, 2, rows)  # 0 E.164, 1 national
    amounts = rng.gamma(2.0, 400.0, rows)
    days = rng.integers(0, 720, rows)
    bad_kind = np.where(rng.random(rows) < BAD_FRACTION, rng.integers(0, 4, rows), -1)
    bad: set[int] = set()
    with path.open("w", newline="") as f:
        f.write(HEADER)
        lines: list[str] = []
        for i in range(rows):
            c = countries[country_of[i]]
            p = prefixes[c]
            nat = f"{p[pick[i] % len(p)]}{ends[i]:04d}"
            phone = f"+{CALLING[c]}{nat}" if spelling[i] == 0 else f"{NATIONAL_PREFIX.get(c, '')}{nat}"
            amount = f"{amounts[i]:.2f}"
            country = c
            kind = int(bad_kind[i])
            if kind >= 0:
                bad.add(i + 1)
            if kind == 0:
                phone = "12345"
            elif kind == 1:
                amount = "1.234,56"
            elif kind == 2:
                country = "ZZ"
            if kind == 3:
                lines.append(f"B{i:08d},{phone}\n")  # too few fields
            else:
                lines.append(f"L{i:08d},{phone},{country},,{amount},{days[i]},s{i % 3},ACC-{i}\n")
            if len(lines) >= 10_000:
                f.write("".join(lines))
                lines = []
        f.write("".join(lines))
    return bad


def vm(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of `pid` in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) / 1024  # kB
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime in clock ticks (USER_HZ 100)


class PeakSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.peak = max(self.peak, vm(self.pid)["VmRSS"])


def run(rows: int, seed: int, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="marcador-bench-import-") as tmp:
        path = Path(tmp) / "leads.csv"
        t0 = time.perf_counter()
        bad = write_file(path, rows, seed)
        gen_s = time.perf_counter() - t0
        rejects = Path(tmp) / "rejects.csv"
        with engine({"MARCADOR_DEMO__ENABLED": "false", "MARCADOR_STORE_URL": "memory://"}) as eng, \
                httpx.Client(base_url=eng.url, timeout=30.0) as api:
            r = api.post("/api/v1/campaigns", json={"campaign_id": CAMPAIGN, "rule_set": "none"})
            if r.status_code != 201:
                raise SystemExit(f"campaign create: {r.status_code} {r.text}")
            before, cpu0 = vm(eng.pid), cpu_s(eng.pid)
            sampler = PeakSampler(eng.pid)
            sampler.start()
            started = time.perf_counter()
            cli = subprocess.run([sys.executable, "-m", "marcador_cli.main", "import-leads", str(path),
                                  "--campaign", CAMPAIGN, "--api", eng.url, "--rejects", str(rejects),
                                  "--batch", str(batch)], cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            sampler.done.set()
            sampler.join()
            after, engine_cpu = vm(eng.pid), cpu_s(eng.pid) - cpu0
            if cli.returncode != 0:
                raise SystemExit(f"import-leads failed ({cli.returncode}):\n{cli.stdout}\n{cli.stderr}")
            stats = api.get(f"/api/v1/campaigns/{CAMPAIGN}/stats").json()
        summary = re.search(r"accepted (\d+), rejected (\d+), held (\d+)", cli.stdout)
        if summary is None:
            raise SystemExit(f"import-leads printed no summary:\n{cli.stdout}")
        accepted, rejected, held = (int(x) for x in summary.groups())
        with rejects.open(newline="") as f:
            rejected_rows = {int(rec["row"]) for rec in csv.DictReader(f)}
    stored = sum(stats["leads"].values())
    good = rows - len(bad)
    peak = max(after["VmHWM"], sampler.peak)
    return {
        "rows": rows, "bad_rows": len(bad), "good_rows": good, "accepted": accepted, "rejected": rejected,
        "held": held, "stored": stored,
        "good_lost": good - stored, "good_rejected": len(rejected_rows - bad), "bad_missed": len(bad - rejected_rows),
        "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
        "engine_cpu_s": round(engine_cpu, 2), "generate_s": round(gen_s, 2),
        "rss_before_mb": round(before["VmRSS"], 1), "rss_after_mb": round(after["VmRSS"], 1),
        "rss_growth_mb": round(after["VmRSS"] - before["VmRSS"], 1), "peak_growth_mb": round(peak - before["VmRSS"], 1),
        "ok": (seconds <= TARGET_S and peak - before["VmRSS"] <= TARGET_MB and accepted == good == stored
               and rejected_rows == bad),
    }


def profile(rows: int, seed: int, top: int = 24) -> dict[str, Any]:
    """The engine's per-row work in-process: parse time by function, then memory per stored lead."""

    async def store_all(path: Path) -> tuple[int, int]:
        store = InMemoryStore()
        await store.save_campaign(CampaignSettings(campaign_id=CAMPAIGN))
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        with path.open(newline="") as f:
            batch: list[Lead] = []
            for lead in iter_csv_leads(f, CAMPAIGN, ParseReport()):
                batch.append(lead)
                if len(batch) >= 5000:
                    await store.add_leads(CAMPAIGN, batch)
                    batch = []
            await store.add_leads(CAMPAIGN, batch)
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return (await store.lead_counts(CAMPAIGN))["pending"], held

    with tempfile.TemporaryDirectory(prefix="marcador-bench-import-") as tmp:
        path = Path(tmp) / "leads.csv"
        write_file(path, rows, seed)
        started = time.perf_counter()  # unprofiled: cProfile's overhead would swamp the figure
        with path.open(newline="") as f:
            parsed = sum(1 for _ in iter_csv_leads(f, CAMPAIGN, ParseReport()))
        parse_s = time.perf_counter() - started
        prof = cProfile.Profile()
        with path.open(newline="") as f:
            prof.enable()
            sum(1 for _ in iter_csv_leads(f, CAMPAIGN, ParseReport()))
            prof.disable()
        stored, held_bytes = asyncio.run(store_all(path))
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    assert parsed == stored
    return {"rows": rows, "parse_s": round(parse_s, 2), "parse_us_per_row": round(parse_s / rows * 1e6, 1),
            "stored": stored, "bytes_per_stored_lead": round(held_bytes / max(1, stored)),
            "mb_per_million": round(held_bytes / max(1, stored) * 1e6 / 2**20), "profile": out.getvalue()}


def table(r: dict[str, Any]) -> str:
    rows = [
        ("rows (bad)", f"{r['rows']:,} ({r['bad_rows']:,})"),
        ("accepted / stored", f"{r['accepted']:,} / {r['stored']:,} (held {r['held']:,})"),
        ("good rows lost", f"{r['good_lost']} (good rejected {r['good_rejected']}, bad missed {r['bad_missed']})"),
        ("wall time", f"{r['seconds']} s ({r['rows_per_s']:,} rows/s; target ≤ {TARGET_S:g} s)"),
        ("engine CPU", f"{r['engine_cpu_s']} s"),
        ("engine RSS", f"{r['rss_before_mb']} → {r['rss_after_mb']} MB (growth {r['rss_growth_mb']} MB, "
                       f"peak growth {r['peak_growth_mb']} MB; target ≤ {TARGET_MB:g} MB)"),
        ("verdict", "met" if r["ok"] else "MISSED"),
    ]
    width = max(len(k) for k, _ in rows)
    return "import_api:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=5000, help="data rows per request (import-leads --batch)")
    ap.add_argument("--profile", action="store_true", help="profile the parse and the store in-process instead")
    args = ap.parse_args()
    if args.profile:
        prof = profile(args.rows, args.seed)
        report(prof, args.json, lambda r: (
            f"{r['profile']}\nimport_api --profile: parse {r['parse_us_per_row']} µs/row ({r['rows']} rows in "
            f"{r['parse_s']} s, unprofiled); stored leads hold {r['bytes_per_stored_lead']} B each "
            f"(≈ {r['mb_per_million']} MB per million)"))
        return
    result = run(args.rows, args.seed, args.batch)
    report(result, args.json, table)


if __name__ == "__main__":
    main()
