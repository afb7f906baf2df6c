"""Redis store: the `Store` port on `redis.asyncio` for durable, multi-node state.

Several nodes share one Redis (standalone, Sentinel or Cluster). Everything campaign-wide lives here:
leads and their leases, attempts, do-not-call lists, DID use counters, the abandon windows, and the
registry of nodes and their agents.

Semantics are those of `InMemoryStore`; what Redis adds:

- **Leases** are taken by a Lua script (atomic: no lead is ever given to two nodes at once) with a TTL
  and a fencing token. The owner record is (node id, token). A node keeps its leases alive with
  `renew_leases`; `expire_leases` (any node may call it) returns the leads of a node that stopped
  renewing — a dead one — to the hopper at their old place, with their attempt history intact; except a
  lead whose call was still in flight (an attempt without outcome: nobody else can ask the dead node's PBX
  about it): that attempt is written `lost` and the lead waits `lost_hold_s` (default 2 x TTL, set above
  ring timeout + longest talk) before it can be dialed again, never re-dialed while the call could be live.
  A release
  that does not carry the current token (a node that was presumed dead and whose leads went to another)
  is ignored.
- **Hopper**: a sorted set by priority then arrival; leads that may not be dialed yet wait in a second
  sorted set by their next eligible time and join the hopper when due (`add_leads_at`, `release_lead_at`).

Durability — the Redis settings we document, and what they bound:

    appendonly yes
    appendfsync everysec
    maxmemory-policy noeviction     # eviction would silently drop leads and leases

With AOF, Redis writes each change to the kernel before it replies, and fsyncs once a second. So a crash
of the Redis *process* loses nothing it acknowledged; a crash of the *machine* (power, kernel) loses at most
about 1 s of acknowledged writes (up to 2 s if the disk stalls an fsync). `appendfsync always` closes that
window at a large cost in throughput. Replication is asynchronous: a Sentinel/Cluster failover can lose
what the replica had not yet received (`min-replicas-to-write 1` + `min-replicas-max-lag 10` bound it;
`wait_replicas` makes each lease batch wait for replicas, WAIT, before its leads are dialed).
What a lost second means here: a lease may come back (its lead is dialed again later), an attempt record
may lose its last update.

When Redis is down every method raises (redis-py's `ConnectionError`/`TimeoutError`, after a short
reconnect retry); the runtime keeps its writes and retries them. `ping()` returns False instead of raising.

Key layout (prefix `marcador:` by default; `{c:<campaign>}` is the hash tag that keeps one campaign's
keys in one Cluster slot, so the scripts can touch them together):

    <p>campaigns                 zset  campaign id -> order of first save (<p>campaign_seq counts saves)
    <p>{c:<id>}:def              string  CampaignSettings as JSON (an edit: compare-and-set on its text, CAMPAIGN_CAS)
    <p>{c:<id>}:status           string  the status asked (running, paused, stopped; absent: created)
    <p>campaigns:ver             counter moved after every campaign create, edit and status change (nodes poll it)
    <p>{c:<id>}:leads            hash  lead id -> lead JSON (kept after the lead is done: its id stays taken)
    <p>{c:<id>}:hopper           zset  lead id -> -priority·2^40 + arrival
    <p>{c:<id>}:sched            zset  lead id -> next eligible time ; :sched_score hash lead id -> hopper score
    <p>{c:<id>}:leases           zset  lead id -> lease expiry ; :owner hash lead id -> "token score node"
    <p>{c:<id>}:held:<node>      set   lead ids a node holds (for renewal) ; :fence counter of tokens
    <p>{c:<id>}:done             hash  lead id -> last outcome or 'removed'
    <p>{c:<id>}:states           hash  lead id -> hopper state (JSON, `Hopper.handoff_state`) of a lead a node handed
                                       back not final, or its holder's latest (`checkpoint_lead`), given to the next
                                       leaser (and read by an expiry); gone when the lead is done or removed
    <p>{c:<id>}:cbs              hash  lead id -> "<at> <agent id>": a callback asked (API, any node), not applied: for
                                       the lead's next leaser, or its holder (`held_callbacks`, then `clear_callbacks`)
    <p>{c:<id>}:cbs_at           zset  lead id -> at, of those leads waiting in the store (a due one is leased at once)
    <p>{c:<id>}:cbs_node         hash  node id -> JSON [[lead id, at, agent id], ...]: the callbacks its hopper holds
    <p>{c:<id>}:kept             hash  lead id -> dispositions asked for a leased lead by a node that no longer held it
                                       (one JSON `StoredCode` a line), for its holder (`held_dispositions`); applied by
                                       the store if the lead comes back to it first
    <p>{c:<id>}:drops            hash  lead id -> places ("0,2") of phones dropped by such a code while the lead waited
                                       in the store: merged into its state at its next lease
    <p>{c:<id>}:attempts         hash  call id -> attempt JSON (upsert) ; :attempt_order zset ; :attempt_log stream
    <p>{c:<id>}:attempt_dial     zset  call id -> dialed at (pages) ; :attempt_dial_upto the attempt_order score
                                       through which it is complete (older nodes write no index: filled on read)
    <p>{c:<id>}:inflight         hash  lead id -> call id while that call has no outcome
    <p>{c:<id>}:lost             hash  call id -> time its node was found dead (outcome `lost` still to write)
    <p>attempt_campaigns         set   campaigns with attempts (for attempts() of every campaign)
    <p>{c:<id>}:tries[:h:<hour>|:d:<day>]   hash lead id -> attempts (total, per hour, per day)
    <p>debtors:hist              hash  lead id -> {"a","c","x": instants} the compliance caps read, every campaign's
                                 (a debtor is a lead id across campaigns); <p>{c:<id>}:hist, per campaign, is read too
    <p>{c:<id>}:dnc, <p>dnc      sets of numbers (campaign, global)
    <p>{c:<id>}:live, :live_cum  abandon window totals and per-minute snapshots
    <p>did:{<did>}:h:<hour>|:d:<day>   DID use counters
    <p>nodes, <p>nodes_seen      node registry (hash of JSON, zset of last heartbeat)
    <p>{wh}:failed, :failed_ids, :failed_by, :failed_seq, :failed_counts, :failed_tries
                                 webhook events kept after their sender gave them up (redis_scripts.WEBHOOK_KEEP)
    <p>{wh}:outbox:<node>        hash  "<hook>\n<delivery>" -> "<order> <doc>": events a node's senders queued and have
                                       not yet delivered or kept (redis_scripts.OUTBOX_CLAIM) ; <p>{wh}:outboxes set
                                       of the nodes that wrote one
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import socket
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from dialer import redis_scripts as lua
from dialer.hopper import state_with_callback, state_with_dropped
from dialer.model import Attempt, CampaignSettings, CampaignStatus, Lead, Outcome, StoredCode
from dialer.ports import CampaignBusy, CampaignChange, FailedWebhook, OutboxEntry, kind_matches

log = logging.getLogger("marcador.store.redis")

RedisClient = Redis | RedisCluster

PRIORITY_STRIDE = 2**40  # arrivals per campaign fit below this; scores stay exact doubles (< 2^53)
MAX_PRIORITY = 1000
_LEASE_CHUNK = 1000  # leads per script call: keeps each script short and Lua's unpack() within its limits
_ADD_CHUNK = 2000
_INDEX_CHUNK = 5000  # attempts per round when the dial-time index is filled in from older records
_PROMOTE_LIMIT = 1000
_HOUR_TTL_S = 26 * 3600
_DAY_TTL_S = 35 * 86400
_DID_HOUR_TTL_S = 2 * 3600
_DID_DAY_TTL_S = 2 * 86400
_LIVE_KEEP_MINUTES = 31 * 24 * 60  # the 30-day abandon window, plus a day
_UPDATE_TRIES = 50  # compare-and-set rounds of one campaign edit before it gives up (CampaignBusy)


@dataclass(slots=True, frozen=True)
class NodeInfo:
    node_id: str
    seen_at: float
    agents: tuple[str, ...]
    info: dict[str, Any]
    alive: bool


def _num(x: float) -> str:
    """A number as Redis reads it, exactly (repr of a float round-trips; float() also unwraps numpy scalars)."""
    return repr(float(x))


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _outbox_doc(e: OutboxEntry) -> str:
    """A kept event's doc (as `keep_failed_webhook` writes it) without its closing brace and its `r` and `t`."""
    return json.dumps({"h": e.hook, "k": e.kind, "d": e.delivery, "e": e.event}, separators=(",", ":"))[:-1]


