"""Lead intake (dialer/leads.py): E.164 numbers, time zones derived or held, per-row issues, chunked parsing."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import timezone as pn_timezone
from typer.testing import CliRunner, Result

from dialer.leads import (
    REQUIRED_COLUMNS,
    LeadFileError,
    ParseReport,
    RowIssue,
    iter_csv_batches,
    iter_csv_leads,
    lead_from_row,
    normalise_phone,
    parse_csv_block,
    same_clock_zone,
    zone_for_e164,
    zone_for_number,
)
from dialer.model import Lead
from marcador_cli.import_cmd import ImportFailed, iter_chunks, send_chunk
from marcador_cli.main import app as cli_app

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
    if len(ref_zones) == 1:
        assert zone == ref_zones[0]
    elif zone is not None:  # several zones on one clock: one of them, and they do agree (checked by zoneinfo)
        assert zone in ref_zones
        for when in ("2026-01-15T12:00:00+00:00", "2026-07-15T12:00:00+00:00", "2031-03-30T01:30:00+00:00"):
            t = datetime.fromisoformat(when)
            assert len({t.astimezone(ZoneInfo(z)).utcoffset() for z in ref_zones}) == 1


def test_zones_from_numbers() -> None:
    assert zone_for_number("+576012345678") == ("America/Bogota", ["America/Bogota"])  # Bogotá landline (601)
    assert zone_for_number("+34911234567") == ("Europe/Madrid", ["Europe/Madrid"])  # Madrid landline (91)
    assert zone_for_number("+12125550100")[0] == "America/New_York"
    # South Dakota's 605 spans Mountain and Central time.
    assert zone_for_number("+16055550100") == (None, ["America/Denver", "America/North_Dakota/Center"])
    # Not geographic (a mobile): the whole country's list.
    zone, cands = zone_for_number("+61412345678")
    assert zone is None and len(cands) > 5 and "Australia/Sydney" in cands
    # Several zones that keep one clock are one zone: the one the country names, else the first.
    uk = ["Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey", "Europe/London"]
    assert zone_for_number("+447911123456", "GB") == ("Europe/London", uk)
    assert zone_for_number("+447911123456", "je") == ("Europe/Jersey", uk)
    assert zone_for_number("+447911123456") == ("Europe/Guernsey", uk)
    assert zone_for_number("+393123456789", "IT")[0] == "Europe/Rome"  # Rome or the Vatican
    assert zone_for_number("+4791234567", "NO")[0] == "Europe/Oslo"  # Oslo or Svalbard
    # Different clocks stay unknown: Madrid or the Canaries (an hour behind), Lisbon or the Azores.
    assert zone_for_number("+34612345678", "ES") == (None, ["Atlantic/Canary", "Europe/Madrid"])
    assert zone_for_number("+351912345678", "PT")[0] is None


def test_zone_for_e164_agrees_with_parsing_on_every_region_and_type() -> None:
    # The gates read each dialed number's zone without parsing it again: same answer as phonenumbers' parse on the
    # example number of every region and type, and on neighbours of it (valid or not) as intake would write them.
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for ntype in range(12):
            example = phonenumbers.example_number_for_type(region, ntype)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            spellings = {e164}
            for near in (e164[:-1], e164 + "1", e164[:-2] + "00", e164[:-1] + "7"):
                try:
                    spellings.add(phonenumbers.format_number(phonenumbers.parse(near, None),
                                                             phonenumbers.PhoneNumberFormat.E164))
                except phonenumbers.NumberParseException:
                    pass
            for number in spellings:
                for country in (region, None):
                    try:
                        want: object = zone_for_number(number, country)
                    except ValueError:
                        want = ValueError
                    try:
                        got: object = zone_for_e164(number, country)
                    except ValueError:
                        got = ValueError
                    assert got == want, (number, country)
                    checked += 1
    assert checked > 5000


def test_same_clock_zones() -> None:
    assert same_clock_zone(["Europe/Paris", "Europe/Berlin"]) == "Europe/Paris"
    assert same_clock_zone(["Europe/London", "Europe/Lisbon"]) == "Europe/London"  # WET/WEST, like GMT/BST
    assert same_clock_zone(["America/Phoenix", "America/Denver"]) is None  # no summer time in Arizona
    assert same_clock_zone(["Europe/Madrid", "Atlantic/Canary"]) is None
    # Kyiv and Chisinau share winter and summer offsets but change at different hours on the same days.
    assert same_clock_zone(["Europe/Kyiv", "Europe/Chisinau"]) is None
    assert same_clock_zone([]) is None


# --- rows ----------------------------------------------------------------------------------------------------


def test_sample_file_accepts_holds_and_rejects_by_row_and_field() -> None:
    leads, report = sample()
    assert set(leads) == {"us-1", "gb-1", "co-1", "mx-1", "es-1", "us-2", "bad-phone3", "es-2"}
    assert report.accepted == 8
    assert [(i.row, i.field) for i in report.rejected] == [(7, "phone"), (8, "timezone"), (10, "lead_id")]
    assert report.rejected[2].reason == "duplicate in this upload"
    assert report.warnings == [RowIssue(9, "phone3", "not a valid number for ES")]
    assert leads["bad-phone3"].phones == ("+34912345678", "+34612345678")  # its good phone and phone2
    assert leads["us-1"].phones == ("+12125550100", "+14155550100")  # the first us-1 wins
    assert report.held == [RowIssue(6, "timezone", "ambiguous time zone: 2 candidates (America/Denver, "
                                    "America/North_Dakota/Center); dialed only while the window is open in all; "
                                    "give `timezone`")]
    assert leads["us-2"].timezone is None


def test_sample_file_normalises_every_country_and_keeps_custom_fields() -> None:
    leads, _ = sample()
    assert {k: (v.phone, v.country, v.timezone) for k, v in leads.items() if k not in ("us-2", "bad-phone3")} == {
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


PHONES = "lead_id,phone,phone2,phone3,country,timezone,amount_due,days_past_due,segment"


@pytest.mark.parametrize("bad", ["garbage", "300 12", "123", "+57 1 2", "9" * 21, "+999 300 123 4567"])
def test_a_bad_extra_phone_is_dropped_with_a_warning_and_the_lead_kept(bad: str) -> None:
    """Collections exports carry stale extra columns: the whole row was rejected for a bad phone3, so a debtor
    with a good number was never called. The good numbers are kept in column order and the bad one named."""
    leads, report = parse(f"{PHONES}\nL1,300 123 4567,+573101234567,{bad},CO,,10,1,x\n")
    why = _why_not(bad, "CO")
    assert report.rejected == [] and report.accepted == 1
    assert [(lead.lead_id, lead.phones, lead.timezone) for lead in leads] == [
        ("L1", ("+573001234567", "+573101234567"), "America/Bogota")]
    assert report.warnings == [RowIssue(1, "phone3", why)]  # the words a rejection of that field used


def _why_not(raw: str, country: str) -> str:
    with pytest.raises(ValueError) as err:
        normalise_phone(raw, country)
    return str(err.value)


def test_a_row_with_no_good_phone_is_rejected_naming_each_phone_field() -> None:
    leads, report = parse(f"{PHONES}\nL1,12345,garbage,,US,,10,1,x\nL2,,+12125550100,,US,,10,1,x\n")
    assert leads == [] and report.warnings == []
    assert [(i.row, i.field, i.reason) for i in report.rejected] == [
        (1, "phone", "not a valid number for US"), (1, "phone2", "cannot be parsed (not a phone number)"),
        (2, "phone", "required")]  # an empty `phone` is still missing, whatever phone2 holds


def test_a_premium_rate_phone_is_not_dialed() -> None:
    # A 900 number (0906 in the UK, 803 in Spain) was taken as a debtor's phone: each dial is billed to the caller,
    # by the minute, while it rings out to a recorded service. Dropped as a bad phone, naming why.
    leads, report = parse(f"{PHONES}\nL1,+12125550100,+19002530000,,US,,10,1,x\n"
                          f"L2,+449061234567,,,GB,,10,1,x\nL3,+18005551234,,,US,,10,1,x\n")
    why = "a premium-rate number (the caller pays for each call): not a debtor's phone"
    assert [(lead.lead_id, lead.phones) for lead in leads] == [("L1", ("+12125550100",)), ("L3", ("+18005551234",))]
    assert report.warnings == [RowIssue(1, "phone2", why)]
    assert [(i.row, i.field, i.reason) for i in report.rejected] == [(2, "phone", why)]  # its only phone
    assert normalise_phone("+1 900 253 0000", None) == "+19002530000"  # a DNC entry or a zone lookup still reads it


def test_a_bad_first_phone_beside_a_good_one_is_a_warning_and_the_zone_comes_from_the_good_one() -> None:
    leads, report = parse(f"{PHONES}\nL1,12345,,+12125550100,US,,10,1,x\n")
    assert [(lead.phones, lead.timezone) for lead in leads] == [(("+12125550100",), "America/New_York")]
    assert report.warnings == [RowIssue(1, "phone", "not a valid number for US")] and report.rejected == []


def test_a_bad_extra_phone_in_a_row_rejected_for_another_field_is_named_with_it() -> None:
    leads, report = parse(f"{PHONES}\nL1,+12125550100,,999,US,,ten,1,x\nL1,+12125550100,,+12125550100,US,,1,1,x\n"
                          f"L1,+12125550101,,999,US,,1,1,x\n")
    assert [(lead.lead_id, lead.phones) for lead in leads] == [("L1", ("+12125550100",))]  # a repeat: kept once
    assert [(i.row, i.field) for i in report.rejected] == [(1, "phone3"), (1, "amount_due"), (3, "lead_id")]
    assert report.warnings == []  # row 3's phone3 is not reported: the row was refused (a repeated lead id)


def test_block_parsing_carries_each_rows_warnings() -> None:
    good, rejected, count = parse_csv_block(f"{PHONES}\nL1,+12125550100,,999,US,,1,1,x\n"
                                            f"L2,+12125550101,,,US,,1,1,x\n", "camp")
    assert (rejected, count) == ([], 2)
    assert [(row, lead.lead_id, held, warnings) for row, lead, held, warnings in good] == [
        (0, "L1", None, (RowIssue(0, "phone3", "not a valid number for US"),)), (1, "L2", None, ())]


@pytest.mark.parametrize(("cell", "field", "ok"), [
    ("x" * 64, "lead_id", True), ("x" * 65, "lead_id", False), ("a.b-c_D9", "lead_id", True), ("", "lead_id", False),
    ("12.50", "amount_due", True), ("1,234.56", "amount_due", False), ("1.234,56", "amount_due", False),
    ("nan", "amount_due", False), ("$5", "amount_due", False), ("", "amount_due", True),
    ("0", "days_past_due", True), ("-1", "days_past_due", False), ("", "days_past_due", True),
    ("co", "country", True), ("COL", "country", False), ("", "country", False),
    ("UTC", "timezone", False), ("America/Bogota", "timezone", True), ("Bogota", "timezone", False),
    ("Etc/GMT-5", "timezone", False), ("etc/gmt+5", "timezone", False), ("Etc/UTC", "timezone", False),
    ("US/Eastern", "timezone", True),
])
def test_field_rules(cell: str, field: str, ok: bool) -> None:
    row = {"lead_id": "L1", "phone": "+573001234567", "country": "CO", "timezone": "", "amount_due": "1",
           "days_past_due": "1", "segment": ""}
    row[field] = cell
    lead, issues, _ = lead_from_row(row, "camp", 4)
    assert (lead is not None) == ok
    assert ok or [(i.row, i.field) for i in issues] == [(4, field)]


def test_subdivision_names_a_region_the_holiday_calendar_knows() -> None:
    row = {"lead_id": "L1", "phone": "+34934123456", "country": "ES", "timezone": "", "amount_due": "1",
           "days_past_due": "1", "segment": ""}
    for cell in ("CT", "ct", "ES-CT"):
        lead, issues, _ = lead_from_row({**row, "subdivision": cell}, "camp", 3)
        assert issues == [] and lead is not None and lead.fields == {"subdivision": "CT"}
    _, issues, _ = lead_from_row({**row, "subdivision": "XX"}, "camp", 3)
    assert [(i.row, i.field) for i in issues] == [(3, "subdivision")] and "CT" in issues[0].reason
    _, issues, _ = lead_from_row({**row, "country": "CO", "phone": "+573001234567", "subdivision": "ANT"}, "camp", 4)
    assert [(i.row, i.field, i.reason) for i in issues] == [
        (4, "subdivision", "the holiday calendar of CO has no subdivisions; leave it empty")]
    lead, issues, _ = lead_from_row({**row, "subdivision": ""}, "camp", 5)
    assert issues == [] and lead is not None and lead.fields == {"subdivision": ""}


def test_mobiles_on_one_clock_are_dialable_and_others_held() -> None:
    row = {"lead_id": "L1", "country": "GB", "amount_due": "1", "days_past_due": "1", "segment": ""}
    lead, issues, held = lead_from_row({**row, "phone": "07911 123456"}, "camp", 1)
    assert issues == [] and held is None and lead is not None and lead.timezone == "Europe/London"
    lead, issues, held = lead_from_row({**row, "phone": "612 345 678", "country": "ES"}, "camp", 2)
    assert lead is not None and lead.timezone is None
    assert held == RowIssue(2, "timezone", "ambiguous time zone: 2 candidates (Atlantic/Canary, Europe/Madrid); "
                                           "dialed only while the window is open in all; give `timezone`")


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
    assert len(report.held) == 1 and report.held[0].reason.startswith("ambiguous time zone: 8 candidates (Australia/")


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


# --- marcador import-leads -----------------------------------------------------------------------------------
# Unit tests of the CLI: the server below is a stand-in written here, on 127.0.0.1 in a thread, that records
# requests and answers per the endpoint's contract (parsing with the real dialer.leads). It is not the API.


class FakeLeadsApi:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.requests: list[dict[str, Any]] = []
        self.fail: dict[int, int] = {}  # first_row → HTTP status to answer
        self.drop: set[int] = set()  # first_row → close the connection without an answer, once
        self.leads: dict[str, Lead] = {}
        self.seen: set[str] = set()
        self.replies: dict[str, bytes] = {}  # idempotency key → the answer given
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                first_row = int(parse_qs(url.query)["first_row"][0])
                api.requests.append({"path": url.path, "first_row": first_row, "headers": dict(self.headers),
                                     "body": body})
                if first_row in api.drop:
                    api.drop.discard(first_row)
                    self.close_connection = True
                    return
                if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._answer(401, b'{"detail": ["bad token"]}')
                if first_row in api.fail:
                    return self._answer(api.fail.pop(first_row), b'{"detail": "store unavailable"}')
                key = self.headers["Idempotency-Key"]
                if key not in api.replies:
                    report = ParseReport()
                    lines = io.StringIO(body.decode(), newline="")
                    for lead in iter_csv_leads(lines, url.path.split("/")[4], report, start_row=first_row,
                                               seen=api.seen):
                        api.leads[lead.lead_id] = lead
                    api.replies[key] = json.dumps({
                        "accepted": report.accepted,
                        "rejected": [dataclasses.asdict(i) for i in report.rejected],
                        "held": [dataclasses.asdict(i) for i in report.held],
                        "warnings": [dataclasses.asdict(i) for i in report.warnings]}).encode()
                self._answer(200, api.replies[key])

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeLeadsApi]:
    api = FakeLeadsApi(token="s3cret")
    yield api
    api.close()


@pytest.fixture
def leads_file(tmp_path: Path) -> Path:
    path = tmp_path / "debtors.csv"
    path.write_bytes(SAMPLE.read_bytes())
    return path


def _cli(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(cli_app, ["import-leads", *args], env=env)


def _rejects(path: Path) -> list[tuple[int, str]]:
    with path.open(newline="") as f:
        return [(int(r["row"]), r["field"]) for r in csv.DictReader(f)]


def test_cli_imports_in_chunks_with_keys_rows_and_token(fake_api: FakeLeadsApi, leads_file: Path) -> None:
    r = _cli([str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--batch", "3"], MARCADOR_TOKEN="s3cret")
    assert r.exit_code == 0, r.output
    assert "accepted 8, rejected 3, held 1, warnings 1" in r.output
    assert "debtors.warnings.csv: row 9 phone3: not a valid number for ES" in r.output
    reqs = fake_api.requests
    assert sorted(q["first_row"] for q in reqs) == [1, 4, 7, 10]  # several in flight: any arrival order
    assert {q["path"] for q in reqs} == {"/api/v1/campaigns/c-1/leads"}
    header = SAMPLE.read_bytes().split(b"\n", 1)[0] + b"\n"
    assert all(q["body"].startswith(header) for q in reqs)
    assert all(q["headers"]["Content-Type"] == "text/csv" for q in reqs)
    assert all(q["headers"]["Authorization"] == "Bearer s3cret" for q in reqs)
    keys = [q["headers"]["Idempotency-Key"] for q in reqs]
    assert sorted(k.rsplit("-", 1)[1] for k in keys) == ["0", "1", "2", "3"]
    assert len({k.rsplit("-", 1)[0] for k in keys}) == 1 and len(keys[0].split("-")[0]) == 64
    # The record with a quoted line break travelled whole, in the last chunk.
    assert fake_api.leads["es-2"].fields["account"] == "ACC-12\nsecond line"
    assert set(fake_api.leads) == {"us-1", "gb-1", "co-1", "mx-1", "es-1", "us-2", "bad-phone3", "es-2"}
    assert _rejects(leads_file.with_name("debtors.rejects.csv")) == [(7, "phone"), (8, "timezone"), (10, "lead_id")]
    assert _rejects(leads_file.with_name("debtors.warnings.csv")) == [(9, "phone3")]
    assert "s3cret" not in r.output


def test_cli_auth_failure_says_status_body_and_row(fake_api: FakeLeadsApi, leads_file: Path) -> None:
    r = _cli([str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "wrong"])
    assert r.exit_code == 1
    assert "HTTP 401" in r.output and "bad token" in r.output
    # nothing landed: no resume advice, the fix named, and an earlier run's lists left as they were
    assert "Nothing was imported; check the token (--token or MARCADOR_TOKEN)" in r.output
    assert "--resume-from" not in r.output


def test_cli_refused_at_once_keeps_an_earlier_runs_lists_and_names_the_fix(fake_api: FakeLeadsApi,
                                                                         leads_file: Path) -> None:
    """A rerun with a bad token or campaign truncated yesterday's rejects and warnings files before it sent
    anything, and advised `--resume-from 1`."""
    rejects, warnings = leads_file.with_name("debtors.rejects.csv"), leads_file.with_name("debtors.warnings.csv")
    r = _cli([str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "s3cret"])
    assert r.exit_code == 0, r.output
    before = rejects.read_bytes(), warnings.read_bytes()
    assert _rejects(rejects) and _rejects(warnings)
    r = _cli([str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "wrong"])
    assert r.exit_code == 1 and (rejects.read_bytes(), warnings.read_bytes()) == before
    fake_api.fail[1] = 404
    r = _cli([str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "s3cret"])
    assert r.exit_code == 1 and "HTTP 404" in r.output
    assert f"Nothing was imported; no campaign 'c-1' at {fake_api.url}" in r.output
    assert (rejects.read_bytes(), warnings.read_bytes()) == before


def test_cli_stops_on_server_error_and_resumes_with_the_same_keys(fake_api: FakeLeadsApi, leads_file: Path,
                                                                   tmp_path: Path) -> None:
    rejects = tmp_path / "out.csv"
    args = [str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "s3cret", "--batch", "4",
            "--rejects", str(rejects), "--parallel", "1"]  # one chunk in flight: the exact request sequence
    fake_api.fail[5] = 503
    r = _cli(args)
    assert r.exit_code == 1
    assert "HTTP 503" in r.output and "store unavailable" in r.output
    assert "rows before it are imported" in r.output and "Resume with: --resume-from 5 --batch 4" in r.output
    assert _rejects(rejects) == []  # rows 1-4 had no rejects; nothing of the failed chunk was written
    first_keys = [q["headers"]["Idempotency-Key"] for q in fake_api.requests]
    r = _cli([*args, "--resume-from", "5"])
    assert r.exit_code == 0, r.output
    assert [q["first_row"] for q in fake_api.requests] == [1, 5, 5, 9]
    assert fake_api.requests[2]["headers"]["Idempotency-Key"] == first_keys[1]  # same chunk, same key
    assert _rejects(rejects) == [(7, "phone"), (8, "timezone"), (10, "lead_id")]
    assert _rejects(leads_file.with_name("debtors.warnings.csv")) == [(9, "phone3")]  # appended on the resume
    assert len(fake_api.leads) == 8
    r = _cli([*args, "--resume-from", "6"])
    assert r.exit_code == 2 and "chunk's first row" in r.output


def test_cli_with_chunks_in_flight_stops_at_the_first_failed_one_and_resumes(
        fake_api: FakeLeadsApi, leads_file: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "out.csv"
    args = [str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "s3cret", "--batch", "4",
            "--rejects", str(rejects), "--parallel", "3"]
    fake_api.fail[5] = 503
    r = _cli(args)
    assert r.exit_code == 1 and "--resume-from 5" in r.output  # a later chunk may have landed: its key replays
    r = _cli([*args, "--resume-from", "5"])
    assert r.exit_code == 0, r.output
    got = _rejects(rejects)
    # Chunks in flight land in any order, so which copy of the repeated id counts as the duplicate depends on
    # arrival (the fake server, like a store, keeps the first it sees); the other rejects are fixed.
    assert [x for x in got if x[1] != "lead_id"] == [(7, "phone"), (8, "timezone")]
    assert len([x for x in got if x[1] == "lead_id"]) == 1
    assert len(fake_api.leads) == 8


def test_cli_retries_a_dropped_connection_with_the_same_key(fake_api: FakeLeadsApi, leads_file: Path) -> None:
    fake_api.drop.add(7)
    r = _cli([str(leads_file), "--campaign", "c-1", "--api", fake_api.url, "--token", "s3cret", "--batch", "6"])
    assert r.exit_code == 0, r.output
    assert sorted(q["first_row"] for q in fake_api.requests) == [1, 7, 7]  # in flight together: any order
    again = [q["headers"]["Idempotency-Key"] for q in fake_api.requests if q["first_row"] == 7]
    assert again[0] == again[1]
    assert "accepted 8, rejected 3, held 1" in r.output


def test_network_failure_gives_up_after_the_retries(leads_file: Path, tmp_path: Path) -> None:
    api = FakeLeadsApi()
    url = api.url
    api.close()  # nothing listens there any more
    slept: list[float] = []
    with pytest.raises(ImportFailed, match="network failure after 4 tries") as err:
        with httpx.Client(base_url=url) as client:
            chunk = next(iter_chunks(leads_file.open("rb"), 5))
            send_chunk(client, "/api/v1/campaigns/c/leads", chunk, "k", sleep=slept.append)
    assert err.value.next_row == 1 and slept == [0.5, 1.0, 2.0]


def test_cli_bad_header_fails_before_sending(fake_api: FakeLeadsApi, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("lead_id,phone,country\nL1,+34911234567,ES\n")
    r = _cli([str(path), "--campaign", "c-1", "--api", fake_api.url])
    assert r.exit_code == 1 and "missing required columns: timezone" in r.output
    assert fake_api.requests == []


@settings(max_examples=80, deadline=None)
@given(cells=st.lists(st.lists(st.text(alphabet='ab,"\n\r ñ', max_size=6), min_size=2, max_size=2), max_size=25),
       batch=st.integers(1, 7), crlf=st.booleans())
def test_chunks_split_on_records_and_lose_nothing(cells: list[list[str]], batch: int, crlf: bool) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(HEADER.split(","))
    w.writerows(cells)
    data = buf.getvalue().encode()
    header = data.split(b"\n", 1)[0] + b"\n"
    chunks = list(iter_chunks(io.BytesIO(data), batch))
    assert b"".join(c.body[len(header):] for c in chunks) == data[len(header):]
    assert [c.first_row for c in chunks] == list(range(1, len(cells) + 1, batch))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    rows = [r for c in chunks for r in csv.reader(io.StringIO(c.body.decode(), newline=""))]
    one_pass = list(csv.reader(io.StringIO(data.decode(), newline="")))[1:]
    assert [r for r in rows if r != HEADER.split(",")] == one_pass


@pytest.mark.parametrize(("raw", "country"), [
    ("+52 1 55 1234 5678", "MX"), ("+5215512345678", None), ("044 55 1234 5678", "MX"), ("045 55 1234 5678", "MX"),
    ("01 55 1234 5678", "MX"), ("(044) 55-1234-5678", "MX"),
])
def test_mexicos_retired_prefixes_read_as_the_same_line(raw: str, country: str | None) -> None:
    # Old CRM exports keep the mobile "1", "044"/"045" and "01" that Mexico retired in 2019-2020: they were refused.
    assert normalise_phone(raw, country) == "+525512345678"


def test_a_retired_mexican_prefix_is_not_read_into_another_country() -> None:
    with pytest.raises(ValueError, match="not a valid number for CO"):
        normalise_phone("044 55 1234 5678", "CO")


@pytest.mark.parametrize(("field", "value", "says"), [
    ("amount_due", "9" * 400, "under 1,000,000,000,000"),  # was stored as inf
    ("amount_due", 5e12, "under 1,000,000,000,000"),
    ("days_past_due", "1" + "0" * 500, "at most 36,500"),  # was accepted
    ("days_past_due", 36_501, "at most 36,500"),
    ("note", "x" * 4_001, "longer than 4,000 characters"),  # a custom field: was stored whole
])
def test_values_past_any_real_debt_are_refused_naming_the_field(field: str, value: object, says: str) -> None:
    row = {"lead_id": "L1", "phone": "+12125550100", "country": "US", "timezone": "", "amount_due": "10",
           "days_past_due": "5", "segment": "a", field: value}
    lead, issues, _ = lead_from_row(row, "c", 7)
    assert lead is None and [(i.row, i.field) for i in issues] == [(7, field)] and says in issues[0].reason
    row[field] = {"amount_due": "999999999999.99", "days_past_due": "36500", "note": "x" * 4_000}[field]
    assert lead_from_row(row, "c", 7)[0] is not None
