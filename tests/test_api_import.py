"""`marcador import-leads` against the real API over HTTP (uvicorn on a free local port)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from api.app import create_app
from marcador_cli.import_cmd import _lines, run_import
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
