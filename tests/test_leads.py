"""Lead intake (dialer/leads.py): E.164 numbers, time zones derived or held, per-row issues, chunked parsing."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import timezone as pn_timezone

from dialer.leads import (
    REQUIRED_COLUMNS,
    LeadFileError,
    ParseReport,
    RowIssue,
    iter_csv_batches,
    iter_csv_leads,
    lead_from_row,
    normalise_phone,
    zone_for_number,
)
from dialer.model import Lead

SAMPLE = Path(__file__).parent / "data" / "leads_sample.csv"
HEADER = "lead_id,phone,country,timezone,amount_due,days_past_due,segment"


def parse(text: str) -> tuple[list[Lead], ParseReport]:
    report = ParseReport()
    leads = list(iter_csv_leads(io.StringIO(text), "camp", report))
    return leads, report


def sample() -> tuple[dict[str, Lead], ParseReport]:
    report = ParseReport()
    with SAMPLE.open(newline="") as f:
        leads = {lead.lead_id: lead for lead in iter_csv_leads(f, "camp", report)}
    return leads, report


# --- numbers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "country", "e164"), [
    ("(212) 555-0100", "US", "+12125550100"),
    ("1-212-555-0100", "US", "+12125550100"),
    ("212.555.0100", "us", "+12125550100"),
    ("+1 415 555 0100", None, "+14155550100"),
    ("020 7946 0018", "GB", "+442079460018"),
    ("07911 123456", "GB", "+447911123456"),
    ("+44 (0)20 7946 0018", "CO", "+442079460018"),  # a + number ignores the row's country
    ("601 234 5678", "CO", "+576012345678"),
    ("300 123 4567", "CO", "+573001234567"),
    ("55 1234 5678", "MX", "+525512345678"),
    ("+52 33 1234 5678", None, "+523312345678"),
    ("91 123 45 67", "ES", "+34911234567"),
    ("612 345 678", "ES", "+34612345678"),
    ("0034 612 345 678", "ES", "+34612345678"),
])
def test_numbers_become_e164(raw: str, country: str | None, e164: str) -> None:
    assert normalise_phone(raw, country) == e164


@pytest.mark.parametrize(("raw", "country", "words"), [
    ("12345", "US", "not a valid number for US"),
    ("555-0100", "US", "not a valid number"),
    ("hello", "US", "cannot be parsed"),
    ("3001234567", None, "needs a country"),
    ("+999 123 456 789", None, "cannot be parsed"),
])
def test_bad_numbers_say_why(raw: str, country: str | None, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        normalise_phone(raw, country)


REGIONS = ("US", "GB", "CO", "MX", "ES", "RU", "AU", "IT", "AR", "DE")
TYPES = (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
         phonenumbers.PhoneNumberType.TOLL_FREE)


@st.composite
def spelled_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A region's example number with its tail redrawn (often still valid, sometimes not), spelled with
    random punctuation, nationally or with +country code."""
    region = draw(st.sampled_from(REGIONS))
    example = phonenumbers.example_number_for_type(region, draw(st.sampled_from(TYPES)))
    nsn = phonenumbers.national_significant_number(example) if example else "2125550100"
    k = draw(st.integers(0, min(5, len(nsn))))
    digits = nsn[:len(nsn) - k] + draw(st.text("0123456789", min_size=k, max_size=k))
    seps = draw(st.lists(st.sampled_from(["", " ", "-", ".", "(", ")"]), min_size=len(digits), max_size=len(digits)))
    raw = "".join(d + s for d, s in zip(digits, seps, strict=True))
    if draw(st.booleans()):
        return f"+{phonenumbers.country_code_for_region(region)} {raw}", region
    prefix = phonenumbers.ndd_prefix_for_region(region, True) or ""
    return (prefix if draw(st.booleans()) else "") + raw, region


@settings(max_examples=400, deadline=None)
@given(spelled_numbers())
def test_same_verdict_as_phonenumbers_validation(spelled: tuple[str, str]) -> None:
    """The shortcuts (punctuation stripped first, number_type for validity, own zone lookup) change nothing:
    same E.164, same validity and same zones as the plain phonenumbers calls."""
    raw, region = spelled
    try:
        ref = phonenumbers.parse(raw, region)
        ref_ok = phonenumbers.is_valid_number(ref)
    except phonenumbers.NumberParseException:
        ref_ok = False
    try:
        got = normalise_phone(raw, region)
    except ValueError:
        assert not ref_ok
        return
    assert ref_ok
    assert got == phonenumbers.format_number(ref, phonenumbers.PhoneNumberFormat.E164)
    zone, cands = zone_for_number(got)
    ref_zones = [z for z in pn_timezone.time_zones_for_number(ref) if z != "Etc/Unknown"]
    assert cands == ref_zones
    assert zone == (ref_zones[0] if len(ref_zones) == 1 else None)


