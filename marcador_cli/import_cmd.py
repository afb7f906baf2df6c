"""`marcador import-leads`: send a lead CSV to a running Marcador in chunks, write the rejected rows to a file
and the phones dropped from accepted rows (warnings) to another.

    marcador import-leads FILE.csv --campaign ID [--api http://127.0.0.1:8080] [--token T | env MARCADOR_TOKEN]
                          [--rejects FILE.rejects.csv] [--warnings FILE.warnings.csv] [--batch 5000]
                          [--resume-from ROW]

Each chunk is the header plus up to --batch data rows, POSTed as text/csv to /api/v1/campaigns/{ID}/leads with
`first_row` (so the server numbers rows as in the file) and an Idempotency-Key made from the file's path, size
and mtime, the campaign and the chunk index: a chunk sent twice (a retry after a network failure, a resume) is
applied once.
The file is split on record boundaries, not lines: a quoted field may hold a line break.
"""

from __future__ import annotations

import csv
import hashlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from dialer.leads import LeadFileError, ParseReport, iter_csv_leads

RETRIES = 3  # after the first try, for network failures only
# What an answer that every retry would get again asks the operator to fix.
_FIXES = {
    401: "check the token (--token or MARCADOR_TOKEN)",
    403: "the token's role may not import leads: use an integrator or admin token",
    404: "no campaign {campaign!r} at {api} (check --campaign and --api)",
}
BACKOFF_S = 0.5  # doubled after each failed try


class ImportFailed(Exception):
    """The import stopped; `next_row` is the first data row not known to be imported."""

    def __init__(self, message: str, next_row: int, status: int | None = None) -> None:
        super().__init__(message)
        self.next_row = next_row
        self.status = status  # the HTTP status that stopped it; None: the network or the answer


@dataclass(slots=True)
class ImportSummary:
    rows: int = 0  # data rows sent (blank lines included: they are numbered too)
    chunks: int = 0
    accepted: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    held: list[tuple[int, str, str]] = field(default_factory=list)
    warnings: list[tuple[int, str, str]] = field(default_factory=list)  # phones dropped from accepted rows


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int  # 0-based over the whole file, whatever --resume-from says, so keys match a first run
    first_row: int  # file row number of its first data row (1-based, header not counted)
    rows: int
    body: bytes  # header + rows, bytes as in the file
    read_to: int  # file offset after this chunk (progress)


def file_key(path: Path) -> str:
    """sha256 of path, size and mtime: the same file unchanged gives the same key on a rerun."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


_HEAD_MAX = 1 << 20  # no line end in the first MB: read as LF lines (the header check then says what is wrong)
_LF_LINE = re.compile(rb"[^\n]*\n")
_ANY_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")


def _lines(f: IO[bytes], size: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, ends kept. A file whose header ends with a lone CR (a classic Mac spreadsheet export)
    has its rows end at CR, LF or CRLF, as the server reads them; any other file at LF, as before (iterating a
    binary file cut at LF only: a CR-only file was one line, and the import stopped with a CSV traceback)."""
    data = f.read(size)
    while True:  # up to the header's line end and the byte after it (a CR's LF may be in the next block)
        end = re.search(rb"[\r\n]", data)
        if (end is not None and end.end() < len(data)) or len(data) > _HEAD_MAX or not (more := f.read(size)):
            break
        data += more
    cr_only = end is not None and end.group() == b"\r" and data[end.end():end.end() + 1] != b"\n"
    line = _ANY_LINE if cr_only else _LF_LINE
    while data:
        ends = list(line.finditer(data))
        cut = ends[-1].end() if ends else 0
        if cr_only and cut == len(data) and data.endswith(b"\r"):  # an LF may open the next block
            cut = ends.pop().start()
        for m in ends:
            yield m.group()
        data = data[cut:]
        more = f.read(size)
        if not more:
            break
        data += more
    if data:
        yield data


