"""Lead intake: CSV rows (or JSON objects) to `Lead`s, with per-row issues instead of whole-file failure.

Pure: no I/O besides iterating what it is given (reading the tz database, for a zone name or its country, is a lookup,
not a side effect). Phone numbers go to E.164 with `phonenumbers`, using the row's country as the region for
numbers written without `+`.

Row numbers are 1-based data rows: the header is not counted, a blank line is counted (and skipped) so the
number matches the n-th record after the header. A caller that splits a big file into chunks (each chunk with
its own copy of the header) passes `start_row` = the file row of the chunk's first data row, and the same
`seen` set across chunks so duplicate lead ids are still caught.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import TZPATH, ZoneInfo, available_timezones

import holidays
import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from dialer.model import Lead

REQUIRED_COLUMNS: tuple[str, ...] = ("lead_id", "phone", "country", "timezone", "amount_due", "days_past_due",
                                     "segment")
PHONE_COLUMNS: tuple[str, ...] = ("phone", "phone2", "phone3", "phone4", "phone5")
KNOWN_COLUMNS = frozenset(REQUIRED_COLUMNS + PHONE_COLUMNS)

_LEAD_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DECIMAL = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_INTEGER = re.compile(r"\d+")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_UNKNOWN_ZONE = "Etc/Unknown"  # phonenumbers' marker for "no zone known"
# Parsed numbers kept. Small on purpose: measured on 100k generated rows a 65,536-entry cache held ~30 MB for a
# 1% hit rate (a file scan bigger than the cache evicts every entry before its reuse); what it is for is the
# same number again nearby (phone repeated as phone2, family rows, a small file posted twice).
_CACHE = 4096


class LeadFileError(ValueError):
    """The whole file is unusable (no header, a required column missing)."""


@dataclass(frozen=True, slots=True)
class RowIssue:
    row: int  # 1-based data row (the header is not counted)
    field: str
    reason: str


@dataclass(slots=True)
class ParseReport:
    accepted: int = 0
    rejected: list[RowIssue] = field(default_factory=list)
    held: list[RowIssue] = field(default_factory=list)  # accepted, but not dialable in a window until fixed
    warnings: list[RowIssue] = field(default_factory=list)  # accepted; a bad phone of the row dropped


# --- phone numbers -------------------------------------------------------------------------------------------

PREMIUM_RATE = "a premium-rate number (the caller pays for each call): not a debtor's phone"


@lru_cache(maxsize=_CACHE)
def _parse(raw: str, region: str | None) -> tuple[str, int, int] | str:
    """(E.164, country code, PhoneNumberType) or an error message. Cached: the same number often comes twice
    (phone and phone2, family members, re-uploads)."""
    if not raw.startswith("+") and region is None:
        return "needs a country to read a number without +"
    try:
        num = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        return f"cannot be parsed ({_PARSE_ERRORS.get(exc.error_type, 'not a phone number')})"
    # number_type() is UNKNOWN exactly when is_valid_number() is False (both run the same region and pattern
    # checks); one call instead of two halves the cost of the slowest step, and the type serves the zone lookup.
    ntype = phonenumbers.number_type(num)
    if ntype == PhoneNumberType.UNKNOWN:
        where = f" for {region}" if region and not raw.startswith("+") else ""
        return f"not a valid number{where}"
    e164 = phonenumbers.format_number(num, PhoneNumberFormat.E164)
    cc = num.country_code or 0  # always set after a successful parse
    return e164, cc, ntype


_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


_PUNCT = str.maketrans("", "", " ()-./\t\u00a0")
_PLAIN = re.compile(r"\+?\d{1,20}")


# Mexico's dialing prefixes retired in 2019-2020 (mobile "1" after +52, "044"/"045" before a mobile's ten digits,
# "01" for long distance): old CRM exports still hold them, and the line is the same ten digits.
_MX_OLD = re.compile(r"\+521(\d{10})|(?:044|045|01)(\d{10})")


def _parse_raw(raw: str, region: str | None) -> tuple[str, int, int] | str:
    # Spreadsheet punctuation off first when what is left is plain digits: phonenumbers ignores it anyway, its
    # per-character normalising is a good part of its cost, and "(212) 555-0100" then shares a cache entry with
    # "212-555-0100". Anything else (letters, "ext") goes to phonenumbers as written.
    plain = raw.translate(_PUNCT)
    if not _PLAIN.fullmatch(plain):
        return _parse(raw, region)
    old = _MX_OLD.fullmatch(plain) if plain.startswith("+521") or region == "MX" else None
    if old is not None:
        plain = "+52" + (old.group(1) or old.group(2))
    return _parse(plain, region)


def normalise_phone(raw: str, country: str | None) -> str:
    """`raw` as E.164. `country` (ISO alpha-2) reads numbers written without `+`. ValueError says why not."""
    got = _parse_raw(raw.strip(), country.upper() if country else None)
    if isinstance(got, str):
        raise ValueError(got)
    return got[0]


def _zones(e164_prefix: str, country_code: int, geographic: bool) -> tuple[str, ...]:
    # The same lookups as phonenumbers.timezone.time_zones_for_number, without its second number_type() pass:
    # geographic numbers by their longest known prefix (at most 9 digits after "+"); other numbers (mobiles in
    # most countries, toll-free) get their whole country's list.
    if geographic:
        zones = None
        for n in range(len(e164_prefix) - 1, 0, -1):
            zones = TIMEZONE_DATA.get(e164_prefix[1:1 + n])
            if zones is not None:
                break
    else:
        zones = TIMEZONE_DATA.get(str(country_code))
    return tuple(z for z in zones or () if z != _UNKNOWN_ZONE)


def _zone_of(parsed: tuple[str, int, int], country: str | None = None) -> tuple[str | None, list[str]]:
    e164, cc, ntype = parsed
    cands = _zones(e164[:1 + TIMEZONE_LONGEST_PREFIX], cc, phonenumbers.is_number_type_geographical(ntype, cc))
    if len(cands) == 1:
        return cands[0], list(cands)
    return (same_clock_zone(cands, country) if cands else None), list(cands)


def zone_for_number(e164: str, country: str | None = None) -> tuple[str | None, list[str]]:
    """(the number's IANA zone, all candidates). The zone is the only candidate, or one of several that keep
    the same clock (a UK mobile: London, Jersey, Guernsey, Isle of Man), the one `country` (ISO alpha-2) names
    if any; None when the candidates' clocks differ (a Spanish mobile: Madrid or the Canaries). ValueError if
    the number is invalid."""
    got = _parse(e164.strip(), None)
    if isinstance(got, str):
        raise ValueError(got)
    return _zone_of(got, country.upper() if country else None)


_REGIONS_OF_CODE = phonenumbers.COUNTRY_CODE_TO_REGION_CODE


def _read_e164(e164: str) -> tuple[str, int, int] | str:
    """`_parse` for a number in E.164 as phonenumbers writes it (every number intake accepts), built without
    parsing it again: the same verdict at a tenth of the cost, for the gates that look up every dialed number.
    Other spellings are parsed; a hand-made "+digits" string phonenumbers would rewrite may read as invalid."""
    digits = e164[1:]
    if e164[:1] != "+" or not digits.isdigit() or digits[:1] == "0" or len(digits) > 17:
        return _parse(e164.strip(), None)
    for n in (1, 2, 3):  # country calling codes are prefix-free
        cc = int(digits[:n])
        if cc in _REGIONS_OF_CODE:
            break
    else:
        return _parse(e164, None)
    nsn = digits[n:]
    if not nsn:
        return _parse(e164, None)
    num = phonenumbers.PhoneNumber(country_code=cc, national_number=int(nsn))
    zeros = len(nsn) - len(nsn.lstrip("0"))
    if zeros:  # kept in E.164 (Italy's "06"): phonenumbers holds them as flags beside the integer
        num.italian_leading_zero = True
        if zeros > 1:
            num.number_of_leading_zeros = zeros
    ntype = phonenumbers.number_type(num)
    if ntype == PhoneNumberType.UNKNOWN:
        return "not a valid number"
    return e164, cc, ntype


def zone_for_e164(e164: str, country: str | None = None) -> tuple[str | None, list[str]]:
    """`zone_for_number` for a number in E.164 as intake writes it, about ten times cheaper."""
    got = _read_e164(e164)
    if isinstance(got, str):
        raise ValueError(got)
    return _zone_of(got, country.upper() if country else None)


# --- time zones ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    # Lower-case → canonical, so "america/bogota" from a spreadsheet is accepted as "America/Bogota".
    return {z.lower(): z for z in available_timezones() if "/" in z or z == "UTC"}


def canonical_zone(name: str) -> str | None:
    """The IANA spelling of `name` (case-insensitive), or None if it is not a zone."""
    return _zone_names().get(name.strip().lower())


# Clocks are compared from 2000 to 2040 (as far as the tz database plans): zones that split off before
# 2000 keep the same time for dialing now. Midnight UTC each day finds the days a clock changes; those days are
# compared again every 15 minutes, so changes on the same day at different hours still differ.
_CLOCK_SPAN = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC))


@lru_cache(maxsize=256)
def _clock(name: str) -> tuple[tuple[datetime, ...], tuple[float, ...]]:
    """A zone's UTC offsets (seconds) at 00:00 UTC each day of the span, and at every 15 minutes of the days its
    offset changes: (instants, offsets)."""
    start, end = _CLOCK_SPAN
    days = tuple(start + timedelta(days=i) for i in range((end - start).days))
    offsets = _offsets_at(name, days)
    extra = tuple(days[i - 1] + timedelta(minutes=15 * k)
                  for i in range(1, len(offsets)) if offsets[i] != offsets[i - 1] for k in range(1, 96))
    return days + extra, offsets + _offsets_at(name, extra)


def _offsets_at(name: str, instants: tuple[datetime, ...]) -> tuple[float, ...]:
    tz = ZoneInfo(name)
    return tuple(off.total_seconds() if (off := t.astimezone(tz).utcoffset()) is not None else 0.0
                 for t in instants)


@lru_cache(maxsize=256)
def _same_clock(names: tuple[str, ...]) -> bool:
    """Whether these zones show the same local time at every instant of the span (each zone's change days are
    checked at every 15 minutes in all the others)."""
    quick = tuple(datetime(y, m, 15, tzinfo=UTC) for y in range(2000, 2040) for m in (1, 7))
    first = _offsets_at(names[0], quick)
    if any(_offsets_at(other, quick) != first for other in names[1:]):
        return False  # most lists (a country's mobiles across its zones) differ in winter or summer already
    for name in names:
        instants, offsets = _clock(name)
        if any(_offsets_at(other, instants) != offsets for other in names if other != name):
            return False
    return True


@lru_cache(maxsize=1)
def _zone_countries() -> dict[str, str]:
    """Zone → ISO country from the tz database's zone.tab (empty if this machine has none)."""
    paths = [Path(d) / "zone.tab" for d in TZPATH]
    try:
        paths.append(Path(str(resources.files("tzdata").joinpath("zoneinfo", "zone.tab"))))
    except (ModuleNotFoundError, TypeError):
        pass
    for path in paths:
        if path.is_file():
            rows = (line.split("\t") for line in path.read_text().splitlines() if not line.startswith("#"))
            return {r[2].strip(): r[0] for r in rows if len(r) >= 3}
    return {}


def same_clock_zone(candidates: Iterable[str], country: str | None = None) -> str | None:
    """One zone for several candidates that keep the same clock (the one `country` names in the tz database's
    zone.tab, else the first); None if their clocks differ anywhere in 2000–2040."""
    names = tuple(candidates)
    if not names or not _same_clock(tuple(sorted(names))):
        return None
    if country:
        owners = _zone_countries()
        for name in names:
            if owners.get(name) == country:
                return name
    return names[0]


@lru_cache(maxsize=1)
def _subdivisions() -> dict[str, dict[str, str]]:
    """Country → {upper-case code: code} of the subdivisions whose holidays the `holidays` package knows."""
    return {c: {sub.upper(): sub for sub in subs} for c, subs in holidays.list_supported_countries().items()}


def _subdivision(country: str, raw: str) -> tuple[str | None, str]:
    """(the `subdivision` cell as the holiday calendar spells it: "es-ct" → "CT", None), or (None, why not)."""
    known = _subdivisions().get(country)
    if not known:
        return None, f"the holiday calendar of {country} has no subdivisions; leave it empty"
    text = raw.strip()
    if text.upper().startswith(country + "-"):
        text = text[len(country) + 1:]
    code = known.get(text.upper())
    if code is None:
        return None, f"not a subdivision of {country} (known: {', '.join(sorted(known.values()))})"
    return code, ""


# --- rows ----------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if type(value) is str:  # the CSV case, first
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # JSON 3.0 → "3", as a spreadsheet would show it
    return str(value).strip()


# Past these a value is a slip (a pasted account number, a column shifted), not a debt: "9" × 400 read as inf.
MAX_AMOUNT = 1e12
MAX_DAYS = 36_500
MAX_CUSTOM_CHARS = 4_000  # a custom field's text (notes); a longer one is refused rather than stored per lead


def _amount(value: Any) -> float | str:
    """The amount, or the reason it is not one."""
    if isinstance(value, bool):
        return "not a number"
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return "must be a finite number ≥ 0"
        amount = float(value)
    else:
        text = _text(value)
        if not text:
            return 0.0
        if not _DECIMAL.fullmatch(text):
            # No guessing at "1.234,56" vs "1,234.56": a wrong guess is a debt off by a factor of 1000.
            return "not a decimal ≥ 0 (write 1234.56: no thousands separators, no currency sign)"
        amount = float(text)
    return amount if amount < MAX_AMOUNT else "must be under 1,000,000,000,000"


def _days(value: Any) -> int | str:
    if isinstance(value, bool):
        return "not an integer"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        days = value
        if days < 0:
            return "must be an integer ≥ 0"
    else:
        text = _text(value)
        if not text:
            return 0
        if not _INTEGER.fullmatch(text):
            return "not an integer ≥ 0"
        days = int(text) if len(text) <= 9 else MAX_DAYS + 1  # never parse a 500-digit "integer"
    return days if days <= MAX_DAYS else f"must be at most {MAX_DAYS:,}"


def lead_from_row(row: Mapping[str, Any], campaign_id: str,
                  row_no: int) -> tuple[Lead | None, list[RowIssue], RowIssue | None]:
    """One CSV row or JSON object → (lead or None, issues, held issue).

    Values may be str, int or float (JSON). Every problem in the row is reported, not just the first. Without a
    lead, the issues are why the row is rejected; with one, they are warnings: phones of the row that were not
    numbers, dropped while another phone is good (a stale extra column must not cost the debtor its good number).
    A row with no good phone is rejected naming each bad one. Columns other than the known ones become custom
    fields, as strings."""
    issues: list[RowIssue] = []

    def bad(name: str, reason: str) -> None:
        issues.append(RowIssue(row_no, name, reason))

    lead_id = _text(row.get("lead_id"))
    if not lead_id:
        bad("lead_id", "required")
    elif not _LEAD_ID.fullmatch(lead_id):
        bad("lead_id", "must be 1-64 characters of A-Z a-z 0-9 _ . -")

    country: str | None = _text(row.get("country")).upper()
    if not country:
        bad("country", "required (ISO 3166 alpha-2, e.g. CO)")
        country = None
    elif not _COUNTRY.fullmatch(country) or country not in phonenumbers.SUPPORTED_REGIONS:
        bad("country", "not an ISO 3166 alpha-2 country code")
        country = None

    phones: list[str] = []
    first: tuple[str, int, int] | None = None  # the first good phone: the zone is read from it
    bad_phones: list[RowIssue] = []  # warnings if another phone is good and the row otherwise is; else issues
    for name in PHONE_COLUMNS:
        raw = _text(row.get(name))
        if not raw:
            if name == "phone":
                bad(name, "required")
            continue
        got = _parse_raw(raw, country)
        if isinstance(got, str):
            bad_phones.append(RowIssue(row_no, name, got))
        elif got[2] == PhoneNumberType.PREMIUM_RATE:
            # 900 in the US, 0906 in the UK, 803 in Spain: each dial billed to us by the minute, to a recorded
            # service. Refused as a debtor's phone only (a DNC list or a number's zone still read it).
            bad_phones.append(RowIssue(row_no, name, PREMIUM_RATE))
        elif got[0] not in phones:  # the same number twice in one lead: keep the first
            phones.append(got[0])
            if first is None:
                first = got
    phones_at = len(issues)  # where the bad phones go in a rejection: in column order, as they always did

    zone_raw = _text(row.get("timezone"))
    zone: str | None = None
    if zone_raw:
        zone = canonical_zone(zone_raw)
        if zone is None:
            bad("timezone", "not an IANA time zone (e.g. America/Bogota)")
        elif zone == "UTC" or zone.startswith("Etc/"):
            # "Etc/GMT-5" reads as UTC-5 but is UTC+5 (POSIX signs): a debtor in Bogota would be dialed at night.
            bad("timezone", f"{zone} is a fixed UTC offset, not a place: it ignores daylight saving and Etc/GMT-5 "
                            "is UTC+5; give the debtor's zone (e.g. America/Bogota)")
            zone = None

    subdivision = _text(row.get("subdivision"))
    if subdivision and country:
        code, why = _subdivision(country, subdivision)
        if code is None:
            bad("subdivision", why)
        else:
            subdivision = code

    amount = _amount(row.get("amount_due"))
    if isinstance(amount, str):
        bad("amount_due", amount)
    days = _days(row.get("days_past_due"))
    if isinstance(days, str):
        bad("days_past_due", days)

    named = {issue.field for issue in issues}
    named.update(issue.field for issue in bad_phones)
    for key, value in row.items():
        if not isinstance(value, str) or key in named:
            continue  # a field already refused is named once
        if "\ufffd" in value:  # what the upload's UTF-8 decoder puts for bytes it cannot read
            bad(str(key), "holds bytes that are not UTF-8 text (a file saved as Latin-1 or Windows-1252, or a NUL): "
                          "save the file as UTF-8")
        elif key not in KNOWN_COLUMNS and len(value) > MAX_CUSTOM_CHARS:
            bad(str(key), f"longer than {MAX_CUSTOM_CHARS:,} characters")

    if issues or not phones:
        issues[phones_at:phones_at] = bad_phones
        return None, issues, None
    assert isinstance(amount, float) and isinstance(days, int) and first is not None

    held: RowIssue | None = None
    if zone is None:
        zone, cands = _zone_of(first, country)
        if zone is None:
            # Flagged, not lost: the gates dial a lead without a zone only while every candidate's window is open.
            held = RowIssue(row_no, "timezone", f"ambiguous time zone: {len(cands)} candidates ({', '.join(cands)}); "
                                                "dialed only while the window is open in all; give `timezone`")

    custom = {k: _text(v) for k, v in row.items() if k not in KNOWN_COLUMNS}
    if subdivision:
        custom["subdivision"] = subdivision  # as the holiday calendar spells it
    # A million leads share a handful of countries, zones and segments: one string each, not one per lead
    # (about 150 bytes a lead).
    lead = Lead(lead_id, campaign_id, tuple(phones), custom, _intern(country), _intern(zone),
                amount, days, _intern(_text(row.get("segment"))) or "")
    return lead, bad_phones, held


def _intern(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


# --- CSV streams ---------------------------------------------------------------------------------------------


def _header(cells: list[str]) -> list[str]:
    names = [c.strip() for c in cells]
    if names:
        names[0] = names[0].removeprefix("\ufeff")  # a spreadsheet's UTF-8 byte-order mark
    # Known columns are matched case-insensitively; custom fields keep their spelling.
    names = [n.lower() if n.lower() in KNOWN_COLUMNS else n for n in names]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise LeadFileError(f"missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
                            f"(header must have {', '.join(REQUIRED_COLUMNS)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LeadFileError(f"duplicated column: {', '.join(dupes)}")
    if "" in names:
        raise LeadFileError(f"column {names.index('') + 1} has no name")
    return names


def iter_csv_leads(lines: Iterable[str], campaign_id: str, report: ParseReport, *, start_row: int = 1,
                   seen: set[str] | None = None) -> Iterator[Lead]:
    """Yield the good leads of a CSV stream (header first); issues go to `report`. Streams: one row at a time.

    `start_row` is the file row number of the first data row (for a chunk of a bigger file, each chunk with
    its own header line); `seen` carries lead ids already accepted in this upload across chunks. A lead id is
    marked seen only once accepted, so a corrected copy of a rejected row later in the file is still taken."""
    reader = csv.reader(lines)
    header = _first_header(reader)
    seen = set() if seen is None else seen
    for row_no, cells in enumerate(reader, start_row):
        got = _csv_row(header, cells, campaign_id, row_no, report.rejected)
        if got is not None and accept(got[0], got[1], row_no, report, seen, got[2]):
            yield got[0]


def accept(lead: Lead, held: RowIssue | None, row_no: int, report: ParseReport, seen: set[str],
           warnings: Iterable[RowIssue] = ()) -> bool:
    """The upload-wide part of a good row: a lead id taken once per upload; counts, held rows and the row's
    warnings reported (a row refused here has its warnings dropped with it)."""
    if lead.lead_id in seen:
        report.rejected.append(RowIssue(row_no, "lead_id", "duplicate in this upload"))
        return False
    seen.add(lead.lead_id)
    report.accepted += 1
    if held is not None:
        report.held.append(held)
    report.warnings.extend(warnings)
    return True


# A good row of a block: (row number in the block, lead, held issue, warnings), all numbered from 0 in the block.
GoodRow = tuple[int, Lead, RowIssue | None, tuple[RowIssue, ...]]


def parse_csv_block(text: str, campaign_id: str) -> tuple[list[GoodRow], list[RowIssue], int]:
    """A header line plus whole records, parsed on its own (for a process pool: big uploads use every core).
    Rows are numbered from 0 within the block; returns (good rows, rejected rows, records read). The caller
    offsets the numbers and applies `accept` in file order."""
    reader = csv.reader(io.StringIO(text))
    header = _first_header(reader)
    good: list[GoodRow] = []
    rejected: list[RowIssue] = []
    count = 0
    for row_no, cells in enumerate(reader):
        count += 1
        got = _csv_row(header, cells, campaign_id, row_no, rejected)
        if got is not None:
            good.append((row_no, *got))
    return good, rejected, count


def _first_header(reader: Iterator[list[str]]) -> list[str]:
    try:
        return _header(next(reader))
    except StopIteration:
        raise LeadFileError("empty file: a header line is required") from None


def _csv_row(header: list[str], cells: list[str], campaign_id: str, row_no: int,
             rejected: list[RowIssue]) -> tuple[Lead, RowIssue | None, tuple[RowIssue, ...]] | None:
    if not cells or (len(cells) == 1 and not cells[0].strip()):
        return None  # blank line: counted, skipped
    if len(cells) != len(header):
        rejected.append(RowIssue(row_no, "row", f"has {len(cells)} fields, the header has {len(header)}"))
        return None
    lead, issues, held = lead_from_row(dict(zip(header, cells, strict=True)), campaign_id, row_no)
    if lead is None:
        rejected.extend(issues)
        return None
    return lead, held, tuple(issues)  # () when no phone was dropped: one shared object, cheap to pickle


def iter_csv_batches(lines: Iterable[str], campaign_id: str, report: ParseReport,
                     batch: int = 5000) -> Iterator[list[Lead]]:
    """`iter_csv_leads` in lists of up to `batch` leads (for bulk writes to the store)."""
    if batch < 1:
        raise ValueError("batch must be ≥ 1")
    part: list[Lead] = []
    for lead in iter_csv_leads(lines, campaign_id, report):
        part.append(lead)
        if len(part) >= batch:
            yield part
            part = []
    if part:
        yield part