def test_zones_from_numbers() -> None:
    assert zone_for_number("+576012345678") == ("America/Bogota", ["America/Bogota"])  # Bogotá landline (601)
    assert zone_for_number("+34911234567") == ("Europe/Madrid", ["Europe/Madrid"])  # Madrid landline (91)
    assert zone_for_number("+12125550100")[0] == "America/New_York"
    # South Dakota's 605 spans Mountain and Central time.
    assert zone_for_number("+16055550100") == (None, ["America/Denver", "America/North_Dakota/Center"])
    # Not geographic (a mobile): the whole country's list.
    zone, cands = zone_for_number("+61412345678")
    assert zone is None and len(cands) > 5 and "Australia/Sydney" in cands


# --- rows ----------------------------------------------------------------------------------------------------


def test_sample_file_accepts_holds_and_rejects_by_row_and_field() -> None:
    leads, report = sample()
    assert set(leads) == {"us-1", "gb-1", "co-1", "mx-1", "es-1", "us-2", "es-2"}
    assert report.accepted == 7
    assert [(i.row, i.field) for i in report.rejected] == [
        (7, "phone"), (8, "timezone"), (9, "phone3"), (10, "lead_id")]
    assert report.rejected[3].reason == "duplicate in this upload"
    assert leads["us-1"].phones == ("+12125550100", "+14155550100")  # the first us-1 wins
    assert report.held == [RowIssue(6, "timezone", "ambiguous time zone: 2 candidates; give `timezone`")]
    assert leads["us-2"].timezone is None


def test_sample_file_normalises_every_country_and_keeps_custom_fields() -> None:
    leads, _ = sample()
    assert {k: (v.phone, v.country, v.timezone) for k, v in leads.items() if k != "us-2"} == {
        "us-1": ("+12125550100", "US", "America/New_York"),
        "gb-1": ("+442079460018", "GB", "Europe/London"),
        "co-1": ("+576012345678", "CO", "America/Bogota"),
        "mx-1": ("+525512345678", "MX", "America/Mexico_City"),
        "es-1": ("+34911234567", "ES", "Europe/Madrid"),  # from the first number, a Madrid landline
        "es-2": ("+34612345678", "ES", "Europe/Madrid"),  # given (any case), though the mobile is ambiguous
    }
    co = leads["co-1"]
    # phone2..phone5 in order; phone4 repeats phone and is dropped.
    assert co.phones == ("+576012345678", "+573001234567", "+573101234567", "+573151234567")
    assert (co.amount_due, co.days_past_due, co.segment) == (300000.0, 90, "late")
    assert leads["mx-1"].fields == {"account": "ACC-4", "product": "card, gold"}
    assert leads["es-2"].fields["account"] == "ACC-12\nsecond line"  # a quoted line break stays in its field


def test_every_problem_in_a_row_is_named() -> None:
    text = f"{HEADER}\nbad id!,+1212555010,usa,Nowhere/Town,-3,1.5,x\n"
    leads, report = parse(text)
    assert leads == []
    assert {i.field for i in report.rejected} == {"lead_id", "phone", "country", "timezone", "amount_due",
                                                  "days_past_due"}
    assert all(i.row == 1 for i in report.rejected)


@pytest.mark.parametrize(("cell", "field", "ok"), [
    ("x" * 64, "lead_id", True), ("x" * 65, "lead_id", False), ("a.b-c_D9", "lead_id", True), ("", "lead_id", False),
    ("12.50", "amount_due", True), ("1,234.56", "amount_due", False), ("1.234,56", "amount_due", False),
    ("nan", "amount_due", False), ("$5", "amount_due", False), ("", "amount_due", True),
    ("0", "days_past_due", True), ("-1", "days_past_due", False), ("", "days_past_due", True),
    ("co", "country", True), ("COL", "country", False), ("", "country", False),
    ("UTC", "timezone", True), ("America/Bogota", "timezone", True), ("Bogota", "timezone", False),
])
def test_field_rules(cell: str, field: str, ok: bool) -> None:
    row = {"lead_id": "L1", "phone": "+573001234567", "country": "CO", "timezone": "", "amount_due": "1",
           "days_past_due": "1", "segment": ""}
    row[field] = cell
    lead, issues, _ = lead_from_row(row, "camp", 4)
    assert (lead is not None) == ok
    assert ok or [(i.row, i.field) for i in issues] == [(4, field)]


def test_json_values_are_accepted_and_fields_become_strings() -> None:
    lead, issues, held = lead_from_row({"lead_id": 17, "phone": "+525512345678", "country": "mx", "amount_due": 99,
                                        "days_past_due": 3.0, "balance_id": 12345, "vip": True}, "camp", 1)
    assert issues == [] and held is None and lead is not None
    assert (lead.lead_id, lead.amount_due, lead.days_past_due, lead.timezone) == ("17", 99.0, 3,
                                                                                   "America/Mexico_City")
    assert lead.fields == {"balance_id": "12345", "vip": "True"}
    _, issues, _ = lead_from_row({"lead_id": "x", "phone": "+525512345678", "country": "MX", "amount_due": -1.0,
                                  "days_past_due": 2.5}, "camp", 2)
    assert {i.field for i in issues} == {"amount_due", "days_past_due"}