def _lead_json(lead: Lead, campaign_id: str) -> str:
    doc: dict[str, Any] = {"p": list(lead.phones)}
    if lead.fields:
        doc["f"] = lead.fields
    if lead.campaign_id != campaign_id:
        doc["c"] = lead.campaign_id
    for key, name in _DEBTOR_KEYS:  # debtor attributes only when set: most keys stay short
        value = getattr(lead, name)
        if value:
            doc[key] = value
    return json.dumps(doc, separators=(",", ":"))


_DEBTOR_KEYS = (("k", "country"), ("z", "timezone"), ("a", "amount_due"), ("d", "days_past_due"), ("s", "segment"))


def _lead_from(lead_id: str, campaign_id: str, raw: str) -> Lead:
    doc = json.loads(raw) if raw else {"p": []}
    return Lead(lead_id, doc.get("c", campaign_id), tuple(doc["p"]), doc.get("f", {}),
                country=doc.get("k"), timezone=doc.get("z"), amount_due=float(doc.get("a", 0.0)),
                days_past_due=int(doc.get("d", 0)), segment=doc.get("s", ""))


_ATTEMPT_FIELDS = frozenset(f.name for f in dataclasses.fields(Attempt))
_CAMPAIGN_FIELDS = frozenset(f.name for f in dataclasses.fields(CampaignSettings))


def _attempt_from(raw: str) -> Attempt:
    doc = {k: v for k, v in json.loads(raw).items() if k in _ATTEMPT_FIELDS}
    if doc.get("outcome") is not None:
        doc["outcome"] = Outcome(doc["outcome"])
    return Attempt(**doc)


def _campaign_from(raw: str) -> CampaignSettings:
    # Fields unknown to this version are dropped, missing ones take their defaults: nodes of different
    # versions can share one Redis during a rolling upgrade.
    return CampaignSettings(**{k: v for k, v in json.loads(raw).items() if k in _CAMPAIGN_FIELDS})


def _callback_text(at: float, agent_id: str | None) -> str:
    """A callback as the scripts keep it: '<at> <agent id>' (the agent empty for anyone)."""
    return f"{_num(at)} {agent_id or ''}"


def _callback_from(raw: Any) -> tuple[float, str | None]:
    at, _, agent = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(" ")
    return float(at), agent or None


def _code_text(code: StoredCode) -> str:
    """A kept disposition as the scripts keep it: one line of JSON (a lead's codes are kept one a line)."""
    return json.dumps(code.as_dict(), separators=(",", ":"))


def _codes_from(raw: Any) -> tuple[StoredCode, ...]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(StoredCode.from_dict(json.loads(line)) for line in text.split("\n") if line)


