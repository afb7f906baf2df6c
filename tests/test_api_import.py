"""`marcador import-leads` against the real API over HTTP (uvicorn on a free local port)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

from typer.testing import CliRunner

from api.app import create_app
from marcador_cli.import_cmd import _lines, run_import
from marcador_cli.main import app as cli_app
from tests.test_api import HEADER, api_env, make_campaign
from tests.test_api_events import http_server


async def test_a_file_whose_rows_end_with_cr_only_is_imported_row_by_row(tmp_path: Path) -> None:
    """A classic Mac spreadsheet export ends rows with CR alone. The API reads it; the CLI cut the file at LF
    only, saw one header line holding the whole file and stopped with a CSV traceback."""
    rows = [f"L{i},+5730012{i:04d}1,CO,America/Bogota,10,1,x" for i in range(7)]
    rows[4] = "L4,bad,CO,America/Bogota,10,1,x"
    path = tmp_path / "mac.csv"
    path.write_bytes(("\r".join([HEADER, *rows]) + "\r").encode())
    async with api_env() as env, http_server(create_app(env.runtime)) as base:
        await make_campaign(env.api)
        summary = await asyncio.to_thread(run_import, path, "c1", base, None, tmp_path / "rejects.csv", 3)
        assert (summary.rows, summary.chunks, summary.accepted) == (7, 3, 6)
        assert summary.rejected == [(5, "phone", summary.rejected[0][2])]
        assert (await env.store.lead_counts("c1"))["pending"] == 6


def test_line_reader_follows_the_header_line_end_across_blocks() -> None:
    cr_file = b"a\rb\r\nc\nd\r\r\n\"q\rq\"\r"
    lf_file = b"a\r\nb\rc\nd"  # LF or CRLF rows: a lone CR stays inside its row, as it always did
    for size in (1, 2, 3, 7, 1 << 16):
        got = list(_lines(io.BytesIO(cr_file), size))
        assert got == [b"a\r", b"b\r\n", b"c\n", b"d\r", b"\r\n", b"\"q\r", b"q\"\r"], size
        assert list(_lines(io.BytesIO(lf_file), size)) == [b"a\r\n", b"b\rc\n", b"d"], size


async def test_the_same_file_can_be_imported_into_two_campaigns(tmp_path: Path) -> None:
    """Chunk keys were made from the file alone: the second campaign's chunks replayed keys the first had used
    with another campaign's upload, and the engine refused every one (422, a different upload under the key)."""
    path = tmp_path / "debtors.csv"
    path.write_text("\n".join([HEADER, *(f"L{i},+5730012{i:04d}1,CO,America/Bogota,10,1,x" for i in range(5))]) + "\n")
    async with api_env() as env, http_server(create_app(env.runtime)) as base:
        for cid in ("c1", "c2"):
            await make_campaign(env.api, cid)
            summary = await asyncio.to_thread(run_import, path, cid, base, None, tmp_path / f"{cid}.rejects.csv", 2)
            assert summary.accepted == 5, cid
            assert (await env.store.lead_counts(cid))["pending"] == 5
        again = await asyncio.to_thread(run_import, path, "c1", base, None, tmp_path / "again.rejects.csv", 2)
        assert again.accepted == 5 and (await env.store.lead_counts("c1"))["pending"] == 5  # a rerun replays


PHONES = "lead_id,phone,phone2,phone3,country,timezone,amount_due,days_past_due,segment"


def _phones_csv(rows: int, stale: set[int]) -> bytes:
    """Colombian leads with a good phone and phone2; the rows in `stale` (1-based) carry a phone3 that is no number."""
    lines = [PHONES] + [f"L{i},+5730012{i:05d},+5731012{i:05d},{'300 12' if i in stale else ''},CO,,10,1,x"
                        for i in range(1, rows + 1)]
    return ("\n".join(lines) + "\n").encode()


async def test_an_upload_keeps_a_lead_whose_extra_phone_is_bad_and_names_it_in_warnings() -> None:
    """A stale phone3 cost the whole row: the debtor's good numbers were never stored. Now the lead is accepted
    with its good phones and the dropped phone is in `warnings`: the one-thread CSV path, the process-pool path
    (64 KB and more) and JSON answer alike."""
    small, big = _phones_csv(4, {3}), _phones_csv(3000, {3, 2999})
    assert len(small) < 64 * 1024 <= len(big)
    why = "not a valid number for CO"
    async with api_env() as env:
        for cid, body, ctype, want in [
            ("thread", small, "text/csv", [(3, "phone3", why)]),
            ("pooled", big, "text/csv", [(3, "phone3", why), (2999, "phone3", why)]),
            ("json", json.dumps([dict(zip(PHONES.split(","), line.split(","), strict=True))
                                 for line in small.decode().splitlines()[1:]]).encode(), "application/json",
             [(3, "phone3", why)]),
        ]:
            await make_campaign(env.api, cid)
            r = await env.api.post(f"/api/v1/campaigns/{cid}/leads?first_row=1", content=body,
                                   headers={"Content-Type": ctype})
            assert r.status_code == 200, r.text
            got = r.json()
            rows = body.count(b"\n") - 1 if ctype == "text/csv" else 4
            assert (got["accepted"], got["new"], got["rejected"]) == (rows, rows, []), cid
            assert [(w["row"], w["field"], w["reason"]) for w in got["warnings"]] == want, cid
            leads = {lead.lead_id: lead for lead in await env.store.lease_leads(cid, 10_000, time.time())}
            assert leads["L3"].phones == ("+573001200003", "+573101200003"), cid
        r = await env.api.post("/api/v1/campaigns/thread/leads", content=f"{PHONES}\nL9,12,x,300 12,CO,,1,1,x\n",
                               headers={"Content-Type": "text/csv"})
        got = r.json()  # no good phone at all: rejected as before, every phone named
        assert got["accepted"] == 0 and got["warnings"] == []
        assert [(x["row"], x["field"]) for x in got["rejected"]] == [(1, "phone"), (1, "phone2"), (1, "phone3")]


async def test_import_leads_counts_the_lead_accepted_and_reports_its_dropped_phone(tmp_path: Path) -> None:
    """`marcador import-leads` against the engine: the row with a bad phone3 is accepted (it was rejected, and
    written to the rejects file), its warning is in the summary, in the output and in FILE.warnings.csv."""
    path = tmp_path / "debtors.csv"
    path.write_bytes(_phones_csv(7, {5}))
    async with api_env() as env, http_server(create_app(env.runtime)) as base:
        await make_campaign(env.api)
        summary = await asyncio.to_thread(run_import, path, "c1", base, None, tmp_path / "rejects.csv", 3)
        assert (summary.accepted, summary.rejected) == (7, [])
        assert summary.warnings == [(5, "phone3", "not a valid number for CO")]
        await make_campaign(env.api, "c2")
        r = await asyncio.to_thread(CliRunner().invoke, cli_app, ["import-leads", str(path), "--campaign", "c2",
                                                                  "--api", base, "--batch", "3"])
        assert r.exit_code == 0, r.output
        assert "accepted 7, rejected 0, held 0, warnings 1 (7 rows in 3 chunks)" in r.output
        assert "debtors.warnings.csv: row 5 phone3: not a valid number for CO" in r.output
        assert "300 12" not in r.output  # the reason, never the number
        assert (tmp_path / "debtors.warnings.csv").read_text().splitlines() == [
            "row,field,reason", "5,phone3,not a valid number for CO"]
        assert (tmp_path / "debtors.rejects.csv").read_text().splitlines() == ["row,field,reason"]
        assert (await env.store.lead_counts("c2"))["pending"] == 7