def _records(f: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """CSV records with the file offset after each. A record ends at a line end outside quotes: with RFC 4180
    quoting ("" inside a quoted field) that is exactly when the record holds an even number of quote bytes.
    Safe on UTF-8 (no multi-byte character contains the byte of `"`)."""
    parts: list[bytes] = []
    quotes = 0
    offset = 0
    for line in _lines(f):
        offset += len(line)
        parts.append(line)
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            yield b"".join(parts), offset
            parts, quotes = [], 0
    if parts:  # unbalanced quote at the end: send it, the server reports the row
        yield b"".join(parts), offset


def _header_hint(header: str) -> str:
    """What to add to a refused header that is one column: the file is separated by semicolons or tabs (Excel
    where the decimal mark is a comma saves "CSV" with semicolons), not commas. As the engine's answer says."""
    if "," not in header:
        for sep, name in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header:
                return f"; the header is separated by {name}: save the file as comma-separated CSV"
    return ""


def iter_chunks(f: IO[bytes], batch: int, resume_from: int = 1) -> Iterator[Chunk]:
    """The file's chunks, each the header plus up to `batch` records, starting at data row `resume_from`
    (which must begin a chunk). Raises LeadFileError on an empty file or a header the parser refuses."""
    if batch < 1:
        raise ValueError("batch must be ≥ 1")
    if (resume_from - 1) % batch:
        raise ValueError(f"--resume-from must be a chunk's first row: 1 + a multiple of --batch ({batch})")
    recs = _records(f)
    try:
        header, read_to = next(recs)
    except StopIteration:
        raise LeadFileError("empty file: a header line is required") from None
    if header.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LeadFileError("the file is UTF-16: save it as CSV UTF-8")
    if not header.endswith((b"\n", b"\r")):
        header += b"\r\n"
    # The server parses the same header; checking it here fails fast, before any chunk is sent.
    text = header.decode("utf-8", errors="replace")
    try:
        for _ in iter_csv_leads([text], "-", ParseReport()):
            pass
    except LeadFileError as exc:
        raise LeadFileError(f"{exc}{_header_hint(text)}") from None
    row = 0
    part: list[bytes] = []
    for rec, read_to in recs:
        row += 1
        if row < resume_from:
            continue
        part.append(rec)
        if len(part) == batch:
            yield Chunk((row - batch) // batch, row - batch + 1, batch, header + b"".join(part), read_to)
            part = []
    if part:
        first = row - len(part) + 1
        yield Chunk((first - 1) // batch, first, len(part), header + b"".join(part), read_to)


def _issues(value: Any, what: str) -> list[tuple[int, str, str]]:
    if not isinstance(value, list):
        raise ValueError(f"`{what}` is not a list")
    return [(int(i["row"]), str(i["field"]), str(i["reason"])) for i in value]


def send_chunk(client: httpx.Client, url: str, chunk: Chunk, key: str, *, retries: int = RETRIES,
               backoff_s: float = BACKOFF_S, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """POST one chunk; network failures are retried with back-off (the idempotency key makes that safe)."""
    headers = {"Content-Type": "text/csv", "Idempotency-Key": f"{key}-{chunk.index}"}
    for attempt in range(retries + 1):
        try:
            resp = client.post(url, content=chunk.body, headers=headers, params={"first_row": chunk.first_row})
            break
        except httpx.TransportError as exc:
            if attempt == retries:
                raise ImportFailed(f"network failure after {retries + 1} tries: {type(exc).__name__}: {exc}",
                                   chunk.first_row) from None
            sleep(backoff_s * 2 ** attempt)
    if resp.status_code >= 400:
        body = resp.text.strip()
        raise ImportFailed(f"HTTP {resp.status_code} {resp.reason_phrase}: {body[:500] or '(empty body)'}",
                           chunk.first_row, resp.status_code)
    try:
        data = resp.json()
        if not isinstance(data, dict) or not isinstance(data.get("accepted"), int):
            raise ValueError("no integer `accepted`")
        for what in ("rejected", "held", "warnings"):  # an engine older than `warnings` does not send it
            data[what] = _issues(data.get(what, []), what)
    except (ValueError, KeyError, TypeError) as exc:
        raise ImportFailed(f"unexpected answer from the server ({exc}): {resp.text[:300]}", chunk.first_row) from None
    return data


def run_import(path: Path, campaign: str, api: str, token: str | None, rejects_path: Path, batch: int,
               resume_from: int = 1, *, console: Console | None = None, backoff_s: float = BACKOFF_S,
               client: httpx.Client | None = None, parallel: int = 2,
               warnings_path: Path | None = None) -> ImportSummary:
    """Stream `path` to the API chunk by chunk; rejected rows go to `rejects_path` and warnings to `warnings_path`
    (default FILE.warnings.csv beside the file) as they come back (both appended when resuming; a fresh import
    opens them when its first answer comes, so one refused at once (a bad token) leaves an earlier run's files
    as they were). Raises ImportFailed (with the row to resume from) or LeadFileError."""
    console = console or Console(stderr=True)
    # The campaign too: the same file may go to two campaigns, and the engine keeps a key with its campaign.
    key = hashlib.sha256(f"{file_key(path)}\0{campaign}".encode()).hexdigest()
    url = f"/api/v1/campaigns/{quote(campaign, safe='')}/leads"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    own = client is None
    http = client or httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=httpx.Timeout(120, connect=10))
    summary = ImportSummary()
    warnings_path = warnings_path or path.with_name(f"{path.stem}.warnings.csv")
    mode = "a" if resume_from > 1 else "w"
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    try:
        with path.open("rb") as f, progress, ExitStack() as files:
            outputs: list[tuple[IO[str], Any]] = []  # (file, its csv writer): rejects, then warnings

            def open_outputs() -> None:
                for out_path in (rejects_path, warnings_path):
                    fh = files.enter_context(out_path.open(mode, newline=""))
                    outputs.append((fh, csv.writer(fh)))
                    if resume_from == 1:
                        outputs[-1][1].writerow(["row", "field", "reason"])

            task = progress.add_task(path.name, total=path.stat().st_size)

            def take(chunk: Any, fut: Future[dict[str, Any]]) -> None:
                data = fut.result()  # in file order: an ImportFailed names the first chunk that did not land
                if not outputs:
                    open_outputs()
                summary.rows += chunk.rows
                summary.chunks += 1
                summary.accepted += data["accepted"]
                summary.rejected += data["rejected"]
                summary.held += data["held"]
                summary.warnings += data["warnings"]
                for (fh, writer), rows in zip(outputs, (data["rejected"], data["warnings"]), strict=True):
                    writer.writerows(rows)
                    fh.flush()  # what came back is on disk even if a later chunk fails
                progress.update(task, completed=chunk.read_to)

            # The next chunk travels while the server parses this one (the engine parses on every core);
            # answers are taken in file order. A resumed import re-sends later chunks: their keys replay.
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                inflight: deque[tuple[Any, Future[dict[str, Any]]]] = deque()
                try:
                    for chunk in iter_chunks(f, batch, resume_from):
                        inflight.append((chunk, pool.submit(send_chunk, http, url, chunk, key, backoff_s=backoff_s)))
                        if len(inflight) >= parallel:
                            take(*inflight.popleft())
                    while inflight:
                        take(*inflight.popleft())
                finally:
                    for _, fut in inflight:
                        fut.cancel()
            if not outputs:  # an empty file: its (empty) lists are still written
                open_outputs()
    finally:
        if own:
            http.close()
    return summary


def import_leads(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="lead CSV (UTF-8)")],
    campaign: Annotated[str, typer.Option("--campaign", help="campaign id")],
    api: Annotated[str, typer.Option("--api", help="Marcador API base URL")] = "http://127.0.0.1:8080",
    token: Annotated[str | None, typer.Option("--token", envvar="MARCADOR_TOKEN", show_default=False,
                                              help="API bearer token (or env MARCADOR_TOKEN)")] = None,
    rejects: Annotated[Path | None, typer.Option("--rejects", help="where rejected rows go",
                                                 show_default="FILE.rejects.csv")] = None,
    warnings: Annotated[Path | None, typer.Option("--warnings", help="where the phones dropped from accepted rows "
                                                  "go", show_default="FILE.warnings.csv")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="data rows per request")] = 5000,
    resume_from: Annotated[int, typer.Option("--resume-from", min=1, help="first data row to send (after a "
                                             "stopped import; same --batch)")] = 1,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=8, help="chunks in flight at once")] = 3,
) -> None:
    """Import leads from a CSV file into a campaign of a running Marcador, in chunks."""
    console = Console(stderr=True, soft_wrap=True)  # messages unwrapped: they get grepped out of logs
    rejects_path = rejects or file.with_name(f"{file.stem}.rejects.csv")
    warnings_path = warnings or file.with_name(f"{file.stem}.warnings.csv")
    try:
        s = run_import(file, campaign, api, token, rejects_path, batch, resume_from, console=console,
                       parallel=parallel, warnings_path=warnings_path)
    except LeadFileError as exc:
        console.print(f"import-leads: {file}: {exc}", style="red", markup=False)
        raise typer.Exit(1) from None
    except ValueError as exc:  # --resume-from not on a chunk boundary
        raise typer.BadParameter(str(exc), param_hint="--resume-from") from None
    except ImportFailed as exc:
        console.print(f"import-leads: {exc}", style="red", markup=False)  # a server body may hold [brackets]
        fix = _FIXES.get(exc.status or 0, "").format(campaign=campaign, api=api)
        if exc.next_row == 1:
            console.print(f"Nothing was imported{'; ' + fix if fix else ''}. Run the same command again once "
                          f"fixed.", markup=False)
        else:
            console.print(f"Stopped at data row {exc.next_row}: rows before it are imported (rejected ones listed "
                          f"in {rejects_path}). {fix + ', then r' if fix else 'R'}esume with: --resume-from "
                          f"{exc.next_row} --batch {batch}", markup=False)
        raise typer.Exit(1) from None
    rejected_rows = len({r for r, _, _ in s.rejected})
    print(f"accepted {s.accepted}, rejected {rejected_rows}, held {len(s.held)}, warnings {len(s.warnings)} "
          f"({s.rows} rows in {s.chunks} chunk{'s' if s.chunks != 1 else ''})")
    if s.rejected:
        print(f"rejected rows: {rejects_path}")
    if s.warnings:
        first = "; ".join(f"row {r} {f}: {why}" for r, f, why in s.warnings[:3]) + ("; ..." if len(s.warnings) > 3
                                                                                   else "")
        print(f"warnings (phones dropped, the leads accepted with their other phones): {warnings_path}: {first}")
    if s.held:
        rows = ", ".join(str(r) for r, _, _ in s.held[:10]) + (", ..." if len(s.held) > 10 else "")
        print(f"held (accepted, not dialed until they get a `timezone`): rows {rows}")
