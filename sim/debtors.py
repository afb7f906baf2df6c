"""The simulator's debtors and their paperwork: leads from a CSV or made up from a seed, DNC additions and
paid-today removals from CSVs, each timed in simulated time. Leads go through the core's own intake
(`dialer.leads`), so a simulated lead is exactly what an upload would have produced."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import phonenumbers

from dialer.leads import LeadFileError, ParseReport, iter_csv_leads, lead_from_row
from dialer.model import Lead

# Area codes whose zone the number gives away (one zone each), so made-up debtors are not held for their zone.
_AREAS: dict[str, tuple[str, ...]] = {
    "US": ("212", "312", "415", "305", "602", "206", "404", "713"),
    "CO": ("601", "604", "602", "605"),
    "ES": ("91", "93", "96", "95"),
    "MX": ("55", "33", "81", "222"),
    "GB": ("20", "121", "161", "131"),
}


_NSN_DIGITS = {"US": 10, "CO": 10, "ES": 9, "MX": 10, "GB": 10}  # national significant number length


class DebtorFileError(ValueError):
    """A scenario's lead, DNC or removal file that cannot be used; names the file, row and field."""


def generate_leads(campaign_id: str, count: int, countries: list[str], segments: list[str], phones: int,
                   seed: int) -> list[Lead]:
    """`count` debtors spread over `countries` and `segments`, with valid fixed-line numbers in single-zone areas."""
    rng = np.random.default_rng(seed)
    out: list[Lead] = []
    used: set[str] = set()
    for i in range(count):
        country = countries[i % len(countries)]
        areas = _AREAS.get(country)
        if areas is None:
            raise DebtorFileError(f"leads.generator.countries: no made-up numbers for {country!r} "
                                  f"(known: {', '.join(sorted(_AREAS))})")
        numbers: list[str] = []
        while len(numbers) < phones:
            number = _number(country, areas[int(rng.integers(len(areas)))], rng)
            if number not in used:
                used.add(number)
                numbers.append(number)
        row = {"lead_id": f"G{i + 1:07d}", "phone": numbers[0], "country": country, "timezone": "",
               "amount_due": f"{float(rng.gamma(2.0, 400.0)):.2f}", "days_past_due": str(int(rng.integers(1, 180))),
               "segment": segments[int(rng.integers(len(segments)))]}
        for k, extra in enumerate(numbers[1:], start=2):
            row[f"phone{k}"] = extra
        lead, issues, _held = lead_from_row(row, campaign_id, i + 1)
        if lead is None:  # cannot happen with validated numbers; say so loudly rather than drop a debtor
            raise DebtorFileError(f"generated row {i + 1}: {issues}")
        out.append(lead)
    return out


def _number(country: str, area: str, rng: np.random.Generator) -> str:
    region_code = phonenumbers.country_code_for_region(country)
    for _ in range(200):
        length = _NSN_DIGITS[country] - len(area)
        sub = str(int(rng.integers(2, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, length - 1))
        parsed = phonenumbers.parse(f"+{region_code}{area}{sub}")
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    raise DebtorFileError(f"cannot make a valid number for {country} area {area}")


def read_leads(path: Path, campaign_id: str) -> tuple[list[Lead], ParseReport]:
    report = ParseReport()
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            leads = list(iter_csv_leads(fh, campaign_id, report))
    except OSError as exc:
        raise DebtorFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DebtorFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except LeadFileError as exc:  # the header: the core's message, with the file it is about
        raise DebtorFileError(f"{path}: {exc}") from None
    return leads, report


@dataclass(frozen=True, slots=True)
class Timed:
    """One row of a timed file: `key` (a number or a lead id) from `at` (epoch seconds)."""

    key: str
    at: float


def read_timed(path: Path, key: str, when: str) -> list[Timed]:
    """CSV with columns `key,when` (when: ISO 8601 with offset). Errors name the file, row and field."""
    try:
        return list(_timed_rows(path, key, when))
    except UnicodeDecodeError as exc:
        raise DebtorFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _timed_rows(path: Path, key: str, when: str) -> Iterator[Timed]:
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DebtorFileError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (key, when) if c not in (reader.fieldnames or [])]
        if missing:
            raise DebtorFileError(f"{path}: missing column(s) {', '.join(missing)}")
        for row_no, row in enumerate(reader, start=1):
            value = (row.get(key) or "").strip()
            if not value:
                raise DebtorFileError(f"{path}: row {row_no}: {key}: required")
            try:
                at = datetime.fromisoformat((row.get(when) or "").strip())
            except ValueError:
                raise DebtorFileError(f"{path}: row {row_no}: {when}: not an ISO date-time") from None
            if at.tzinfo is None:
                raise DebtorFileError(f"{path}: row {row_no}: {when}: give the offset")
            yield Timed(value, at.timestamp())