def _drops_from(raw: Any) -> list[int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return [int(i) for i in text.split(",") if i]


def _status_from(raw: Any) -> CampaignStatus:
    """A kept status; none kept, or one this release does not know (a newer node's), is CREATED: no dialing."""
    if raw is None:
        return CampaignStatus.CREATED
    try:
        return CampaignStatus(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return CampaignStatus.CREATED


class RedisStore:
    """The store port on Redis. One instance per node; `node_id` names the lease owner."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "marcador:",
        node_id: str | None = None,
        lease_ttl_s: float = 60.0,
        stream_maxlen: int | None = None,
        lost_hold_s: float | None = None,
        wait_replicas: int = 0,
        wait_ms: int = 100,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix: must not contain '{' or '}' (they would change the Cluster hash tag)")
        if lease_ttl_s <= 0:
            raise ValueError("lease_ttl_s: must be > 0")
        self._r = client
        self.prefix = prefix
        self.node_id = node_id or default_node_id()
        self.lease_ttl_s = lease_ttl_s
        # A dead node's lead with a call in flight waits this long after its lease expired before it can be
        # dialed again: longer than ring timeout + the longest talk, so that call has surely ended.
        self.lost_hold_s = 2 * lease_ttl_s if lost_hold_s is None else lost_hold_s
        if self.lost_hold_s < 0:
            raise ValueError("lost_hold_s: must be >= 0")
        if wait_replicas < 0 or wait_ms <= 0:
            raise ValueError("wait_replicas: must be >= 0, wait_ms > 0")
        # Leases are acknowledged by this many replicas (WAIT, up to wait_ms) before a node dials them: a failover
        # (replication is asynchronous) then cannot lose a lease its node has acted on. 0: no WAIT.
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        self._lease_unreplicated = False  # the last lease was not acknowledged by enough replicas (logged once)
        self.stream_maxlen = stream_maxlen
        # Leases this process holds: campaign -> lead -> fencing token. Releases carry the token; renewals
        # extend only leases whose token we received.
        self._held: dict[str, dict[str, int]] = {}
        self._lost_leases: dict[str, set[str]] = {}  # campaign -> leads whose leases a renewal found lost
        self._attempt_campaigns: set[str] = set()
        self._ready = not isinstance(client, RedisCluster)
        self._ready_lock = asyncio.Lock()
        # One edit of a campaign at a time through this store (update_campaign); a lock lives while it is used.
        self._editing: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._s_add = client.register_script(lua.ADD_LEADS)
        self._s_lease = client.register_script(lua.LEASE)
        self._s_release = client.register_script(lua.RELEASE)
        self._s_remove = client.register_script(lua.REMOVE)
        self._s_counts = client.register_script(lua.COUNTS)
        self._s_expire = client.register_script(lua.EXPIRE)
        self._s_renew = client.register_script(lua.RENEW)
        self._s_attempt = client.register_script(lua.RECORD_ATTEMPT)
        self._s_live = client.register_script(lua.RECORD_LIVE)
        self._s_did = client.register_script(lua.DID_TAKE)
        self._s_did_back = client.register_script(lua.DID_GIVE_BACK)
        self._s_checkpoint = client.register_script(lua.CHECKPOINT)
        self._s_debtor = client.register_script(lua.DEBTOR_NOTE)
        self._s_campaign_cas = client.register_script(lua.CAMPAIGN_CAS)
        self._s_campaign_status = client.register_script(lua.CAMPAIGN_STATUS)
        self._s_cb_ask = client.register_script(lua.CB_ASK)
        self._s_cb_clear = client.register_script(lua.CB_CLEAR)
        self._s_dispo_ask = client.register_script(lua.DISPO_ASK)
        self._s_webhook_keep = client.register_script(lua.WEBHOOK_KEEP)
        self._s_webhook_drop = client.register_script(lua.WEBHOOK_DROP)
        self._s_outbox_claim = client.register_script(lua.OUTBOX_CLAIM)

    @property
    def client(self) -> RedisClient:
        return self._r

    async def aclose(self) -> None:
        await self._r.aclose()

    async def _ensure(self) -> None:
        """Discover the Cluster's nodes once, before any command. redis-py 8.1's async cluster client, first
        used by concurrent commands, closes connections that other commands are still opening."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                assert isinstance(self._r, RedisCluster)
                await self._r.initialize()
                self._ready = True

    # ------------------------------------------------------------------ keys

    def _k(self, campaign_id: str, name: str) -> str:
        return f"{self.prefix}{{c:{campaign_id}}}:{name}"

    def _g(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _held_key(self, campaign_id: str, node_id: str) -> str:
        return self._k(campaign_id, f"held:{node_id}")

    @staticmethod
    def _unknown(campaign_id: str) -> KeyError:
        return KeyError(f"campaign_id: unknown campaign {campaign_id!r}")

    # ------------------------------------------------------------------ the Store protocol

    async def ping(self) -> bool:
        """True if the store is usable now. A Cluster is usable when every master answers and the Cluster says
        `cluster_state:ok` (every slot served): redis-py's own `ping()` asks one node only, so while a dead master's
        slots wait for its replica to take over it still said True."""
        try:
            await self._ensure()
            if isinstance(self._r, RedisCluster):
                if not await self._r.ping(target_nodes=RedisCluster.PRIMARIES):
                    return False
                info = await self._r.cluster_info()
                return isinstance(info, dict) and info.get("cluster_state") == "ok"
            return bool(await self._r.ping())
        except Exception:  # down, timed out, refused, auth, a slot without a master: all mean "not usable now"
            return False

    async def save_campaign(self, settings: CampaignSettings) -> None:
        await self._write_campaign(settings, only_new=False)

    async def create_campaign(self, settings: CampaignSettings) -> bool:
        """SET NX of the definition: of two creates of one id (any nodes), exactly one wins."""
        return await self._write_campaign(settings, only_new=True)

    async def _write_campaign(self, settings: CampaignSettings, *, only_new: bool) -> bool:
        """The definition, then the campaign's place in the list (first save's order); False if `only_new` and
        the id is taken."""
        await self._ensure()
        cid = settings.campaign_id
        if not await self._r.set(self._k(cid, "def"), json.dumps(dataclasses.asdict(settings)), nx=only_new):
            return False
        order = await self._r.incr(self._g("campaign_seq"))
        await self._r.zadd(self._g("campaigns"), {cid: order}, nx=True)
        await self._bump_campaigns()
        return True

    async def _bump_campaigns(self) -> None:
        """After a campaign write: the version other nodes poll moves only once the change is in (the version is
        global and the campaign's keys are in its own Cluster slot, so it cannot be moved in the same script)."""
        await self._r.incr(self._g("campaigns:ver"))

    async def get_campaign(self, campaign_id: str) -> CampaignSettings | None:
        await self._ensure()
        raw = await self._r.get(self._k(campaign_id, "def"))
        return _campaign_from(str(raw)) if raw is not None else None

    async def update_campaign(self, campaign_id: str,
                              change: CampaignChange) -> tuple[CampaignSettings, CampaignSettings] | None:
        """Optimistic: read the definition, change it here, and write it with a compare-and-set on the text read
        (`CAMPAIGN_CAS`). A definition another writer (any node) changed meanwhile is not overwritten: its reply
        is the newer text, and the change is made again on that, after a short random pause. The edits of one
        campaign through this store take turns (a lock per campaign), so only other nodes' edits contend; each
        failed round is another writer's success, and only a campaign edited without pause by several nodes at
        once can exhaust the tries (`CampaignBusy`)."""
        await self._ensure()
        lock = self._editing.get(campaign_id)
        if lock is None:
            lock = self._editing[campaign_id] = asyncio.Lock()
        key = self._k(campaign_id, "def")
        async with lock:
            raw = await self._r.get(key)
            for attempt in range(_UPDATE_TRIES):
                if raw is None:
                    return None
                if attempt:
                    await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 4)))
                before = _campaign_from(str(raw))
                after = change(_campaign_from(str(raw)))
                reply = await self._s_campaign_cas(keys=[key], args=[raw, json.dumps(dataclasses.asdict(after))])
                if reply == 1:
                    await self._bump_campaigns()
                    return before, after
                raw = reply  # the definition stored now (None: the campaign is gone)
        raise CampaignBusy(f"campaign {campaign_id!r}: changed by other writers during each of {_UPDATE_TRIES} "
                           "tries of this edit; nothing written")

    async def campaign_ids(self) -> list[str]:
        await self._ensure()
        return [str(c) for c in await self._r.zrange(self._g("campaigns"), 0, -1)]

    async def list_campaigns(self) -> list[CampaignSettings]:
        ids = await self.campaign_ids()
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for cid in ids:
            pipe.get(self._k(cid, "def"))
        return [_campaign_from(raw) for raw in await pipe.execute() if raw is not None]

    async def set_campaign_status(self, campaign_id: str, status: CampaignStatus, *,
                                  unless: CampaignStatus | None = None) -> CampaignStatus | None:
        await self._ensure()
        keys = [self._k(campaign_id, "def"), self._k(campaign_id, "status")]
        before = await self._s_campaign_status(keys=keys, args=[CampaignStatus(status).value,
                                                                "" if unless is None else unless.value])
        if before is None:
            return None
        before = before.decode() if isinstance(before, bytes) else str(before)
        if before.startswith("-"):  # the status kept is `unless`: nothing written
            return _status_from(before[1:])
        await self._bump_campaigns()
        return _status_from(before)

    async def campaign_status(self, campaign_id: str) -> CampaignStatus | None:
        await self._ensure()
        pipe = self._r.pipeline(transaction=False)
        pipe.exists(self._k(campaign_id, "def"))
        pipe.get(self._k(campaign_id, "status"))
        exists, raw = await pipe.execute()
        return _status_from(raw) if exists else None

    async def campaign_statuses(self) -> dict[str, CampaignStatus]:
        ids = await self.campaign_ids()
        if not ids:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for cid in ids:
            pipe.get(self._k(cid, "status"))
        return {cid: _status_from(raw) for cid, raw in zip(ids, await pipe.execute(), strict=True)}

    async def campaign_version(self) -> int:
        await self._ensure()
        return int(await self._r.get(self._g("campaigns:ver")) or 0)

    async def add_leads(self, campaign_id: str, leads: Sequence[Lead]) -> int:
        return await self.add_leads_at(campaign_id, leads)

    async def lease_leads(self, campaign_id: str, count: int, now: float) -> list[Lead]:
        return (await self.lease_leads_with_states(campaign_id, count, now))[0]

    async def lease_leads_with_states(self, campaign_id: str, count: int,
                                      now: float) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        return await self._lease(campaign_id, count, now, "")

    async def lease_due_callbacks(self, campaign_id: str, count: int,
                                  now: float) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        return await self._lease(campaign_id, count, now, "due")

    async def _lease(self, campaign_id: str, count: int, now: float,
                     mode: str) -> tuple[list[Lead], dict[str, dict[str, Any]]]:
        """The LEASE script in chunks: the next leads in line (mode ''), or those with a due callback ('due')."""
        await self._ensure()
        out: list[Lead] = []
        states: dict[str, dict[str, Any]] = {}
        keys = [self._k(campaign_id, n) for n in ("def", "hopper", "sched", "sched_score", "leases", "owner")]
        keys += [self._held_key(campaign_id, self.node_id), self._k(campaign_id, "fence"),
                 self._k(campaign_id, "leads"), self._k(campaign_id, "states"), self._k(campaign_id, "cbs"),
                 self._k(campaign_id, "cbs_at"), self._k(campaign_id, "drops")]
        expires = _num(now + self.lease_ttl_s)
        while True:
            want = min(count - len(out), _LEASE_CHUNK)
            reply = await self._lease_script(keys, [max(want, 0), _num(now), expires, self.node_id, _PROMOTE_LIMIT,
                                                    mode])
            if reply is None:
                raise self._unknown(campaign_id)
            if not reply:
                return out, states
            token = int(reply[0])
            held = self._held.setdefault(campaign_id, {})
            for i in range(1, len(reply), 5):
                lid = str(reply[i])
                held[lid] = token
                out.append(_lead_from(lid, campaign_id, str(reply[i + 1])))
                state = json.loads(reply[i + 2]) if reply[i + 2] else None
                if reply[i + 3]:  # a callback asked while it waited: given to this leaser in its state
                    state = state_with_callback(state, *_callback_from(reply[i + 3]))
                if reply[i + 4]:  # phones dropped while it waited (a late wrong party or DNC code): likewise
                    state = state_with_dropped(state, _drops_from(reply[i + 4]))
                if state is not None:
                    states[lid] = state
            if len(reply) // 5 < want or len(out) >= count:
                return out, states

    async def _lease_script(self, keys: list[str], args: list[Any]) -> Any:
        """The LEASE script; with `wait_replicas`, followed on the same connection by WAIT (a pipeline to the slot's
        master), so the leases are on that many replicas before the node dials them. Not acknowledged in time (a
        replica down or behind): the leases stand (as on a Redis without replicas) and a warning says so."""
        if not self.wait_replicas:
            return await self._s_lease(keys=keys, args=args)
        pipe = self._r.pipeline(transaction=False)
        if isinstance(self._r, RedisCluster):
            # A Cluster pipeline sends a node's commands on one connection, in order. EVAL (not EVALSHA): a
            # replica just promoted has an empty script cache.
            pipe.execute_command("EVAL", lua.LEASE, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms,
                                 target_nodes=self._r.get_node_from_key(keys[0]))
        else:
            await self._s_lease(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms)
        reply, acked = await pipe.execute()
        short = int(acked) < self.wait_replicas
        if short != self._lease_unreplicated:
            self._lease_unreplicated = short
            if short:
                log.warning("leases not acknowledged by enough replicas: a failover now could lose them",
                            extra={"fields": {"replicas": int(acked), "wanted": self.wait_replicas}})
            else:
                log.info("leases acknowledged by replicas again", extra={"fields": {"replicas": int(acked)}})
        return reply

    async def release_lead(self, campaign_id: str, lead_id: str, outcome: Outcome, final: bool, now: float) -> None:
        if final or outcome is not Outcome.LOST:
            # The core's hopper recycles the leads it keeps; what it hands back with an outcome is done.
            await self._release(campaign_id, lead_id, "done", outcome.value, "")
        else:
            await self._release(campaign_id, lead_id, "back", outcome.value, "")

    async def hand_back_lead(self, campaign_id: str, lead_id: str, state: Mapping[str, Any],
                             eligible_at: float | None, now: float) -> None:
        """Back not final with its hopper state (kept in `states` for the next leaser); in the schedule until
        `eligible_at` when that is later than `now`, so no node dials it before its recycle or callback time."""
        doc = json.dumps(state, separators=(",", ":"))
        # Its callback is kept as asked too (unless one asked since it was leased, which wins): listed on every
        # node, and leased at its time by the first node to see it due.
        cb = _callback_text(float(state["cb"]), state.get("ag")) if state.get("cb") is not None else ""
        if eligible_at is None or eligible_at <= now:
            await self._release(campaign_id, lead_id, "back", Outcome.LOST.value, "", doc, cb)
        else:
            await self._release(campaign_id, lead_id, "at", Outcome.LOST.value, _num(eligible_at), doc, cb)

    async def checkpoint_lead(self, campaign_id: str, lead_id: str, state: Mapping[str, Any]) -> bool:
        """Keep the hopper's latest state of a lead this process holds (`CheckpointLead`) with its lease: if this
        node dies, the lead expires back with it (`EXPIRE`: its callback or recycle time kept, its attempts and
        dropped phones given to the next leaser). False, nothing written, for a lease no longer this process's."""
        token = self._held.get(campaign_id, {}).get(lead_id)
        if token is None:
            return False
        await self._ensure()
        doc = json.dumps(state, separators=(",", ":"))
        keys = [self._k(campaign_id, "owner"), self._k(campaign_id, "states")]
        return int(await self._s_checkpoint(keys=keys, args=[lead_id, str(token), self.node_id, doc])) == 1

    async def has_lead(self, campaign_id: str, lead_id: str) -> bool:
        """The lead was loaded into the campaign (its id stays taken once done)."""
        await self._ensure()
        return bool(await self._r.hexists(self._k(campaign_id, "leads"), lead_id))

    async def lead(self, campaign_id: str, lead_id: str) -> Lead | None:
        await self._ensure()
        raw = await self._r.hget(self._k(campaign_id, "leads"), lead_id)
        return None if raw is None else _lead_from(lead_id, campaign_id, str(raw))

    async def remove_lead(self, campaign_id: str, lead_id: str) -> bool:
        await self._ensure()
        keys = [self._k(campaign_id, n) for n in ("def", "hopper", "sched", "sched_score", "done", "states", "cbs",
                                                  "cbs_at", "drops")]
        reply = await self._s_remove(keys=keys, args=[lead_id])
        if reply is None:
            raise self._unknown(campaign_id)
        return int(reply) == 1

    async def record_attempt(self, attempt: Attempt) -> None:
        await self._record(attempt, dial=False)

    async def record_dial(self, attempt: Attempt) -> bool:
        """The lease is read in the same script that writes the record: a lease returned to the line (or taken by
        another node) a moment before cannot slip between a check and the write."""
        return await self._record(attempt, dial=True)

    async def _record(self, attempt: Attempt, *, dial: bool) -> bool:
        await self._ensure()
        cid = attempt.campaign_id
        hour, day = int(attempt.dialed_at // 3600), int(attempt.dialed_at // 86400)
        keys = [self._k(cid, n) for n in ("attempts", "attempt_order", "attempt_last", "attempt_log", "tries",
                                          f"tries:h:{hour}", f"tries:d:{day}", "inflight", "attempt_dial",
                                          "attempt_dial_upto", "owner")]
        doc = json.dumps(attempt.as_dict(), separators=(",", ":"))
        maxlen = "" if self.stream_maxlen is None else str(self.stream_maxlen)
        final = "0" if attempt.outcome is None else "1"
        written = await self._s_attempt(keys=keys, args=[attempt.call_id, doc, attempt.lead_id, maxlen, _HOUR_TTL_S,
                                                         _DAY_TTL_S, final, _num(attempt.dialed_at),
                                                         self.node_id if dial else ""])
        if int(written) < 0:
            return False
        if cid not in self._attempt_campaigns:
            # Lets attempts(None) find campaigns whose definition was never saved, as the in-memory store does.
            await self._r.sadd(self._g("attempt_campaigns"), cid)
            self._attempt_campaigns.add(cid)
        return True

    async def attempt(self, call_id: str) -> Attempt | None:
        """One HGET per campaign that has attempts (a handful): a call id does not name its campaign."""
        await self._ensure()
        cids = sorted(str(c) for c in await self._r.smembers(self._g("attempt_campaigns")))
        if not cids:
            return None
        pipe = self._r.pipeline(transaction=False)
        for cid in cids:
            pipe.hget(self._k(cid, "attempts"), call_id)
        for raw in await pipe.execute():
            if raw is not None:
                return _attempt_from(raw)
        return None

    async def attempts(self, campaign_id: str | None = None) -> list[Attempt]:
        await self._ensure()
        if campaign_id is not None:
            cids = [campaign_id]
        else:
            cids = sorted(str(c) for c in await self._r.smembers(self._g("attempt_campaigns")))
        if not cids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for cid in cids:
            pipe.hgetall(self._k(cid, "attempts"))
            pipe.zrange(self._k(cid, "attempt_order"), 0, -1, withscores=True)
        replies = await pipe.execute()
        ranked: list[tuple[float, Attempt]] = []
        for i in range(0, len(replies), 2):
            docs: dict[str, str] = replies[i]
            for call_id, score in replies[i + 1]:
                raw = docs.get(call_id)
                if raw is not None:
                    ranked.append((float(score), _attempt_from(raw)))
        ranked.sort(key=lambda pair: pair[0])  # first-record order, as the in-memory store keeps it
        return [a for _, a in ranked]

    async def attempts_page(self, campaign_id: str | None = None, *, after: tuple[float, str] | None = None,
                            since: float | None = None, until: float | None = None,
                            limit: int = 100) -> list[Attempt]:
        """A page from each campaign's `attempt_dial` zset (dial time, ties by call id: the zset's own order),
        the campaigns' pages merged; only the attempts on the page are read."""
        await self._ensure()
        if limit <= 0:
            return []
        if campaign_id is not None:
            cids = [campaign_id]
        else:
            cids = sorted(str(c) for c in await self._r.smembers(self._g("attempt_campaigns")))
        keyed: list[tuple[float, str, str]] = []  # (dialed at, call id, campaign id)
        for cid in cids:
            await self._index_dials(cid)
            keyed += [(t, call_id, cid) for t, call_id in await self._dial_keys(cid, after, since, until, limit)]
        keyed.sort()
        keyed = keyed[:limit]
        by_campaign: dict[str, list[str]] = {}
        for _, call_id, cid in keyed:
            by_campaign.setdefault(cid, []).append(call_id)
        pipe = self._r.pipeline(transaction=False)
        for cid, call_ids in by_campaign.items():
            pipe.hmget(self._k(cid, "attempts"), call_ids)
        raws = {call_id: raw for (cid, call_ids), got in zip(by_campaign.items(), await pipe.execute(), strict=True)
                for call_id, raw in zip(call_ids, got, strict=True)}
        return [_attempt_from(str(raws[call_id])) for _, call_id, _ in keyed if raws.get(call_id) is not None]

    async def _dial_keys(self, campaign_id: str, after: tuple[float, str] | None, since: float | None,
                         until: float | None, limit: int) -> list[tuple[float, str]]:
        """Up to `limit` (dialed at, call id) of one campaign, in order, after `after`, within [since, until)."""
        key = self._k(campaign_id, "attempt_dial")
        top = "+inf" if until is None else f"({_num(until)}"
        out: list[tuple[float, str]] = []
        if after is not None and (since is None or after[0] >= since):
            at, call_id = after
            if until is not None and at >= until:
                return []
            # Equal dial times sort by call id, which a score range cannot start from: those are read whole.
            out = [(t, c) for t, c in await self._scored(key, _num(at), _num(at)) if c > call_id][:limit]
            bottom = f"({_num(at)}"
        else:
            bottom = "-inf" if since is None else _num(since)
        if len(out) < limit:
            out += await self._scored(key, bottom, top, limit - len(out))
        return out

    async def _scored(self, key: str, low: str, high: str, count: int | None = None) -> list[tuple[float, str]]:
        """(score, member) of a zset's members within the score range, in order (the first `count`)."""
        rows: list[Any] = await self._r.zrangebyscore(key, low, high, start=None if count is None else 0, num=count,
                                                      withscores=True)
        return [(float(score), str(member)) for member, score in rows]

    async def _index_dials(self, campaign_id: str) -> None:
        """Bring `attempt_dial` up to date with `attempt_order`: records from before this index existed, or from
        nodes of an earlier version still running, are added (a no-op, two GETs, once it is complete)."""
        order, upto_key = self._k(campaign_id, "attempt_order"), self._k(campaign_id, "attempt_dial_upto")
        pipe = self._r.pipeline(transaction=False)
        pipe.get(upto_key)
        pipe.get(self._k(campaign_id, "attempt_last"))
        upto_raw, last_raw = await pipe.execute()
        upto, last = float(upto_raw or 0), float(last_raw or 0)
        while upto < last:
            rows = await self._scored(order, f"({_num(upto)}", "+inf", _INDEX_CHUNK)
            if not rows:
                break
            call_ids = [c for _, c in rows]
            raws = await self._r.hmget(self._k(campaign_id, "attempts"), call_ids)
            dials = {c: json.loads(raw)["dialed_at"] for c, raw in zip(call_ids, raws, strict=True) if raw}
            upto = rows[-1][0]
            pipe = self._r.pipeline(transaction=False)
            if dials:
                pipe.zadd(self._k(campaign_id, "attempt_dial"), dials)
            pipe.set(upto_key, _num(upto))  # everything through here is indexed (a slower reader may set it lower)
            await pipe.execute()

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        await self._ensure()
        keys = [self._k(campaign_id, n) for n in ("def", "hopper", "sched", "leases", "done")]
        reply = await self._s_counts(keys=keys)
        if reply is None:
            raise self._unknown(campaign_id)
        pending, leased, done = (int(x) for x in reply)
        return {"pending": pending, "leased": leased, "done": done}

    # ------------------------------------------------------------------ callbacks asked through the store

    async def ask_callback(self, campaign_id: str, lead_id: str, at: float, agent_id: str | None) -> str:
        """One script (`CB_ASK`): the lead's place is read and the callback kept in the same step, so a lease taken
        by another node at that moment either has the callback in its state or finds it kept for its holder."""
        await self._ensure()
        keys = [self._k(campaign_id, n) for n in ("def", "leads", "hopper", "sched", "sched_score", "owner", "done",
                                                  "cbs", "cbs_at")]
        reply = await self._s_cb_ask(keys=keys, args=[lead_id, _num(at), agent_id or ""])
        if reply is None:
            raise self._unknown(campaign_id)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def held_callbacks(self, campaign_id: str) -> dict[str, tuple[float, str | None]]:
        """Asked callbacks of leads leased by this process (the owner record names this node and a token this
        process was given: a lease lost to another node meanwhile is not ours to apply)."""
        return {lid: _callback_from(raw) for lid, raw in (await self._for_my_leases(campaign_id, "cbs")).items()}

    async def _for_my_leases(self, campaign_id: str, name: str) -> dict[str, Any]:
        """The entries of the campaign's hash `name` (lead id -> what is kept for its holder) for leads leased by
        this process: the owner record names this node and the token this process was given (a lease lost to
        another node meanwhile is not ours to act on)."""
        await self._ensure()
        mine = self._held.get(campaign_id)
        if not mine:
            return {}
        key = self._k(campaign_id, name)
        size = await self._r.hlen(key)
        if not size:
            return {}
        if size <= len(mine):
            kept = {str(k): v for k, v in (await self._r.hgetall(key)).items() if str(k) in mine}
        else:  # mostly callbacks of leads waiting in the store (days of them): read only this node's leads
            ids = list(mine)
            kept = {lid: v for lid, v in zip(ids, await self._r.hmget(key, ids), strict=True) if v is not None}
        if not kept:
            return {}
        owners = await self._r.hmget(self._k(campaign_id, "owner"), list(kept))
        out: dict[str, Any] = {}
        for (lid, raw), rec in zip(kept.items(), owners, strict=True):
            if rec is None:
                continue
            token, _, rest = str(rec).partition(" ")
            if rest.partition(" ")[2] == self.node_id and token == str(mine[lid]):
                out[lid] = raw
        return out

    async def clear_callbacks(self, campaign_id: str, applied: Mapping[str, tuple[float, str | None]]) -> int:
        if not applied:
            return 0
        await self._ensure()
        args: list[str] = []
        for lid, (at, agent) in applied.items():
            args += (lid, _callback_text(at, agent))
        return int(await self._s_cb_clear(keys=[self._k(campaign_id, "cbs")], args=args))

    # ------------------------------------------------------------------ dispositions asked through the store

    async def ask_disposition(self, campaign_id: str, lead_id: str, code: StoredCode) -> str:
        """One script (`DISPO_ASK`): the lead's place is read and the code applied or kept in the same step, so a
        lease taken by another node at that moment either finds the lead ended (or its phone dropped, merged into
        its state) or finds the code kept for its holder."""
        await self._ensure()
        keys = [self._k(campaign_id, n) for n in ("def", "leads", "hopper", "sched", "sched_score", "owner", "done",
                                                  "kept", "states", "drops", "cbs", "cbs_at")]
        reply = await self._s_dispo_ask(keys=keys, args=[lead_id, _code_text(code)])
        if reply is None:
            raise self._unknown(campaign_id)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def held_dispositions(self, campaign_id: str) -> dict[str, tuple[StoredCode, ...]]:
        """Codes kept for leads leased by this process (as `held_callbacks`: the owner record names this node and
        the token this process was given)."""
        return {lid: _codes_from(raw) for lid, raw in (await self._for_my_leases(campaign_id, "kept")).items()}

    async def clear_dispositions(self, campaign_id: str, applied: Mapping[str, Sequence[StoredCode]]) -> int:
        if not applied:
            return 0
        await self._ensure()
        args: list[str] = []
        for lid, codes in applied.items():
            args += (lid, "\n".join(_code_text(c) for c in codes))
        return int(await self._s_cb_clear(keys=[self._k(campaign_id, "kept")], args=args))

    async def next_callback_at(self, campaign_id: str) -> float | None:
        await self._ensure()
        first = await self._r.zrange(self._k(campaign_id, "cbs_at"), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def publish_callbacks(self, campaign_id: str, rows: Sequence[tuple[str, float, str | None]],
                                now: float) -> None:
        await self._ensure()
        key = self._k(campaign_id, "cbs_node")
        if rows:
            await self._r.hset(key, self.node_id, json.dumps([list(r) for r in rows], separators=(",", ":")))
        else:
            await self._r.hdel(key, self.node_id)

    async def callbacks(self, campaign_id: str, now: float) -> list[tuple[str, float, str | None]]:
        """Asked ones (waiting in the store, or for their holder), and those the other nodes' hoppers hold: a node
        not seen within the lease TTL (dead: its leads are returned without what its hopper knew) is left out."""
        await self._ensure()
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self._k(campaign_id, "cbs"))
        pipe.hgetall(self._k(campaign_id, "cbs_node"))
        asked, published = await pipe.execute()
        rows: dict[str, tuple[str, float, str | None]] = {}
        others = [str(n) for n in published if str(n) != self.node_id]
        if others:
            seen = await self._r.zmscore(self._g("nodes_seen"), others)
            for node, at in zip(others, seen, strict=True):
                if at is not None and now - float(at) <= self.lease_ttl_s:
                    for lid, cb_at, agent in json.loads(published[node]):
                        rows[str(lid)] = (str(lid), float(cb_at), agent or None)
        for lid, raw in asked.items():  # not applied yet: newer than what a holder published
            rows[str(lid)] = (str(lid), *_callback_from(raw))
        return sorted(rows.values(), key=lambda r: (r[1], r[0]))

    # ------------------------------------------------------------------ hopper beyond the protocol

    async def add_leads_at(self, campaign_id: str, leads: Sequence[Lead], *, priority: int = 0,
                           eligible_at: float | None = None) -> int:
        """Add leads with a priority (higher is dialed first; ties in arrival order) and, optionally, a time
        before which they are not dialed (a callback, a retry delay). Ids already present are left alone."""
        await self._ensure()
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority: must be within ±{MAX_PRIORITY}")
        keys = [self._k(campaign_id, n) for n in ("def", "leads", "hopper", "seq", "sched", "sched_score")]
        base = str(-priority * PRIORITY_STRIDE)
        at = "" if eligible_at is None else _num(eligible_at)
        added = 0
        for start in range(0, max(len(leads), 1), _ADD_CHUNK):
            args: list[str] = [base, at]
            for lead in leads[start:start + _ADD_CHUNK]:
                args += (lead.lead_id, _lead_json(lead, campaign_id))
            reply = await self._s_add(keys=keys, args=args)
            if reply is None:
                raise self._unknown(campaign_id)
            added += int(reply)
        return added

    async def release_lead_at(self, campaign_id: str, lead_id: str, eligible_at: float) -> bool:
        """End this node's lease and put the lead back, dialable from `eligible_at` at its old place in line.
        The hook for recycling rules (retry a busy number in 30 min). True if the lease was ours."""
        return await self._release(campaign_id, lead_id, "at", "", _num(eligible_at)) == 1

    async def _release(self, campaign_id: str, lead_id: str, mode: str, outcome: str, eligible_at: str,
                       state: str = "", callback: str = "") -> int:
        await self._ensure()
        held = self._held.get(campaign_id, {})
        token = held.get(lead_id)
        keys = [self._k(campaign_id, n) for n in ("def", "leases", "owner")]
        keys += [self._held_key(campaign_id, self.node_id)]
        keys += [self._k(campaign_id, n) for n in ("hopper", "done", "sched", "sched_score", "states", "cbs",
                                                   "cbs_at", "leads", "kept", "drops")]
        reply = await self._s_release(keys=keys, args=[lead_id, "" if token is None else str(token), self.node_id,
                                                       mode, outcome, eligible_at, state, callback])
        if reply is None:
            raise self._unknown(campaign_id)
        held.pop(lead_id, None)
        result = int(reply)
        if result == -1:
            log.warning("stale lease: release ignored (the lead was given to another holder)",
                        extra={"fields": {"campaign_id": campaign_id, "lead_id": lead_id}})
        return result

    # ------------------------------------------------------------------ leases across nodes

    async def renew_leases(self, node_id: str | None = None, ttl: float | None = None,
                           now: float | None = None) -> int:
        """Extend the leases of `node_id` (this node by default) to now + ttl. For this node only leases
        whose token this process received are renewed: a batch whose reply was lost, or leases from before
        a restart, are left to expire. Returns how many were renewed. Leads this process holds that were not renewed
        (returned to the line by another node's `expire_leases`, or leased by another node) are kept for
        `take_lost_leases`."""
        await self._ensure()
        node = node_id or self.node_id
        expires = _num((time.time() if now is None else now) + (self.lease_ttl_s if ttl is None else ttl))
        # With the tokens, the leads held here as of the same instant: those the renewal does not renew are lost.
        plan: list[tuple[str, list[str], set[str]]]
        if node == self.node_id:
            plan = [(cid, [str(t) for t in set(held.values())], set(held)) for cid, held in self._held.items() if held]
        else:
            plan = [(cid, ["*"], set()) for cid in await self.campaign_ids()]
        renewed = 0
        for cid, tokens, believed in plan:
            keys = [self._k(cid, "leases"), self._k(cid, "owner"), self._held_key(cid, node)]
            reply = await self._s_renew(keys=keys, args=[expires, node, *tokens])
            renewed += len(reply)
            if believed:
                # Held here when the renewal was asked, still held (not released meanwhile), and not renewed: the
                # lease expired unrenewed (returned to the line by another node) or another node holds the lead.
                held = self._held.get(cid, {})
                lost = (believed - {str(lid) for lid in reply}) & set(held)
                for lid in lost:
                    held.pop(lid, None)
                if lost:
                    self._lost_leases.setdefault(cid, set()).update(lost)
        return renewed

    def take_lost_leases(self) -> dict[str, list[str]]:
        """Leads whose leases this node lost unseen (found at a renewal: another holder, or nobody, has them now),
        by campaign, each told once: the caller's hopper must let go of them."""
        lost, self._lost_leases = self._lost_leases, {}
        return {cid: sorted(lids) for cid, lids in lost.items()}

    async def expire_leases(self, now: float) -> list[tuple[str, str]]:
        """Return every lease due by `now` (its node stopped renewing) to the queue, attempts untouched.

        A lead whose call is still in flight (its node died mid-call; its PBX cannot be consulted from here)
        goes to the schedule, dialable from `now + lost_hold_s` only, and that attempt gets the outcome `lost`
        (ended_at = now): never re-dialed while the call could be live, never left without an outcome.
        Returns (campaign id, lead id) of each lead returned."""
        returned: list[tuple[str, str]] = []
        hold_until = _num(now + self.lost_hold_s)
        for cid in await self.campaign_ids():
            keys = [self._k(cid, n) for n in ("leases", "owner", "hopper", "inflight", "sched", "sched_score", "lost",
                                              "cbs", "cbs_at", "leads", "states", "kept", "drops", "done")]
            while True:
                reply = await self._s_expire(keys=keys, args=[_num(now), _LEASE_CHUNK, hold_until])
                by_node: dict[str, list[str]] = {}
                for i in range(0, len(reply), 3):
                    lid, node = str(reply[i]), str(reply[i + 1])
                    returned.append((cid, lid))
                    by_node.setdefault(node, []).append(lid)
                if by_node:
                    pipe = self._r.pipeline(transaction=False)
                    for node, lids in by_node.items():
                        if node:
                            pipe.srem(self._held_key(cid, node), *lids)
                    await pipe.execute()
                    mine = self._held.get(cid, {})
                    for lid in by_node.get(self.node_id, ()):
                        if mine.pop(lid, None) is not None:  # its own, overdue: this node must let go of it too
                            self._lost_leases.setdefault(cid, set()).add(lid)
                if len(reply) // 3 < _LEASE_CHUNK:
                    break
            await self._write_lost(cid)
        if returned:
            log.info("expired leases returned to the hopper", extra={"fields": {"leads": len(returned)}})
        return returned

    async def _write_lost(self, campaign_id: str) -> int:
        """Give the outcome `lost` to the attempts EXPIRE listed (also those a crash left listed earlier)."""
        lost_key = self._k(campaign_id, "lost")
        pending = {str(k): str(v) for k, v in (await self._r.hgetall(lost_key)).items()}
        if not pending:
            return 0
        raws = await self._r.hmget(self._k(campaign_id, "attempts"), list(pending))
        written = 0
        for (call_id, at), raw in zip(pending.items(), raws, strict=True):
            if raw is not None:
                attempt = _attempt_from(str(raw))
                if attempt.outcome is None:  # its node may have written the real outcome meanwhile
                    attempt.outcome = Outcome.LOST
                    attempt.ended_at = float(at)
                    await self.record_attempt(attempt)
                    written += 1
            await self._r.hdel(lost_key, call_id)
        if written:
            log.warning("in-flight attempts of a dead node marked lost",
                        extra={"fields": {"campaign_id": campaign_id, "attempts": written}})
        return written

    async def maintain(self, now: float | None = None, agents: Sequence[str] = (),
                       info: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """One round of a node's housekeeping (call it every lease_ttl/3): heartbeat, renew own leases,
        return dead nodes' leases. Returns the leads returned to the hopper."""
        now = time.time() if now is None else now
        await self.heartbeat(agents, now=now, info=info)
        await self.renew_leases(now=now)
        return await self.expire_leases(now)

    # ------------------------------------------------------------------ per-debtor counters

    async def lead_attempt_count(self, campaign_id: str, lead_id: str, now: float,
                                 window_s: float | None = None) -> int:
        """Attempts (dials) of a lead: all time, or within `window_s` before `now` counted by whole hour
        buckets (window ≤ 24 h) or day buckets (≤ 35 days). Buckets overlapping the window's start count
        whole, so this may overcount, never undercount — the safe side for a compliance cap."""
        await self._ensure()
        if window_s is None:
            raw = await self._r.hget(self._k(campaign_id, "tries"), lead_id)
            return int(raw or 0)
        if window_s <= 24 * 3600:
            size, kind = 3600, "h"
        elif window_s <= 35 * 86400:
            size, kind = 86400, "d"
        else:
            raise ValueError("window_s: at most 35 days (longer windows: use the total)")
        first, last = int((now - window_s) // size), int(now // size)
        pipe = self._r.pipeline(transaction=False)
        for b in range(first, last + 1):
            pipe.hget(self._k(campaign_id, f"tries:{kind}:{b}"), lead_id)
        return sum(int(x or 0) for x in await pipe.execute())

    async def debtor_note(self, campaign_id: str, lead_id: str, kind: str, at: float, keep_s: float,
                          max_n: int) -> None:
        """One instant of a debtor's history (`a` attempt, `c` conversation, `x` abandoned, `w` a conversation found
        to be with a wrong party, read back without its `c`), kept at least `keep_s` and `max_n` deep. Every campaign
        notes into one history, so a node's gates count a debtor's calls of any campaign on any node; `campaign_id`
        names the noting campaign (kept for the store's interface)."""
        if kind not in ("a", "c", "x", "w"):
            raise ValueError(f"kind: expected a, c, x or w, got {kind!r}")
        await self._ensure()
        await self._s_debtor(keys=[self._g("debtors:hist")],
                             args=[lead_id, kind, repr(float(at)), repr(float(keep_s)), int(max_n)])

    async def debtor_histories(self, campaign_id: str,
                               lead_ids: Sequence[str]) -> dict[str, dict[str, tuple[float, ...]]]:
        """The recorded instants of these debtors (only those with any), by kind: every campaign's, merged with
        what an earlier release kept per campaign (`{c}:hist`) so an upgrade forgets no cap."""
        if not lead_ids:
            return {}
        await self._ensure()
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(self._g("debtors:hist"), list(lead_ids))
        pipe.hmget(self._k(campaign_id, "hist"), list(lead_ids))
        shared, legacy = await pipe.execute()
        out: dict[str, dict[str, tuple[float, ...]]] = {}
        for lead_id, *raws in zip(lead_ids, shared, legacy, strict=True):
            kinds: dict[str, set[float]] = {}
            for raw in raws:
                for k, v in (json.loads(raw) if raw else {}).items():
                    # Lua's cjson writes an empty list as {}: anything not a list is empty.
                    if k in ("a", "c", "x", "w") and isinstance(v, list):
                        kinds.setdefault(k, set()).update(float(x) for x in v)
            if "w" in kinds and "c" in kinds:  # a wrong party's conversation is no contact with the debtor
                kinds["c"] -= kinds["w"]
                if not kinds["c"]:
                    del kinds["c"]
            if kinds:
                out[lead_id] = {k: tuple(sorted(v)) for k, v in kinds.items()}
        return out

    # ------------------------------------------------------------------ do-not-call

    def _dnc_key(self, campaign_id: str | None) -> str:
        return self._g("dnc") if campaign_id is None else self._k(campaign_id, "dnc")

    async def dnc_add(self, numbers: Iterable[str], campaign_id: str | None = None) -> int:
        """Add numbers to the global list (campaign_id None) or a campaign's. Returns how many were new."""
        await self._ensure()
        items = list(numbers)
        if not items:
            return 0
        added = int(await self._r.sadd(self._dnc_key(campaign_id), *items))
        await self._r.incr(self._g("dnc:ver"))  # after the change: a node that reads the new version sees it
        return added

    async def dnc_remove(self, numbers: Iterable[str], campaign_id: str | None = None) -> int:
        await self._ensure()
        items = list(numbers)
        if not items:
            return 0
        removed = int(await self._r.srem(self._dnc_key(campaign_id), *items))
        await self._r.incr(self._g("dnc:ver"))
        return removed

    async def dnc_version(self) -> int:
        """Bumped by every change to any DNC list: nodes reload the lists when it moves."""
        await self._ensure()
        return int(await self._r.get(self._g("dnc:ver")) or 0)

    async def dnc_lists(self, campaign_ids: Iterable[str]) -> dict[str | None, set[str]]:
        """The global list (key None) and each campaign's, as stored."""
        await self._ensure()
        ids: list[str | None] = [None, *campaign_ids]
        out: dict[str | None, set[str]] = {}
        for cid in ids:
            out[cid] = {m.decode() if isinstance(m, bytes) else str(m)
                        async for m in self._r.sscan_iter(self._dnc_key(cid), count=5000)}
        return out

    async def dnc_contains(self, number: str, campaign_id: str | None = None) -> bool:
        """On the global list, or on the campaign's when a campaign is given."""
        return bool(await self.dnc_blocked([number], campaign_id))

    async def dnc_blocked(self, numbers: Sequence[str], campaign_id: str | None = None) -> set[str]:
        """Which of `numbers` must not be called: on the global list or on the campaign's."""
        await self._ensure()
        if not numbers:
            return set()
        pipe = self._r.pipeline(transaction=False)
        pipe.smismember(self._g("dnc"), list(numbers))
        if campaign_id is not None:
            pipe.smismember(self._k(campaign_id, "dnc"), list(numbers))
        flags = await pipe.execute()
        return {n for i, n in enumerate(numbers) if any(int(f[i]) for f in flags)}

    # ------------------------------------------------------------------ caller-ID (DID) counters

    def _did_keys(self, did: str, now: float) -> list[str]:
        return [self._g(f"did:{{{did}}}:h:{int(now // 3600)}"), self._g(f"did:{{{did}}}:d:{int(now // 86400)}")]

    async def did_incr(self, did: str, now: float) -> tuple[int, int]:
        """Count one use of a DID; returns its uses this hour and this (UTC) day."""
        await self._ensure()
        hour, day = self._did_keys(did, now)
        pipe = self._r.pipeline(transaction=False)
        pipe.incr(hour)
        pipe.expire(hour, _DID_HOUR_TTL_S)
        pipe.incr(day)
        pipe.expire(day, _DID_DAY_TTL_S)
        h, _, d, _ = await pipe.execute()
        return int(h), int(d)

    async def did_take(self, did: str, now: float, hour_cap: int, day_cap: int) -> bool:
        """Count one use of a DID only if it stays within both caps (atomic across nodes)."""
        await self._ensure()
        reply = await self._s_did(keys=self._did_keys(did, now), args=[hour_cap, day_cap, _DID_HOUR_TTL_S,
                                                                       _DID_DAY_TTL_S])
        return int(reply[0]) == 1

    async def did_give_back(self, did: str, now: float) -> None:
        """Undo one `did_take` at the same `now` (its call was not made); a counter never goes below zero."""
        await self._ensure()
        await self._s_did_back(keys=self._did_keys(did, now))

    async def did_counts(self, did: str, now: float) -> tuple[int, int]:
        await self._ensure()
        hour, day = self._did_keys(did, now)
        pipe = self._r.pipeline(transaction=False)
        pipe.get(hour)
        pipe.get(day)
        h, d = await pipe.execute()
        return int(h or 0), int(d or 0)

    # ------------------------------------------------------------------ abandon windows

    async def record_live(self, campaign_id: str, now: float, abandoned: bool) -> None:
        """Count one live answer of the campaign (abandoned or connected) at `now`, for every node."""
        await self._ensure()
        keys = [self._k(campaign_id, "live"), self._k(campaign_id, "live_cum")]
        await self._s_live(keys=keys, args=[int(now // 60), int(abandoned), _LIVE_KEEP_MINUTES])

    async def abandon_counts(self, campaign_id: str, now: float, window_s: float | None = None) -> tuple[int, int]:
        """(abandoned, live answers) over the window ending at `now` (minute granularity), or campaign-to-date."""
        await self._ensure()
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(self._k(campaign_id, "live"), ["live", "abandoned"])
        if window_s is not None:
            before = int((now - window_s) // 60)
            pipe.zrevrangebyscore(self._k(campaign_id, "live_cum"), before, "-inf", start=0, num=1)
        replies = await pipe.execute()
        live, abandoned = (int(x or 0) for x in replies[0])
        if window_s is not None and replies[1]:
            _, live_then, abandoned_then = str(replies[1][0]).split(":")
            live -= int(live_then)
            abandoned -= int(abandoned_then)
        return abandoned, live

    async def abandon_rate(self, campaign_id: str, now: float, window_s: float | None = None) -> float:
        """Abandoned / live answers over the window (0.0 with no live answers)."""
        abandoned, live = await self.abandon_counts(campaign_id, now, window_s)
        return abandoned / live if live else 0.0

    # ------------------------------------------------------------------ nodes and their agents

    async def heartbeat(self, agents: Sequence[str] = (), *, now: float | None = None,
                        info: dict[str, Any] | None = None) -> None:
        """This node is alive and has these agents logged in."""
        await self._ensure()
        now = time.time() if now is None else now
        doc = json.dumps({"seen": now, "agents": list(agents), "info": info or {}})
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(self._g("nodes"), self.node_id, doc)
        pipe.zadd(self._g("nodes_seen"), {self.node_id: now})
        await pipe.execute()

    async def nodes(self, now: float | None = None, max_age_s: float | None = None) -> list[NodeInfo]:
        """Registered nodes, alive if seen within `max_age_s` (default: the lease TTL)."""
        await self._ensure()
        now = time.time() if now is None else now
        max_age = self.lease_ttl_s if max_age_s is None else max_age_s
        docs = await self._r.hgetall(self._g("nodes"))
        out = []
        for node_id, raw in sorted(docs.items()):
            doc = json.loads(raw)
            seen = float(doc["seen"])
            out.append(NodeInfo(str(node_id), seen, tuple(doc.get("agents", ())), doc.get("info", {}),
                                now - seen <= max_age))
        return out

    async def forget_node(self, node_id: str) -> None:
        await self._ensure()
        pipe = self._r.pipeline(transaction=False)
        pipe.hdel(self._g("nodes"), node_id)
        pipe.zrem(self._g("nodes_seen"), node_id)
        await pipe.execute()

    # ------------------------------------------------------------------ webhook events kept (given up or dropped)

    _WEBHOOK_SCAN = 500  # kept events read per round while a filter thins a page

    def _webhook_keys(self) -> list[str]:
        return [self._g(f"{{wh}}:{n}") for n in ("failed", "failed_ids", "failed_by", "failed_seq",
                                                   "failed_counts", "failed_tries")]

    async def keep_failed_webhook(self, hook: str, kind: str, delivery: str, event: str, reason: str, at: float,
                                  cap: int) -> tuple[int, int]:
        await self._ensure()
        doc = json.dumps({"h": hook, "k": kind, "d": delivery, "e": event, "r": reason, "t": at},
                         separators=(",", ":"))
        kept_id, dropped = await self._s_webhook_keep(keys=self._webhook_keys(),
                                                      args=[f"{hook}\n{delivery}", hook, doc, int(cap)])
        return int(kept_id), int(dropped)

    async def _webhook_rows(self, ids: Sequence[Any]) -> list[FailedWebhook]:
        if not ids:
            return []
        keys = self._webhook_keys()
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(keys[0], list(ids))
        pipe.hmget(keys[5], list(ids))
        docs, tries = await pipe.execute()
        out = []
        for raw_id, raw, n in zip(ids, docs, tries, strict=True):
            if raw is None:  # dropped between the two reads
                continue
            d = json.loads(raw)
            out.append(FailedWebhook(int(raw_id), d["h"], d["k"], d["d"], d["e"], d["r"], float(d["t"]),
                                     int(n or 1)))
        return out

    async def failed_webhooks(self, after: int = 0, limit: int = 100, *, hook: str | None = None,
                              kinds: Sequence[str] = ()) -> list[FailedWebhook]:
        await self._ensure()
        out: list[FailedWebhook] = []
        fetch = limit if hook is None and not kinds else max(limit, self._WEBHOOK_SCAN)
        while len(out) < limit:
            ids = await self._r.zrangebyscore(self._webhook_keys()[1], f"({int(after)}", "+inf", start=0, num=fetch)
            if not ids:
                break
            for row in await self._webhook_rows(ids):
                if len(out) < limit and hook in (None, row.hook) and kind_matches(row.kind, kinds):
                    out.append(row)
            if len(ids) < fetch:
                break
            after = int(str(ids[-1]))
        return out

    async def get_failed_webhooks(self, ids: Sequence[int]) -> list[FailedWebhook]:
        await self._ensure()
        return await self._webhook_rows(sorted({int(i) for i in ids}))

    async def drop_failed_webhooks(self, ids: Sequence[int]) -> int:
        await self._ensure()
        if not ids:
            return 0
        return int(await self._s_webhook_drop(keys=self._webhook_keys(), args=sorted({int(i) for i in ids})))

    async def failed_webhook_counts(self) -> dict[str, int]:
        await self._ensure()
        raw = await self._r.hgetall(self._webhook_keys()[4])
        return {str(k): int(v) for k, v in raw.items() if int(v) > 0}

    # ------------------------------------------------------------------ webhook outbox (events not yet sent)

    def _outbox_keys(self, node_id: str) -> list[str]:
        return [self._g(f"{{wh}}:outbox:{node_id}"), self._g("{wh}:outboxes")]

    async def outbox_write(self, puts: Sequence[OutboxEntry], dones: Sequence[tuple[str, str]]) -> None:
        if not puts and not dones:
            return
        await self._ensure()
        outbox, outboxes = self._outbox_keys(self.node_id)
        pipe = self._r.pipeline(transaction=False)
        if puts:
            # A claim adds why and when to the doc (redis_scripts.OUTBOX_CLAIM).
            pipe.hset(outbox, mapping={f"{e.hook}\n{e.delivery}": f"{e.order} {_outbox_doc(e)}" for e in puts})
            pipe.sadd(outboxes, self.node_id)
        if dones:
            pipe.hdel(outbox, *(f"{hook}\n{delivery}" for hook, delivery in dones))
        await pipe.execute()

    async def outbox_orphans(self, now: float) -> list[str]:
        await self._ensure()
        others = sorted(str(n) for n in await self._r.smembers(self._outbox_keys(self.node_id)[1])
                        if str(n) != self.node_id)
        if not others:
            return []
        seen = await self._r.zmscore(self._g("nodes_seen"), others)
        return [n for n, at in zip(others, seen, strict=True) if at is None or now - float(at) > self.lease_ttl_s]

    async def outbox_claim(self, node_id: str | None, reason: str, at: float,
                           cap: int) -> tuple[list[FailedWebhook], int]:
        await self._ensure()
        node = self.node_id if node_id is None else node_id
        dropped, ids = await self._s_outbox_claim(keys=self._webhook_keys() + self._outbox_keys(node),
                                                  args=[node, json.dumps(reason), _num(at), int(cap)])
        return await self._webhook_rows(sorted(int(i) for i in ids)), int(dropped)
