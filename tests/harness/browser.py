"""Headless Chromium driven over the Chrome DevTools Protocol, with nothing but the standard library (+ httpx).

`Chromium` starts Debian's `chromium` (`--headless=new --remote-debugging-port=0`) and reads the DevTools port
from its stderr. `Page` is one tab over its own websocket: navigate, evaluate JavaScript, wait for a condition,
click like a mouse (Input.dispatchMouseEvent at the element's centre), capture a PNG. The websocket client is a
minimal RFC 6455 one (text frames, masking, ping/pong, fragmentation): enough for CDP, no dependency.
Without chromium the tests skip locally; with CI=true they fail, never skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.harness.services import unavailable

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    """$CHROMIUM if set, else the first browser binary on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless browser process with a throw-away profile; `port` is its DevTools HTTP/websocket port."""

    def __init__(self, binary: str, width: int = 1280, height: int = 1000) -> None:
        self.binary = binary
        self.size = (width, height)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: deque[str] = deque(maxlen=200)  # stderr tail, for failure messages
        self._profile = tempfile.TemporaryDirectory(prefix="marcador-chromium-")

    def start(self, timeout: float = 30.0) -> None:
        args = [self.binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={self._profile.name}",
                "--remote-debugging-address=127.0.0.1", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
                f"--window-size={self.size[0]},{self.size[1]}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI containers)
        # Its own process group: the helpers it forks (crashpad, zygote) are stopped with it.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        found: list[str] = []
        ready = threading.Event()

        def drain() -> None:  # keep reading stderr all along: a full pipe would stall the browser
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = _LISTENING.search(line)
                if m and not found:
                    found.append(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=drain, name="chromium-stderr", daemon=True).start()
        if not ready.wait(timeout) or not found:
            self.stop()
            raise RuntimeError("chromium did not report its DevTools port:\n" + "\n".join(self.log))
        port = urlsplit(found[0]).port
        assert port is not None
        self.port = port

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(5)
            # A helper that outlived the browser still wrote to the profile while it was removed: "Directory not
            # empty" failed a test's teardown once. Stop them all, then remove it (a few tries).
            self._signal_group(signal.SIGKILL)
        self.proc = None
        for attempt in range(5):
            try:
                self._profile.cleanup()
                return
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(0.2)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[Page]:
        """A new tab, closed on exit."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as http:
            r = await http.put("/json/new?about:blank")
            r.raise_for_status()
            target = r.json()
            page = Page(await WebSocket.connect(target["webSocketDebuggerUrl"]))
            try:
                await page.start()
                yield page
            finally:
                await page.close()
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(f"/json/close/{target['id']}")


@contextlib.contextmanager
def chromium_or_skip() -> Iterator[Chromium]:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (Debian: apt-get install chromium; `make test` installs it)",
                    "headless Chromium")
    assert binary is not None
    browser = Chromium(binary)
    try:
        browser.start()
    except (OSError, RuntimeError) as exc:
        unavailable(f"chromium did not start: {exc}", "headless Chromium")
    try:
        yield browser
    finally:
        browser.stop()


# ---------------------------------------------------------------------------------------------- websocket


class WebSocket:
    """Client side of RFC 6455 over asyncio streams: text messages in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> WebSocket:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        if not head.startswith("HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(f"websocket upgrade refused: {head.splitlines()[0]!r}")
        return cls(reader, writer)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)  # a client must mask every frame
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def send(self, text: str) -> None:
        await self._send_frame(0x1, text.encode())

    async def recv(self) -> str | None:
        """The next text message; None once the server closed."""
        parts: list[bytes] = []
        while True:
            b0, b1 = await self.reader.readexactly(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
            data = await self.reader.readexactly(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                await self._send_frame(0xA, data)
                continue
            if opcode == 0xA:
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode()

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self._send_frame(0x8, struct.pack("!H", 1000))
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


# ---------------------------------------------------------------------------------------------- one tab


class CdpError(Exception):
    pass


class Page:
    """One tab: CDP commands by id; events kept (JavaScript exceptions and console errors, for assertions)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []  # uncaught exceptions and console.error in the page
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _read(self) -> None:
        try:
            while (text := await self.ws.recv()) is not None:
                msg = json.loads(text)
                if "id" in msg:
                    fut = self._waiting.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("method") == "Runtime.exceptionThrown":
                    details = msg["params"]["exceptionDetails"]
                    self.errors.append(str(details.get("exception", {}).get("description") or details.get("text")))
                elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"].get("type") == "error":
                    self.errors.append(" ".join(str(a.get("value", a.get("description")))
                                                for a in msg["params"].get("args", [])))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(CdpError("DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        await self.ws.send(json.dumps({"id": self._next, "method": method, "params": params or {}}))
        msg = await asyncio.wait_for(fut, timeout)
        if "error" in msg:
            raise CdpError(f"{method}: {msg['error']}")
        result: dict[str, Any] = msg.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in res:
            raise CdpError(f"{expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        """Navigate and wait for the new document to load (a marker on the old one tells them apart)."""
        await self.evaluate("window.__cdpOld = true")
        res = await self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise CdpError(f"navigate {url}: {res['errorText']}")
        await self.wait_for("!window.__cdpOld && document.readyState === 'complete'", timeout)

    async def wait_for(self, expression: str, timeout: float = 15.0, interval: float = 0.1) -> Any:
        """Poll until `expression` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CdpError):  # e.g. the context is being replaced by a navigation
                last = await self.evaluate(expression)
                if last:
                    return last
            await asyncio.sleep(interval)
        raise TimeoutError(f"{expression!r} not true after {timeout} s (last value {last!r}; errors {self.errors})")

    async def text(self, selector: str) -> str:
        return str(await self.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent ?? ''"))

    async def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the centre of the element, scrolled into view."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()")
        if box is None:
            raise CdpError(f"no element matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                         "button": "left" if kind != "mouseMoved" else "none",
                                                         "clickCount": 1 if kind != "mouseMoved" else 0})

    async def screenshot(self, path: Path) -> int:
        """A PNG of the whole page to `path`; its size in bytes."""
        res = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        data = base64.b64decode(res["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.ws.close()
