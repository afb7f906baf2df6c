"""Lead CSV parse throughput: rows/s and peak memory growth of `dialer.leads.iter_csv_leads` on a generated file.

The file (written to a temporary directory first, so generating it is not timed) mixes US, CO, MX, ES and GB
debtors, national and international spellings, a second number on a third of the rows, a time zone given on
one row in ten, custom fields, and about 2% bad rows (invalid number, bad amount). Parsing streams the file.

    python bench/import_leads.py [--rows 200000] [--seed 7] [--json]
"""

from __future__ import annotations

import csv
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import phonenumbers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import parser, report
from dialer.leads import ParseReport, iter_csv_leads

HEADER = ["lead_id", "phone", "country", "timezone", "amount_due", "days_past_due", "segment", "phone2",
          "account", "product"]
US_AREAS = ("212", "415", "312", "305", "713", "206", "617", "404")
ZONES = {"US": "America/New_York", "CO": "America/Bogota", "MX": "America/Mexico_City", "ES": "Europe/Madrid",
         "GB": "Europe/London"}


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def _number(rng: np.random.Generator, country: str) -> str:
    """A valid number of `country`, in one of the spellings people export (drawn again until valid)."""
    while True:
        raw = _spelling(rng, country)
        if phonenumbers.is_valid_number(phonenumbers.parse(raw, country)):
            return raw


def _spelling(rng: np.random.Generator, country: str) -> str:
    k = int(rng.integers(0, 4))
    if country == "US":
        nat = f"{US_AREAS[int(rng.integers(len(US_AREAS)))]}{int(rng.integers(200, 999))}{_digits(rng, 4)}"
        return (f"({nat[:3]}) {nat[3:6]}-{nat[6:]}", nat, f"+1{nat}", f"1-{nat[:3]}-{nat[3:6]}-{nat[6:]}")[k]
    if country == "CO":
        nat = f"3{int(rng.integers(0, 3))}{_digits(rng, 8)}" if k < 3 else f"601{_digits(rng, 7)}"
        return f"+57 {nat}" if k == 1 else nat
    if country == "MX":
        nat = f"{('55', '33', '81')[k % 3]}{_digits(rng, 8)}"
        return f"+52{nat}" if k == 3 else f"{nat[:2]} {nat[2:6]} {nat[6:]}"
    if country == "ES":
        nat = f"91{_digits(rng, 7)}" if k < 2 else f"6{int(rng.integers(0, 5))}{_digits(rng, 7)}"
        return f"+34{nat}" if k == 0 else nat
    nat = f"20{int(rng.integers(3, 9))}{_digits(rng, 7)}" if k < 2 else f"7911{_digits(rng, 6)}"
    return f"+44{nat}" if k == 0 else f"0{nat}"


def write_file(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    countries = list(ZONES)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(rows):
            c = countries[int(rng.integers(len(countries)))]
            phone = _number(rng, c)
            amount = f"{rng.uniform(10, 5000):.2f}"
            bad = rng.random()
            if bad < 0.01:
                phone = "12345"  # not a number anywhere
            elif bad < 0.02:
                amount = "1.234,56"
            w.writerow([f"L{i:08d}", phone, c, ZONES[c] if rng.random() < 0.1 else "", amount,
                        int(rng.integers(0, 720)), ("early", "mid", "late")[i % 3],
                        _number(rng, c) if rng.random() < 0.33 else "", f"ACC-{i}", "card"])


def run(rows: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="marcador-bench-leads-") as tmp:
        path = Path(tmp) / "leads.csv"
        write_file(path, rows, seed)
        rep = ParseReport()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started, cpu0 = time.perf_counter(), time.process_time()
        with path.open(newline="") as f:
            n = sum(1 for _ in iter_csv_leads(f, "bench", rep))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert n == rep.accepted
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "rss_growth_mb": round((rss1 - rss0) / 1024, 1),
            # CPU time too: on a shared machine the wall clock also counts other people's work.
            "cpu_seconds": round(cpu, 3), "rows_per_cpu_s": round(rows / cpu), "accepted": rep.accepted,
            "rejected_rows": len({i.row for i in rep.rejected}), "held": len(rep.held)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    result = run(args.rows, args.seed)
    report(result, args.json, lambda r: (
        f"import_leads: {r['rows_per_s']} rows/s, {r['rows_per_cpu_s']} per CPU second ({r['rows']} rows in "
        f"{r['seconds']} s; accepted {r['accepted']}, "
        f"rejected {r['rejected_rows']}, held {r['held']}); peak RSS growth {r['rss_growth_mb']} MB"))


if __name__ == "__main__":
    main()