def test_held_lead_with_a_countrywide_list() -> None:
    leads, report = parse(f"{HEADER}\nau,0412 345 678,AU,,1,1,\n")
    assert [lead.timezone for lead in leads] == [None]
    assert len(report.held) == 1 and report.held[0].reason.startswith("ambiguous time zone: 8 candidates")


# --- files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", REQUIRED_COLUMNS)
def test_missing_header_column_is_named(missing: str) -> None:
    header = ",".join(c for c in REQUIRED_COLUMNS if c != missing)
    with pytest.raises(LeadFileError, match=missing):
        parse(f"{header}\n")


def test_header_quirks() -> None:
    leads, _ = parse("\ufeffLEAD_ID, Phone ,country,timezone,amount_due,days_past_due,segment,Notes\n"
                     "a,+34911234567,ES,,1,1,,hi\n")
    assert leads[0].fields == {"Notes": "hi"}
    with pytest.raises(LeadFileError, match="empty"):
        parse("")
    with pytest.raises(LeadFileError, match="duplicated column: phone"):
        parse(HEADER + ",phone\n")


def test_short_and_long_rows_are_rejected_not_shifted() -> None:
    _, report = parse(f"{HEADER}\na,+34911234567,ES,,1,1\nb,+34911234567,ES,,1,1,,extra\nc,+34911234567,ES,,1,1,\n")
    assert [(i.row, i.field) for i in report.rejected] == [(1, "row"), (2, "row")]
    assert report.accepted == 1


def test_streams_without_reading_ahead() -> None:
    def endless() -> Iterator[str]:
        yield HEADER + "\n"
        for i in itertools.count():
            yield f"L{i},+3491123{i % 10000:04d},ES,,1,1,\n"

    first = list(itertools.islice(iter_csv_leads(endless(), "camp", ParseReport()), 3))
    assert [lead.lead_id for lead in first] == ["L0", "L1", "L2"]


def test_batches() -> None:
    rows = "".join(f"L{i},+3491123{i:04d},ES,,1,1,\n" for i in range(12))
    report = ParseReport()
    sizes = [len(b) for b in iter_csv_batches(io.StringIO(HEADER + "\n" + rows), "camp", report, batch=5)]
    assert sizes == [5, 5, 2] and report.accepted == 12


def _records(path: Path) -> tuple[str, list[str]]:
    """Header line and data records as CSV text (a record may span lines)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    out = []
    for r in rows:
        buf = io.StringIO()
        csv.writer(buf).writerow(r) if r else buf.write("\r\n")
        out.append(buf.getvalue())
    return out[0], out[1:]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 100])
def test_chunked_parsing_reports_the_same_rows_as_one_pass(chunk: int) -> None:
    whole_leads, whole = sample()
    header, records = _records(SAMPLE)
    report, seen, leads = ParseReport(), set[str](), list[Lead]()
    for start in range(0, len(records), chunk):
        text = header + "".join(records[start:start + chunk])
        leads += iter_csv_leads(io.StringIO(text), "camp", report, start_row=start + 1, seen=seen)
    assert report == whole
    assert leads == list(whole_leads.values())


# --- no good row lost ----------------------------------------------------------------------------------------

GOOD = [("+12125550100", "US"), ("300 123 4567", "CO"), ("020 7946 0018", "GB"), ("55 1234 5678", "MX"),
        ("91 123 45 67", "ES")]
BAD = [("12345", "US", "phone"), ("+57 3001234567", "XX", "country"), ("91 123 45 67", "ES", "amount_due"),
       ("55 1234 5678", "MX", "timezone"), ("", "CO", "phone")]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=1, max_size=40))
def test_bad_rows_never_cost_good_ones(plan: list[tuple[bool, int]]) -> None:
    lines = [HEADER + ",note"]
    bad_rows = []
    for n, (good, k) in enumerate(plan, 1):
        if good:
            phone, country = GOOD[k]
            lines.append(f'L{n},"{phone}",{country},,10.5,3,s,"good, {n}"')
        else:
            phone, country, field = BAD[k]
            amount = "ten" if field == "amount_due" else "1"
            zone = "Moon/Base" if field == "timezone" else ""
            lines.append(f'L{n},"{phone}",{country},{zone},{amount},3,s,bad')
            bad_rows.append((n, field))
    leads, report = parse("\n".join(lines) + "\n")
    assert report.accepted == len(leads) == sum(good for good, _ in plan)
    assert [(i.row, i.field) for i in report.rejected] == bad_rows
    assert all(lead.fields["note"].startswith("good") for lead in leads)
