"""A node's webhook outbox in the store: every event its senders queue is written there before it goes out and
forgotten once delivered or kept, so the events of a node killed outright (kill -9, a machine lost) are not lost
with its memory. Whatever a node leaves in its outbox becomes kept events (`Store.outbox_claim`) and is redelivered:
by the node itself when it starts again under the same id, else by another node once the gone node's heartbeat is
older than the lease TTL.

One writer task batches the writes (`Store.outbox_write`), each after waiting `LINGER_S` for more: an event
delivered before its write went out is never written at all, and the writes wait, in order, while the store is
down; the senders never wait for them. Before its
first write the writer claims what an earlier run under this node's id left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from dialer.ports import FailedWebhook, OutboxEntry, Store

log = logging.getLogger("marcador.api.webhooks")

Key = tuple[str, str]  # (hook label, delivery id)
# A write waits this long for more: most events reach a healthy endpoint within it and are then never written
# (a write per event cost a third of a sender's throughput), while one queued behind a slow or down endpoint is.
LINGER_S = 0.05


class StoreRetry:
    """The pause before a store write is tried again: 0.1 s, doubling up to 5 s; back to 0.1 s after a success."""

    def __init__(self) -> None:
        self.pause_s = 0.1

    async def after(self, exc: Exception, what: str, waiting: int) -> None:
        """Say the write of `what` failed (the store is down) and pause before it is tried again."""
        log.warning(f"{what} cannot be written now (store error), retrying",
                    extra={"fields": {"why": type(exc).__name__, "waiting": waiting}})
        await asyncio.sleep(self.pause_s)
        self.pause_s = min(5.0, self.pause_s * 2)

    def reset(self) -> None:
        self.pause_s = 0.1


class Outbox:
    def __init__(self, store: Store, cap: int, clock: Callable[[], float],
                 taken: Callable[[str, Sequence[FailedWebhook]], None], linger_s: float = LINGER_S) -> None:
        self.store = store
        self.linger_s = linger_s
        self.cap = cap  # api.webhooks_kept_max: what a claim may keep
        self._clock = clock
        self._taken = taken  # called with the rows of a claim (whose node, the rows), to redeliver them
        self._order = 0
        self._puts: dict[Key, OutboxEntry] = {}  # not yet written
        self._dones: set[Key] = set()  # written, to forget
        self._writing: dict[Key, OutboxEntry] = {}  # in the write now in progress
        self._busy = False  # a write is in progress (it may hold dones alone)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._claimed_own = False

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook outbox")

    def put(self, hook: str, kind: str, delivery: str, body: bytes) -> None:
        """An event queued on a sender. Never blocks."""
        if self._closed:
            return
        self._order += 1
        self._puts[(hook, delivery)] = OutboxEntry(hook, kind, delivery, body.decode(), self._order)
        self._poke()

    def done(self, hook: str, delivery: str) -> None:
        """An event delivered, or kept in the store: its outbox entry can go. Never blocks."""
        key = (hook, delivery)
        if self._puts.pop(key, None) is None:  # not written yet: then it never is
            self._dones.add(key)
            self._poke()

    def _poke(self) -> None:
        self.start()
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._puts) + len(self._dones) + len(self._writing) + self._busy

    async def _claim_own(self) -> None:
        rows, dropped = await self.store.outbox_claim(None, "node restarted", self._clock(), self.cap)
        self._claimed_own = True
        if rows or dropped:
            log.warning("webhook events an earlier run of this node left unsent: kept, redelivered",
                        extra={"fields": {"events": len(rows), "dropped_for_cap": dropped}})
        if rows:
            self._taken("", rows)

    async def _run(self) -> None:
        retry = StoreRetry()
        while not self._closed:  # as well as cancelled: a cancel that lands inside a Redis command may be lost there
            if self._claimed_own and not self._puts and not self._dones:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._busy = True
            dones: list[Key] = []
            failed: Exception | None = None
            try:
                if not self._claimed_own:
                    await self._claim_own()
                    continue
                if self.linger_s > 0 and not self._closed:
                    await asyncio.sleep(self.linger_s)
                puts = self._writing = self._puts
                self._puts = {}
                # A done for an entry being written now waits for the next write: it must land after the put.
                dones = [k for k in self._dones if k not in puts]
                self._dones.difference_update(dones)
                await self.store.outbox_write(list(puts.values()), dones)
                self._writing = {}
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: the same writes again, later, ahead of newer ones
                if self._claimed_own:
                    # Part of the write may have landed: a done stays owed (forgetting a missing entry is harmless).
                    self._puts = {k: e for k, e in self._writing.items() if k not in self._dones} | self._puts
                    self._dones.update(dones)
                    self._writing = {}
                failed = exc
            finally:
                self._busy = False
            if failed is not None:
                await retry.after(failed, "webhook outbox", self.backlog)
                continue
            retry.reset()

    async def drain(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self.backlog or (self._task is not None and not self._claimed_own)) and loop.time() < end:
            await asyncio.sleep(0.01)

    async def aclose(self, timeout_s: float) -> None:
        """Write what is owed (up to `timeout_s`), then stop. Entries still in the store then are events this node
        did not deliver nor keep: its next run, or another node, takes them."""
        await self.drain(timeout_s)
        self._closed = True
        if self._task is not None:
            self._wake.set()
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)
            self._task = None
        if self._dones or self._puts:
            # Entries left in the store are taken again by this node's next run or another node: sent twice, with
            # one delivery id. Puts left are events given up that the store did not take either (counted lost).
            log.warning("webhook outbox writes not made at shutdown (store down)", extra={"fields": {
                "to_forget": len(self._dones), "to_add": len(self._puts)}})
        self._puts.clear()
        self._dones.clear()
        self._writing = {}
