"""One contract for every store backend: InMemoryStore and RedisStore must behave alike.

Redis cases run against the harness's own redis-server (`-p tests.harness.redis`), each test under a fresh
key prefix. Features only the Redis store has so far (lease expiry across nodes, DNC, abandon windows,
counters) skip on the in-memory store. At the end: the Redis restart test and the store URL parser.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import pytest

from dialer.memory_store import InMemoryStore
from dialer.model import Attempt, CampaignSettings, CampaignStatus, Lead, Outcome, StoredCode
from dialer.ports import OutboxEntry, Store
from dialer.redis_store import RedisStore
from dialer.store_factory import WaitingRedisCluster, open_store, parse_store_url, redact_url
from tests.harness.redis import RedisClusterServers, RedisSentinel, RedisServer

T0 = 1_700_000_000.0
BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]


@dataclass
class Backend:
    """Stores sharing one state: `make(node)` gives another node's view (the same object in memory)."""

    name: str
    make: Callable[[str], Store]
    made: list[Store] = field(default_factory=list)
    url: str = ""  # the Redis store's URL without options (redis:// or redis+cluster://)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        shared = InMemoryStore()
        yield Backend("memory", lambda node: shared)
        return
    server: RedisServer | RedisClusterServers = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    made: list[Store] = []

    def make(node: str) -> Store:
        s = open_store(f"{server.url}?prefix={prefix}&lease_ttl=30", node_id=node)
        made.append(s)
        return s

    yield Backend(request.param, make, made, server.url)
    for s in made:
        if isinstance(s, RedisStore):
            await s.aclose()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.make("node-a")


@pytest.fixture
def peer(backend: Backend) -> Store:
    return backend.make("node-b")


def redis_only(s: Store, what: str) -> RedisStore:
    if not isinstance(s, RedisStore):
        pytest.skip(f"{type(s).__name__} has no {what} yet")
    return s


def make_leads(n: int, cid: str = "c1", start: int = 0) -> list[Lead]:
    return [Lead(f"l{i}", cid, (f"+1555{i:07d}", f"+1666{i:07d}"), {"debt": i * 10, "name": f"N{i}"})
            for i in range(start, start + n)]


async def campaign(s: Store, cid: str = "c1", n: int = 0) -> list[Lead]:
    await s.save_campaign(CampaignSettings(campaign_id=cid, name=cid.upper()))
    leads = make_leads(n, cid)
    if leads:
        assert await s.add_leads(cid, leads) == n
    return leads


def ids(leads: list[Lead]) -> list[str]:
    return [lead.lead_id for lead in leads]


# ---------------------------------------------------------------------------------------------- campaigns


async def test_campaigns_save_get_list(store: Store) -> None:
    assert await store.get_campaign("a") is None
    assert await store.list_campaigns() == []
    a = CampaignSettings(campaign_id="a", name="Alpha", strategy="erlang", abandon_target=0.02, skill="es")
    b = CampaignSettings(campaign_id="b", name="Beta", amd=True, max_lines=12)
    await store.save_campaign(a)
    await store.save_campaign(b)
    assert await store.get_campaign("a") == a
    got = await store.get_campaign("b")
    assert got == b
    assert got is not None
    got.name = "mutated"  # what a caller does with its copy is not the store's
    assert (await store.get_campaign("b")) == b
    await store.save_campaign(replace(a, name="Alpha 2"))
    assert [c.campaign_id for c in await store.list_campaigns()] == ["a", "b"]
    assert (await store.get_campaign("a")) == replace(a, name="Alpha 2")


# ---------------------------------------------------------------------------------------------- leads


async def test_add_leads_ignores_duplicates(store: Store) -> None:
    await campaign(store)
    assert await store.add_leads("c1", make_leads(5)) == 5
    assert await store.add_leads("c1", make_leads(7)) == 2  # l0..l4 already there
    assert await store.add_leads("c1", [*make_leads(1, start=9), *make_leads(1, start=9)]) == 1
    assert await store.add_leads("c1", []) == 0
    assert await store.lead_counts("c1") == {"pending": 8, "leased": 0, "done": 0}
    first = await store.lease_leads("c1", 1, T0)
    await store.release_lead("c1", first[0].lead_id, Outcome.CONNECTED, True, T0)
    assert await store.remove_lead("c1", "l1")
    # Done and removed ids stay taken: loading the same list again must not redial anyone.
    assert await store.add_leads("c1", make_leads(2)) == 0
    assert await store.lead_counts("c1") == {"pending": 6, "leased": 0, "done": 2}


async def test_unknown_campaign_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.add_leads("nope", make_leads(1, "nope"))
    with pytest.raises(KeyError):
        await store.lease_leads("nope", 1, T0)
    with pytest.raises(KeyError):
        await store.release_lead("nope", "l0", Outcome.BUSY, True, T0)
    with pytest.raises(KeyError):
        await store.remove_lead("nope", "l0")
    with pytest.raises(KeyError):
        await store.lead_counts("nope")


async def test_lease_in_order_with_data(store: Store) -> None:
    leads = await campaign(store, n=5)
    assert await store.lease_leads("c1", 0, T0) == []
    got = await store.lease_leads("c1", 3, T0)
    assert got == leads[:3]  # phones tuple, fields dict, campaign id all come back
    assert isinstance(got[0].phones, tuple)
    assert await store.lease_leads("c1", 10, T0) == leads[3:]
    assert await store.lease_leads("c1", 10, T0) == []
    assert await store.lead_counts("c1") == {"pending": 0, "leased": 5, "done": 0}


async def test_two_leasers_never_share_a_lead(store: Store, peer: Store) -> None:
    await campaign(store, n=500)
    calls = [(store if i % 2 else peer).lease_leads("c1", 7, T0) for i in range(100)]  # asks for 700
    batches = await asyncio.gather(*calls)
    taken = [lid for batch in batches for lid in ids(batch)]
    assert len(taken) == 500
    assert len(set(taken)) == 500
    assert await store.lead_counts("c1") == {"pending": 0, "leased": 500, "done": 0}


async def test_release_final_vs_recycled(store: Store) -> None:
    await campaign(store, n=4)
    l0, l1, l2, l3 = ids(await store.lease_leads("c1", 4, T0))
    await store.release_lead("c1", l0, Outcome.CONNECTED, True, T0)
    await store.release_lead("c1", l1, Outcome.NO_ANSWER, False, T0)  # no recycling rules yet: done
    await store.release_lead("c1", l2, Outcome.LOST, False, T0)  # lost track, not final: back in line
    await store.release_lead("c1", l3, Outcome.LOST, True, T0)
    assert await store.lead_counts("c1") == {"pending": 1, "leased": 0, "done": 3}
    await store.release_lead("c1", l0, Outcome.LOST, False, T0)  # not leased: nothing happens
    assert await store.lead_counts("c1") == {"pending": 1, "leased": 0, "done": 3}
    await store.add_leads("c1", make_leads(2, start=10))
    assert ids(await store.lease_leads("c1", 1, T0)) == [l2]  # it was next in line: still first


async def test_a_lead_handed_back_keeps_its_hopper_state_for_the_next_leaser(store: Store, peer: Store) -> None:
    """A node hands leads back not final with their hopper state: the store gives each state to whichever node
    leases the lead next, and none before its eligible time. The store used to keep no state: the next node
    started afresh and dialed a no-answer of a minute ago at once."""
    await campaign(store, n=4)
    l0, l1, l2, l3 = ids(await store.lease_leads("c1", 4, T0))
    no_answer = {"v": 1, "n": 3, "p": [[0, 3, 0, 0, None, None]], "d": [1], "t": T0 + 7200}
    callback = {"v": 1, "n": 1, "cb": T0 + 3600, "ag": "ana"}
    now_ok = {"v": 1, "n": 2}
    await store.hand_back_lead("c1", l0, no_answer, T0 + 7200, T0 + 10)
    await store.hand_back_lead("c1", l1, callback, T0 + 3600, T0 + 10)
    await store.hand_back_lead("c1", l2, now_ok, None, T0 + 10)
    await store.release_lead("c1", l3, Outcome.LOST, False, T0 + 10)  # back, no state: as before
    assert await store.lead_counts("c1") == {"pending": 4, "leased": 0, "done": 0}
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 20)
    assert sorted(ids(leads)) == [l2, l3] and states == {l2: now_ok}
    assert await peer.lease_leads_with_states("c1", 10, T0 + 3599) == ([], {})  # the callback: not before its time
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 3600)
    assert ids(leads) == [l1] and states == {l1: callback}
    assert await peer.lease_leads_with_states("c1", 10, T0 + 7199) == ([], {})
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 7200)
    assert ids(leads) == [l0] and states == {l0: no_answer}
    # Lost track of again (no state given: e.g. its histories could not be read): the state kept still holds.
    await peer.release_lead("c1", l0, Outcome.LOST, False, T0 + 7201)
    assert (await store.lease_leads_with_states("c1", 10, T0 + 7202))[1] == {l0: no_answer}
    # Handed back again with a newer state: that one is given next.
    newer = {**no_answer, "n": 4, "t": T0 + 9000}
    await store.hand_back_lead("c1", l0, newer, T0 + 9000, T0 + 7300)
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 9000)
    assert ids(leads) == [l0] and states == {l0: newer}
    # Done: the state goes with it. A lead removed while waiting for its time is removed, state and all.
    await peer.release_lead("c1", l0, Outcome.CONNECTED, True, T0 + 9100)
    await peer.hand_back_lead("c1", l1, callback, T0 + 20000, T0 + 9100)
    assert await store.remove_lead("c1", l1)
    assert await store.lease_leads_with_states("c1", 10, T0 + 30000) == ([], {})
    assert await store.lead_counts("c1") == {"pending": 0, "leased": 2, "done": 2}
    # A hand-back of a lead not leased (any more) by this node changes nothing.
    await store.hand_back_lead("c1", l0, now_ok, None, T0 + 30000)
    assert await store.lead_counts("c1") == {"pending": 0, "leased": 2, "done": 2}


async def test_a_callback_asked_for_a_waiting_lead_keeps_it_out_of_leases_until_its_time(store: Store,
                                                                                       peer: Store) -> None:
    """A callback asked for a lead waiting in the store (no node holds it) is kept there: no node leases the lead
    before its time, whatever its place in line or its recycle time, and the node that leases it then takes the
    callback in its state. A due one is leased at once with `lease_due_callbacks`, ahead of the line. The store
    kept no callbacks: the API node held it in its memory, and any node leased and dialed the lead at once."""
    await campaign(store, n=5)
    l0, l1 = ids(await store.lease_leads("c1", 2, T0))
    await store.hand_back_lead("c1", l1, {"v": 1, "n": 2, "t": T0 + 7200}, T0 + 7200, T0 + 1)  # recycled: 2 h
    assert await store.ask_callback("c1", "l2", T0 + 600, "ana") == "pending"
    assert await peer.ask_callback("c1", l1, T0 + 900, None) == "pending"  # a callback outranks its recycle time
    assert await peer.next_callback_at("c1") == T0 + 600
    assert await store.lead_counts("c1") == {"pending": 4, "leased": 1, "done": 0}
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 2)
    assert ids(leads) == ["l3", "l4"] and states == {}
    assert await peer.lease_leads_with_states("c1", 10, T0 + 599) == ([], {})
    assert await peer.lease_due_callbacks("c1", 10, T0 + 599) == ([], {})
    leads, states = await peer.lease_due_callbacks("c1", 10, T0 + 600)
    assert ids(leads) == ["l2"] and states == {"l2": {"v": 1, "cb": T0 + 600, "ag": "ana"}}
    assert await peer.next_callback_at("c1") == T0 + 900
    # Leased the ordinary way once due: merged into the state it was handed back with, then forgotten.
    leads, states = await store.lease_leads_with_states("c1", 10, T0 + 900)
    assert ids(leads) == [l1] and states == {l1: {"v": 1, "n": 2, "t": T0 + 7200, "cb": T0 + 900}}
    assert await store.next_callback_at("c1") is None and await store.callbacks("c1", T0 + 900) == []
    # Nothing kept for a lead that is done, removed or unknown.
    await store.release_lead("c1", l0, Outcome.CONNECTED, True, T0 + 901)
    await store.add_leads("c1", make_leads(1, start=9))
    assert await store.remove_lead("c1", "l9")
    assert [await peer.ask_callback("c1", lid, T0 + 2000, None) for lid in (l0, "l9", "nobody")] == \
        ["done", "removed", "unknown"]
    assert await peer.callbacks("c1", T0 + 901) == [] and await peer.next_callback_at("c1") is None
    with pytest.raises(KeyError):
        await store.ask_callback("nope", l0, T0 + 2000, None)
    # A waiting lead removed: its callback goes with it.
    await store.add_leads("c1", make_leads(1, start=7))
    assert await store.ask_callback("c1", "l7", T0 + 3000, None) == "pending"
    assert await store.remove_lead("c1", "l7")
    assert await store.callbacks("c1", T0 + 901) == [] and await store.next_callback_at("c1") is None


async def test_a_holder_finds_its_callbacks_among_many_waiting_in_the_store(store: Store, peer: Store) -> None:
    """Callbacks of leads waiting in the store (days of them in a collections campaign) and one for a lead this
    node holds: the holder gets its own, whether it holds fewer leads than the store keeps callbacks (read by
    its leads) or more (read whole)."""
    await campaign(store, n=30)
    l0, l1 = ids(await store.lease_leads("c1", 2, T0))
    for i in range(2, 30):
        assert await peer.ask_callback("c1", f"l{i}", T0 + 86_400 + i, None) == "pending"
    assert await peer.ask_callback("c1", l1, T0 + 600, "ana") == "leased"
    assert await store.held_callbacks("c1") == {l1: (T0 + 600, "ana")}
    more = ids((await store.lease_due_callbacks("c1", 30, T0 + 90_000))[0])  # now it holds more than are kept
    assert len(more) == 28 and await store.held_callbacks("c1") == {l1: (T0 + 600, "ana")}
    assert await store.clear_callbacks("c1", {l1: (T0 + 600, "ana")}) == 1
    assert await store.held_callbacks("c1") == {} and l0 not in more


async def test_a_callback_asked_for_a_leased_lead_waits_for_its_holder(store: Store, peer: Store) -> None:
    """A callback asked for a lead a node holds is kept for that node: it fetches it (`held_callbacks`), applies it
    and clears it, only as fetched (one asked again meanwhile stays). Every node lists it until then. Handed back
    before it was picked up, the lead waits in the store for it."""
    await campaign(store, n=3)
    l0, l1 = ids(await store.lease_leads("c1", 2, T0))
    assert await peer.ask_callback("c1", l0, T0 + 600, None) == "leased"
    assert await store.held_callbacks("c1") == {l0: (T0 + 600, None)}
    if isinstance(peer, RedisStore):
        assert await peer.held_callbacks("c1") == {}  # not its lead
    assert await peer.callbacks("c1", T0) == [(l0, T0 + 600, None)]
    assert await peer.next_callback_at("c1") is None  # nothing waiting in the store
    assert await peer.ask_callback("c1", l0, T0 + 700, "bob") == "leased"  # asked again: replaces it
    assert await store.clear_callbacks("c1", {l0: (T0 + 600, None)}) == 0  # cleared only as fetched
    assert await store.held_callbacks("c1") == {l0: (T0 + 700, "bob")}
    assert await store.clear_callbacks("c1", {l0: (T0 + 700, "bob")}) == 1
    assert await store.held_callbacks("c1") == {} and await peer.callbacks("c1", T0) == []
    # Asked, then the holder hands the lead back (stopping) before it picked the callback up: the lead waits for it.
    assert await peer.ask_callback("c1", l1, T0 + 800, "ana") == "leased"
    await store.hand_back_lead("c1", l1, {"v": 1, "n": 1}, None, T0 + 10)
    assert ids(await peer.lease_leads("c1", 10, T0 + 11)) == ["l2"]
    assert await peer.next_callback_at("c1") == T0 + 800
    leads, states = await peer.lease_due_callbacks("c1", 10, T0 + 800)
    assert ids(leads) == [l1] and states == {l1: {"v": 1, "n": 1, "cb": T0 + 800, "ag": "ana"}}
    # A lead done by its holder: the callback asked for it goes (a done lead is called back by nobody).
    assert await store.ask_callback("c1", l1, T0 + 900, None) == "leased"
    await peer.release_lead("c1", l1, Outcome.CONNECTED, True, T0 + 801)
    assert await store.callbacks("c1", T0 + 801) == []


async def test_a_handed_back_callback_is_listed_and_leased_when_due(store: Store, peer: Store) -> None:
    """A lead handed back with a callback in its state is listed on every node, and leased at its time ahead of the
    line (the hopper's low-water mark fetched it only when a hopper ran low)."""
    await campaign(store, n=3)
    l0, _ = ids(await store.lease_leads("c1", 2, T0))
    await store.hand_back_lead("c1", l0, {"v": 1, "n": 1, "cb": T0 + 300}, T0 + 300, T0 + 1)
    assert await peer.callbacks("c1", T0 + 1) == [(l0, T0 + 300, None)]
    assert await peer.lease_due_callbacks("c1", 10, T0 + 299) == ([], {})
    leads, states = await peer.lease_due_callbacks("c1", 10, T0 + 301)
    assert ids(leads) == [l0] and states == {l0: {"v": 1, "n": 1, "cb": T0 + 300}}
    assert await peer.callbacks("c1", T0 + 301) == []


async def test_callbacks_a_node_holds_are_listed_by_the_others_while_it_lives(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "published callbacks"), redis_only(peer, "published callbacks")
    await campaign(a, n=1)
    await a.heartbeat(now=T0)
    await a.publish_callbacks("c1", [("l0", T0 + 600, "ana")], T0)
    assert await b.callbacks("c1", T0 + 1) == [("l0", T0 + 600, "ana")]
    assert await a.callbacks("c1", T0 + 1) == []  # its own: the node reads its hopper
    assert await b.callbacks("c1", T0 + 31) == []  # not seen within the lease TTL: dead, its list is not told
    await a.publish_callbacks("c1", [], T0 + 2)
    assert await b.callbacks("c1", T0 + 3) == []


async def test_a_dead_holders_lead_waits_for_the_callback_asked_for_it(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "lease expiry"), redis_only(peer, "lease expiry")
    await campaign(a, n=2)
    (l0,) = ids(await a.lease_leads("c1", 1, T0))
    assert await b.ask_callback("c1", l0, T0 + 600, None) == "leased"
    assert await b.expire_leases(T0 + 40) == [("c1", l0)]  # a died before picking it up
    assert ids(await b.lease_leads("c1", 10, T0 + 41)) == ["l1"]
    leads, states = await b.lease_due_callbacks("c1", 10, T0 + 600)
    assert ids(leads) == [l0] and states == {l0: {"v": 1, "cb": T0 + 600}}


async def test_a_dead_holders_leads_expire_back_with_the_state_it_kept(store: Store, peer: Store) -> None:
    """The holder kept its latest hopper state of each lead with the lease (`checkpoint_lead`); it died. Each lead
    goes back with it: a recycled one waits out its recycle time, one with a callback its callback (listed on every
    node as asked), one without either goes back in line; the next leaser takes the state (attempts, phones). They
    went back afresh: dialed again at once, the callback lost, the attempts counted from zero."""
    a, b = redis_only(store, "checkpoints"), redis_only(peer, "checkpoints")
    await campaign(a, n=4)
    l0, l1, l2 = ids(await a.lease_leads("c1", 3, T0))
    assert await a.checkpoint_lead("c1", l0, {"v": 1, "n": 1, "t": T0 + 7200})  # a no-answer, recycled in 2 h
    assert await a.checkpoint_lead("c1", l1, {"v": 1, "n": 2, "cb": T0 + 600, "ag": "ana"})
    assert await a.checkpoint_lead("c1", l2, {"v": 1, "n": 1, "t": T0 + 5})  # retry time passed by then
    assert not await b.checkpoint_lead("c1", l2, {"v": 1, "n": 9})  # not b's lease: nothing kept
    assert not await a.checkpoint_lead("c1", "l3", {"v": 1, "n": 9})  # not leased at all
    assert sorted(lid for _, lid in await b.expire_leases(T0 + 40)) == [l0, l1, l2]  # a died
    leads, states = await b.lease_leads_with_states("c1", 10, T0 + 41)
    assert ids(leads) == [l2, "l3"] and states == {l2: {"v": 1, "n": 1, "t": T0 + 5}}
    assert await b.callbacks("c1", T0 + 41) == [(l1, T0 + 600, "ana")]
    assert await b.lease_due_callbacks("c1", 10, T0 + 599) == ([], {})
    leads, states = await b.lease_due_callbacks("c1", 10, T0 + 600)
    assert ids(leads) == [l1] and states[l1]["n"] == 2 and states[l1]["cb"] == T0 + 600
    assert await b.lease_leads_with_states("c1", 10, T0 + 7199) == ([], {})
    leads, states = await b.lease_leads_with_states("c1", 10, T0 + 7200)
    assert ids(leads) == [l0] and states == {l0: {"v": 1, "n": 1, "t": T0 + 7200}}


def code(name: str, call_id: str, number: str, *, final: bool = False, drop: bool = False) -> StoredCode:
    return StoredCode(name, call_id, number, Outcome.CONNECTED, final=final, drop=drop)


async def test_a_disposition_asked_for_a_waiting_lead_takes_effect_at_once(store: Store, peer: Store) -> None:
    """A late code taken by a node that no longer holds the lead (`ask_disposition`), for a lead waiting in the store:
    a final code ends it at once (done, its kept state and asked callback forgotten), a wrong party drops the phone
    in what the next leaser gets, and a lead left with no phone ends. The store had no such operation: the lead
    stayed dialable and the next node called the debtor who had just paid."""
    await campaign(store, n=5)  # phones +1555000000i and +1666000000i
    l0, l1, l2 = ids(await store.lease_leads("c1", 3, T0))
    await store.hand_back_lead("c1", l0, {"v": 1, "n": 1, "t": T0 + 7200}, T0 + 7200, T0 + 1)  # recycled: 2 h
    await store.hand_back_lead("c1", l1, {"v": 1, "n": 1, "cb": T0 + 600}, T0 + 600, T0 + 1)  # a callback
    await store.release_lead("c1", l2, Outcome.LOST, False, T0 + 1)  # back in line, no state
    assert await peer.ask_disposition("c1", l0, code("PAID", "k0", "+15550000000", final=True)) == "ended"
    assert await peer.ask_disposition("c1", l1, code("DISPUTE", "k1", "+15550000001", final=True)) == "ended"
    assert await store.callbacks("c1", T0 + 1) == [] and await store.next_callback_at("c1") is None
    assert await peer.ask_disposition("c1", l2, code("WRONG_PARTY", "k2", "+16660000002", drop=True)) == "pending"
    assert await peer.ask_disposition("c1", "l3", code("WRONG_PARTY", "k3", "+15550000003", drop=True)) == "pending"
    assert await store.lead_counts("c1") == {"pending": 3, "leased": 0, "done": 2}
    # The dropped phones reach the next leaser in the lead's state (by place in its list, as the hopper keeps them).
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 2)
    assert ids(leads) == [l2, "l3", "l4"] and states == {l2: {"v": 1, "d": [1]}, "l3": {"v": 1, "d": [0]}}
    assert await peer.lease_leads_with_states("c1", 10, T0 + 8000) == ([], {})  # the ended ones: never again
    # A wrong party on a lead's last usable phone (the other dropped in its kept state) ends it.
    await peer.hand_back_lead("c1", "l3", {"v": 1, "n": 1, "d": [0]}, T0 + 900, T0 + 3)
    assert await store.ask_disposition("c1", "l3", code("WRONG_PARTY", "k4", "+16660000003", drop=True)) == "ended"
    # A number the lead does not have drops nothing.
    await peer.hand_back_lead("c1", "l4", {"v": 1, "n": 1}, None, T0 + 3)
    assert await store.ask_disposition("c1", "l4", code("WRONG_PARTY", "k5", "+19990000000", drop=True)) == "pending"
    leads, states = await store.lease_leads_with_states("c1", 10, T0 + 4)
    assert ids(leads) == ["l4"] and states == {"l4": {"v": 1, "n": 1}}
    assert await store.lead_counts("c1") == {"pending": 0, "leased": 2, "done": 3}
    # Nothing for a lead that is done, removed or unknown.
    await store.add_leads("c1", make_leads(1, start=9))
    assert await store.remove_lead("c1", "l9")
    paid = code("PAID", "k6", "+15550000000", final=True)
    assert [await peer.ask_disposition("c1", lid, paid) for lid in (l0, "l9", "nobody")] == \
        ["done", "removed", "unknown"]
    with pytest.raises(KeyError):
        await store.ask_disposition("nope", l0, paid)


async def test_a_disposition_asked_for_a_leased_lead_waits_for_its_holder(store: Store, peer: Store) -> None:
    """A code asked for a lead a node holds is kept for that node: it fetches it (`held_dispositions`), applies it
    and clears it, only as fetched (a code asked meanwhile stays). A lead that comes back to the store before its
    holder picked the code up (handed back, lost track of) takes it then."""
    await campaign(store, n=4)
    l0, l1, l2 = ids(await store.lease_leads("c1", 3, T0))
    wrong = code("WRONG_PARTY", "k0", "+15550000000", drop=True)
    paid = code("PAID", "k1", "+15550000000", final=True)
    assert await peer.ask_disposition("c1", l0, wrong) == "leased"
    assert await peer.ask_disposition("c1", l0, wrong) == "leased"  # a retried write: kept once
    assert await store.held_dispositions("c1") == {l0: (wrong,)}
    if isinstance(peer, RedisStore):
        assert await peer.held_dispositions("c1") == {}  # not its lead
    assert await peer.ask_disposition("c1", l0, paid) == "leased"
    assert await store.clear_dispositions("c1", {l0: (wrong,)}) == 0  # cleared only as fetched
    assert await store.held_dispositions("c1") == {l0: (wrong, paid)}
    assert await store.clear_dispositions("c1", {l0: (wrong, paid)}) == 1
    assert await store.held_dispositions("c1") == {}
    # Handed back (the holder stopping) before it picked the code up: a final code ends the lead there.
    assert await peer.ask_disposition("c1", l1, code("PAID", "k2", "+15550000001", final=True)) == "leased"
    await store.hand_back_lead("c1", l1, {"v": 1, "n": 1, "cb": T0 + 600}, T0 + 600, T0 + 10)
    # Lost track of with a wrong party kept: back in line, the phone dropped for the next leaser.
    assert await peer.ask_disposition("c1", l2, code("WRONG_PARTY", "k3", "+16660000002", drop=True)) == "leased"
    await store.release_lead("c1", l2, Outcome.LOST, False, T0 + 10)
    assert await store.lead_counts("c1") == {"pending": 2, "leased": 1, "done": 1}
    assert await store.callbacks("c1", T0 + 10) == []  # the ended lead's callback went with it
    leads, states = await peer.lease_leads_with_states("c1", 10, T0 + 11)
    assert ids(leads) == [l2, "l3"] and states == {l2: {"v": 1, "d": [1]}}
    assert await peer.lease_due_callbacks("c1", 10, T0 + 600) == ([], {})
    # A lead its holder ends: the codes kept for it go.
    assert await store.ask_disposition("c1", l2, wrong) == "leased"
    await peer.release_lead("c1", l2, Outcome.CONNECTED, True, T0 + 12)
    assert await peer.held_dispositions("c1") == {} and await store.held_dispositions("c1") == {}


async def test_a_dead_holders_lead_takes_the_codes_kept_for_it(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "lease expiry"), redis_only(peer, "lease expiry")
    await campaign(a, n=3)
    l0, l1 = ids(await a.lease_leads("c1", 2, T0))
    assert await b.ask_disposition("c1", l0, code("PAID", "k0", "+15550000000", final=True)) == "leased"
    assert await b.ask_disposition("c1", l1, code("WRONG_PARTY", "k1", "+15550000001", drop=True)) == "leased"
    assert sorted(await b.expire_leases(T0 + 40)) == [("c1", l0), ("c1", l1)]  # a died before picking them up
    assert await b.lead_counts("c1") == {"pending": 2, "leased": 0, "done": 1}
    leads, states = await b.lease_leads_with_states("c1", 10, T0 + 41)
    assert ids(leads) == [l1, "l2"] and states == {l1: {"v": 1, "d": [0]}}


async def test_remove_pending_lead_only(store: Store) -> None:
    await campaign(store, n=3)
    (leased,) = ids(await store.lease_leads("c1", 1, T0))
    assert leased == "l0"
    assert await store.remove_lead("c1", "l1")
    assert not await store.remove_lead("c1", "l1")
    assert not await store.remove_lead("c1", "l0")  # in flight: the core stops it, not the store
    assert not await store.remove_lead("c1", "never-added")
    assert await store.lead_counts("c1") == {"pending": 1, "leased": 1, "done": 1}
    assert ids(await store.lease_leads("c1", 5, T0)) == ["l2"]


async def test_a_lead_reads_back_as_loaded_wherever_it_is(store: Store) -> None:
    leads = await campaign(store, n=2)
    zoned = Lead("z1", "c1", ("+573001234567",), {"name": "Z"}, country="CO", timezone="America/Bogota",
                 amount_due=120.5, days_past_due=40, segment="retail")
    await store.add_leads("c1", [zoned])
    assert await store.lead("c1", "z1") == zoned  # waiting
    (first,) = await store.lease_leads("c1", 1, T0)
    assert await store.lead("c1", first.lead_id) == first == leads[0]  # leased
    assert await store.lead("c1", "nobody") is None


async def test_lead_counts_of_new_campaign(store: Store) -> None:
    await campaign(store)
    assert await store.lead_counts("c1") == {"pending": 0, "leased": 0, "done": 0}


# ---------------------------------------------------------------------------------------------- attempts


async def test_attempts_upsert_by_call_id(store: Store) -> None:
    a1 = Attempt("call-1", "c1", "l0", "+15550000000", "1000", T0)
    a2 = Attempt("call-2", "c2", "l9", "+15550000009", "1001", T0 + 1)
    a3 = Attempt("call-3", "c1", "l1", "+15550000001", "1000", T0 + 2)
    for a in (a1, a2, a3):
        await store.record_attempt(a)
    done = replace(a1, answered_at=T0 + 5, connected_at=T0 + 5.5, ended_at=T0 + 60, outcome=Outcome.CONNECTED,
                   agent_id="ag1", amd="HUMAN", hangup_cause=16, disposition="promise")
    await store.record_attempt(done)
    assert await store.attempts("c1") == [done, a3]
    assert await store.attempts("c2") == [a2]
    assert await store.attempts() == [done, a2, a3]
    assert await store.attempts("none") == []
    assert (await store.attempt("call-1"), await store.attempt("call-2")) == (done, a2)  # by call id alone
    assert await store.attempt("call-9") is None


async def test_an_attempt_keeps_the_promise_to_pay_and_the_callback_of_its_disposition(store: Store) -> None:
    # They were only in the call.disposition event: the stored history lost the promise and the callback agreed.
    ptp = Attempt("call-1", "c1", "l0", "+15550000000", "1000", T0)
    cb = Attempt("call-2", "c1", "l1", "+15550000001", "1000", T0 + 1)
    for a in (ptp, cb):
        await store.record_attempt(a)
    ptp = replace(ptp, connected_at=T0 + 5, ended_at=T0 + 60, outcome=Outcome.CONNECTED, agent_id="ag1",
                  disposition="PTP", ptp_amount=120.5, ptp_date="2026-12-15")
    cb = replace(cb, connected_at=T0 + 6, ended_at=T0 + 61, outcome=Outcome.CONNECTED, agent_id="ag1",
                 disposition="CALLBACK", callback_at=T0 + 86400.25)
    for a in (ptp, cb):
        await store.record_attempt(a)
    assert await store.attempts("c1") == [ptp, cb]
    assert await store.attempts_page("c1") == [ptp, cb]
    got, got_cb = await store.attempts("c1")
    assert (got.ptp_amount, got.ptp_date, got.callback_at) == (120.5, "2026-12-15", None)
    assert (got_cb.ptp_amount, got_cb.ptp_date, got_cb.callback_at) == (None, None, T0 + 86400.25)


async def test_an_attempt_stored_before_the_promise_fields_reads_back_without_them(store: Store) -> None:
    """A record written by a node of an earlier version (or before the upgrade) has no ptp_amount, ptp_date or
    callback_at: it reads back with None, through the whole history and a page."""
    s = redis_only(store, "older records")
    a = Attempt("call-1", "c1", "l0", "+15550000000", "1000", T0, T0 + 5, T0 + 5.5, T0 + 60, Outcome.CONNECTED,
                "ag1", disposition="PTP")
    await s.record_attempt(a)
    old = {k: v for k, v in a.as_dict().items() if k not in ("ptp_amount", "ptp_date", "callback_at")}
    assert "disposition" in old and "phone_reason" in old  # the form before this change
    await s.client.hset(s._k("c1", "attempts"), "call-1", json.dumps(old, separators=(",", ":")))
    for got in (await s.attempts("c1"), await s.attempts_page("c1")):
        assert got == [a]
        assert (got[0].ptp_amount, got[0].ptp_date, got[0].callback_at) == (None, None, None)


async def test_a_dial_is_recorded_only_while_this_node_holds_the_leads_lease(store: Store, peer: Store) -> None:
    """A node whose lease expired unrenewed (a store outage longer than the TTL) still had the lead in its hopper and
    wrote its dial record, then dialed: another node that leased the lead meanwhile dialed it too. The dial record is
    now written only under the lease, in the same step as its check."""
    await campaign(store, n=1)
    (mine,) = await store.lease_leads("c1", 1, T0)
    dial = Attempt("d-1", "c1", mine.lead_id, mine.phones[0], "1000", T0 + 1)
    assert await store.record_dial(dial) is True
    assert await store.record_dial(dial) is True  # a retry of a record that landed
    assert await store.attempt("d-1") == dial
    if isinstance(store, RedisStore) and isinstance(peer, RedisStore):
        assert await peer.record_dial(replace(dial, call_id="p-1")) is False  # not node-b's lease
        assert await peer.expire_leases(T0 + 3600) == [("c1", mine.lead_id)]  # node-a stopped renewing
        assert await store.record_dial(replace(dial, call_id="d-2")) is False  # back in line: nobody's
        later = T0 + 3600 + store.lost_hold_s  # its call may have been live: held back that long
        (again,) = await peer.lease_leads("c1", 1, later)
        assert again.lead_id == mine.lead_id
        assert await store.record_dial(replace(dial, call_id="d-3")) is False  # node-b's now
        assert await peer.record_dial(replace(dial, call_id="p-2", dialed_at=later + 1)) is True
        assert [a.call_id for a in await store.attempts("c1")] == ["d-1", "p-2"]  # nothing of the refused
        # node-a's next renewal finds the lease gone and says so, once
        await store.renew_leases(now=later + 2)
        assert store.take_lost_leases() == {"c1": [mine.lead_id]}
        assert store.take_lost_leases() == {}
        await peer.renew_leases(now=later + 2)
        assert peer.take_lost_leases() == {}  # node-b holds it


async def test_a_node_that_returns_its_own_overdue_leases_lets_go_of_them(store: Store) -> None:
    s = redis_only(store, "lease expiry")
    await campaign(s, n=2)
    leased = await s.lease_leads("c1", 2, T0)
    assert sorted(lid for _, lid in await s.expire_leases(T0 + 3600)) == sorted(lead.lead_id for lead in leased)
    assert s.take_lost_leases() == {"c1": sorted(lead.lead_id for lead in leased)}


async def test_attempts_page_in_dial_order_after_a_cursor(store: Store) -> None:
    # Recorded out of dial order, two campaigns, ties in dial time broken by call id.
    for call_id, cid, t in [("k5", "c1", T0 + 3), ("k1", "c1", T0 + 1), ("k3", "c2", T0 + 1), ("k2", "c1", T0 + 1),
                            ("k4", "c1", T0 + 2.5), ("k0", "c2", T0)]:
        await store.record_attempt(Attempt(call_id, cid, "l" + call_id, "+1555", "1000", t))
    done = Attempt("k1", "c1", "lk1", "+1555", "1000", T0 + 1, ended_at=T0 + 9, outcome=Outcome.BUSY)
    await store.record_attempt(done)  # an upsert keeps its place

    async def page(cid: str | None = None, **kw: object) -> list[str]:
        return [a.call_id for a in await store.attempts_page(cid, **kw)]  # type: ignore[arg-type]

    assert await page() == ["k0", "k1", "k2", "k3", "k4", "k5"]
    assert await page("c1") == ["k1", "k2", "k4", "k5"]
    assert (await store.attempts_page("c1", limit=1)) == [done]
    assert await page(limit=2) == ["k0", "k1"]
    assert await page(after=(T0 + 1, "k1"), limit=2) == ["k2", "k3"]
    assert await page(after=(T0 + 1, "k3"), limit=2) == ["k4", "k5"]
    assert await page(after=(T0 + 3, "k5")) == []
    assert await page(after=(T0 + 1, "k15")) == ["k2", "k3", "k4", "k5"]  # a cursor between stored ids
    assert await page("c1", after=(T0 + 1, "k2")) == ["k4", "k5"]
    assert await page(since=T0 + 1, until=T0 + 3) == ["k1", "k2", "k3", "k4"]  # since inclusive, until not
    assert await page(since=T0 + 2.5, until=T0 + 2.5) == []
    assert await page("c1", after=(T0 + 1, "k1"), since=T0 + 2) == ["k4", "k5"]  # the later bound wins
    assert await page("c1", after=(T0 + 2.5, "k4"), since=T0) == ["k5"]
    assert await page("c2", after=(T0, "k0"), until=T0 + 1) == []
    assert await page("none") == []
    assert await page(limit=0) == []


async def test_attempts_page_walks_a_large_history_exactly_once(store: Store) -> None:
    dials = [(f"x{i:04d}", T0 + (i * 7919 % 1000) / 4) for i in range(1000)]  # shuffled, with many equal times
    for call_id, t in dials:
        await store.record_attempt(Attempt(call_id, "c1", "l", "+1555", "1000", t))
    walked: list[tuple[float, str]] = []
    after: tuple[float, str] | None = None
    while True:
        got = await store.attempts_page("c1", after=after, limit=97)
        walked += [(a.dialed_at, a.call_id) for a in got]
        if len(got) < 97:
            break
        after = walked[-1]
    assert walked == sorted((t, c) for c, t in dials)


# ---------------------------------------------------------------------------------------------- beyond the protocol


async def test_lease_expiry_returns_dead_nodes_leads(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "lease expiry"), redis_only(peer, "lease expiry")
    await campaign(a, n=6)
    assert ids(await a.lease_leads("c1", 3, T0)) == ["l0", "l1", "l2"]  # expire at T0 + 30
    assert ids(await b.lease_leads("c1", 1, T0)) == ["l3"]
    await b.record_attempt(Attempt("call-b", "c1", "l3", "+1555", "1000", T0))
    assert await a.renew_leases(now=T0 + 20) == 3  # a is alive; b stops renewing
    assert await a.expire_leases(T0 + 40) == [("c1", "l3")]
    assert await a.lead_counts("c1") == {"pending": 3, "leased": 3, "done": 0}
    # History intact, and b's call, which nobody can ask b's PBX about, is final: lost when b was found dead.
    (lost,) = await a.attempts("c1")
    assert (lost.call_id, lost.outcome, lost.ended_at) == ("call-b", Outcome.LOST, T0 + 40)
    # b comes back late and reports its call: the lead is no longer its own, the report changes nothing.
    await b.release_lead("c1", "l3", Outcome.CONNECTED, True, T0 + 41)
    assert await a.lead_counts("c1") == {"pending": 3, "leased": 3, "done": 0}
    assert await a.expire_leases(T0 + 60) == [("c1", "l0"), ("c1", "l1"), ("c1", "l2")]
    # a's leads had no call in flight: back at their places at once; l3 waits out the hold (2 x TTL).
    assert ids(await b.lease_leads("c1", 4, T0 + 61)) == ["l0", "l1", "l2", "l4"]
    # a's token is stale now (fencing): its release must not end b's lease.
    await a.release_lead("c1", "l0", Outcome.BUSY, True, T0 + 62)
    assert await a.lead_counts("c1") == {"pending": 2, "leased": 4, "done": 0}
    await b.release_lead("c1", "l0", Outcome.BUSY, True, T0 + 62)
    assert await a.lead_counts("c1") == {"pending": 2, "leased": 3, "done": 1}
    assert ids(await b.lease_leads("c1", 4, T0 + 40 + 60 - 1)) == ["l5"]
    assert ids(await b.lease_leads("c1", 4, T0 + 40 + 60)) == ["l3"]  # at its old place, history kept
    assert [x.outcome for x in await a.attempts("c1")] == [Outcome.LOST]


async def test_final_record_clears_in_flight_and_lost_is_never_overwritten_blindly(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "lease expiry"), redis_only(peer, "lease expiry")
    await campaign(a, n=2)
    assert ids(await b.lease_leads("c1", 2, T0)) == ["l0", "l1"]
    done = Attempt("call-0", "c1", "l0", "+1555", "1000", T0)
    await b.record_attempt(done)
    await b.record_attempt(replace(done, ended_at=T0 + 5, outcome=Outcome.BUSY))  # final: not in flight
    await b.record_attempt(Attempt("call-1", "c1", "l1", "+1556", "1000", T0 + 1))
    # b dies with l0 finished but not yet released, l1 ringing.
    assert await a.expire_leases(T0 + 31) == [("c1", "l0"), ("c1", "l1")]
    got = {x.call_id: x for x in await a.attempts("c1")}
    assert got["call-0"].outcome is Outcome.BUSY and got["call-0"].ended_at == T0 + 5
    assert got["call-1"].outcome is Outcome.LOST and got["call-1"].ended_at == T0 + 31
    assert ids(await a.lease_leads("c1", 2, T0 + 32)) == ["l0"]  # l1 waits until T0 + 31 + 60


async def test_priority_and_eligible_time(store: Store) -> None:
    s = redis_only(store, "priorities")
    await campaign(s, n=2)
    assert await s.add_leads_at("c1", make_leads(1, start=5), priority=5) == 1
    assert await s.add_leads_at("c1", make_leads(1, start=6), eligible_at=T0 + 100) == 1
    assert await s.lead_counts("c1") == {"pending": 4, "leased": 0, "done": 0}
    assert ids(await s.lease_leads("c1", 10, T0)) == ["l5", "l0", "l1"]
    assert await s.release_lead_at("c1", "l0", T0 + 50)
    assert ids(await s.lease_leads("c1", 10, T0 + 60)) == ["l0"]
    assert ids(await s.lease_leads("c1", 10, T0 + 100)) == ["l6"]


async def test_dnc_lists(store: Store) -> None:
    s = redis_only(store, "DNC lists")
    assert await s.dnc_add(["+1555001", "+1555002"]) == 2
    assert await s.dnc_add(["+1555003"], campaign_id="c1") == 1
    assert await s.dnc_contains("+1555001")
    assert await s.dnc_contains("+1555001", campaign_id="c1")  # global applies to every campaign
    assert await s.dnc_contains("+1555003", campaign_id="c1")
    assert not await s.dnc_contains("+1555003")
    assert not await s.dnc_contains("+1555003", campaign_id="c2")
    assert await s.dnc_blocked(["+1555001", "+1555003", "+1555999"], "c1") == {"+1555001", "+1555003"}
    assert await s.dnc_remove(["+1555001"]) == 1
    assert not await s.dnc_contains("+1555001", campaign_id="c1")


async def test_abandon_windows_are_shared(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "abandon windows"), redis_only(peer, "abandon windows")
    day = 86400.0
    now = T0
    for t, abandoned in [(now - 40 * day, True)] * 3 + [(now - 20 * day, False)] * 8 + [(now - 20 * day, True)] * 2:
        await a.record_live("c1", t, abandoned)
    for i in range(10):
        await b.record_live("c1", now - 7200, i == 0)
    for i in range(5):
        await a.record_live("c1", now - 600, i == 0)
    assert await a.abandon_counts("c1", now, 86400) == (2, 15)
    assert await b.abandon_counts("c1", now, 30 * day) == (4, 25)
    assert await a.abandon_counts("c1", now) == (7, 28)
    assert await a.abandon_rate("c1", now, 86400) == pytest.approx(2 / 15)
    assert await a.abandon_rate("c1", now, 300) == 0.0
    assert await a.abandon_rate("other", now, 86400) == 0.0


async def test_counters_and_nodes(store: Store, peer: Store) -> None:
    a, b = redis_only(store, "counters"), redis_only(peer, "counters")
    assert await a.did_incr("+15550100", T0) == (1, 1)
    assert await b.did_take("+15550100", T0, hour_cap=2, day_cap=10)
    assert not await a.did_take("+15550100", T0, hour_cap=2, day_cap=10)
    assert await a.did_counts("+15550100", T0 + 3600) == (0, 2)  # a new hour, the same day
    await b.did_give_back("+15550100", T0)  # a call not made: its use goes back, in its hour and day
    assert await a.did_counts("+15550100", T0) == (1, 1)
    for _ in range(2):
        await a.did_give_back("+15550100", T0)
    assert await a.did_counts("+15550100", T0) == (0, 0)  # never below zero
    assert await b.did_take("+15550100", T0, hour_cap=2, day_cap=10)
    await campaign(a)
    for i, t in enumerate([T0 - 3 * 86400, T0 - 7200, T0 - 60]):
        await a.record_attempt(Attempt(f"x{i}", "c1", "l0", "+1555", "1000", t))
    await a.record_attempt(Attempt("x2", "c1", "l0", "+1555", "1000", T0 - 60, outcome=Outcome.BUSY))  # no recount
    assert await a.lead_attempt_count("c1", "l0", T0) == 3
    assert await a.lead_attempt_count("c1", "l0", T0, 3600) == 1
    assert await a.lead_attempt_count("c1", "l0", T0, 86400) == 2
    assert await a.lead_attempt_count("c1", "l0", T0, 7 * 86400) == 3
    await a.heartbeat(["ag1", "ag2"], now=T0)
    await b.heartbeat([], now=T0 - 100)
    nodes = {n.node_id: n for n in await a.nodes(now=T0, max_age_s=30)}
    assert nodes["node-a"].agents == ("ag1", "ag2") and nodes["node-a"].alive
    assert not nodes["node-b"].alive
    await a.forget_node("node-b")
    assert [n.node_id for n in await a.nodes(now=T0)] == ["node-a"]


async def test_attempts_page_indexes_what_older_nodes_wrote(store: Store) -> None:
    """The page reads a zset of dial times that nodes of earlier versions did not write: history from before the
    upgrade, and records such a node still writes during a rolling upgrade, are indexed on read."""
    s = redis_only(store, "older nodes")
    r = s.client

    def k(name: str) -> str:
        return s._k("c1", name)

    async def old_node_records(call_id: str, t: float) -> None:  # what RECORD_ATTEMPT wrote before the index
        last = float(await r.get(k("attempt_last")) or 0) + 1
        await r.set(k("attempt_last"), repr(last))
        await r.hset(k("attempts"), call_id, json.dumps(Attempt(call_id, "c1", "l", "+1555", "1000", t).as_dict()))
        await r.zadd(k("attempt_order"), {call_id: last})
        await r.sadd(s._g("attempt_campaigns"), "c1")

    for i in range(5):
        await old_node_records(f"o{i}", T0 + 10 - i)
    assert [a.call_id for a in await s.attempts_page("c1", limit=3)] == ["o4", "o3", "o2"]
    await s.record_attempt(Attempt("n1", "c1", "l", "+1555", "1000", T0 + 7.5))  # this version
    await old_node_records("o5", T0 + 7.2)  # an older node, still up
    await s.record_attempt(Attempt("n2", "c1", "l", "+1555", "1000", T0 + 1))
    assert [a.call_id for a in await s.attempts_page(None, limit=4)] == ["n2", "o4", "o3", "o5"]
    assert [a.call_id for a in await s.attempts_page("c1", after=(T0 + 7.2, "o5"))] == ["n1", "o2", "o1", "o0"]


# ---------------------------------------------------------------------------------------------- redis restart


@pytest.mark.redis
async def test_redis_restart_loses_nothing_accepted(redis_server: RedisServer) -> None:
    prefix = f"r{uuid.uuid4().hex[:10]}:"
    store = open_store(f"{redis_server.url}?prefix={prefix}", node_id="node-r")
    assert isinstance(store, RedisStore)
    try:
        await campaign(store, n=200)
        leased = ids(await store.lease_leads("c1", 50, T0))
        for lid in leased[:20]:
            await store.release_lead("c1", lid, Outcome.NO_ANSWER, True, T0)
        for i, lid in enumerate(leased):
            await store.record_attempt(Attempt(f"call-{i}", "c1", lid, "+1555", "1000", T0 + i))
        await store.dnc_add(["+1555000"])
        await store.record_live("c1", T0, True)
        before = (await store.lead_counts("c1"), await store.attempts(), await store.list_campaigns(),
                  await store.abandon_counts("c1", T0 + 1, 86400))
        assert before[0] == {"pending": 150, "leased": 30, "done": 20}

        redis_server.kill()  # a crash, not a clean shutdown
        assert not await store.ping()
        with pytest.raises(Exception):  # noqa: B017 - redis-py's ConnectionError; the runtime retries writes
            await store.lead_counts("c1")
        redis_server.start()

        assert await store.ping()  # the same client reconnects by itself
        after = (await store.lead_counts("c1"), await store.attempts(), await store.list_campaigns(),
                 await store.abandon_counts("c1", T0 + 1, 86400))
        assert after == before
        assert await store.dnc_contains("+1555000")
        await store.release_lead("c1", leased[20], Outcome.BUSY, True, T0)  # leases and tokens survived
        fresh = ids(await store.lease_leads("c1", 10, T0))
        assert not set(fresh) & set(leased)
        assert await store.lead_counts("c1") == {"pending": 140, "leased": 39, "done": 21}
    finally:
        await store.aclose()


# ---------------------------------------------------------------------------------------------- store URLs


def test_store_urls_parse() -> None:
    assert parse_store_url("memory://").kind == "memory"
    assert isinstance(open_store("memory://"), InMemoryStore)
    plain = parse_store_url("redis://u:s%40cret@db.example:6380/2?prefix=m1:&node_id=n1&lease_ttl=15")
    assert (plain.kind, plain.hosts, plain.db, plain.username, plain.password) == (
        "plain", [("db.example", 6380)], 2, "u", "s@cret")
    assert (plain.prefix, plain.node_id, plain.lease_ttl_s, plain.tls) == ("m1:", "n1", 15.0, False)
    assert parse_store_url("rediss://:pw@h").tls
    assert parse_store_url("rediss://:pw@h").hosts == [("h", 6379)]
    sentinel = parse_store_url("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/3")
    assert (sentinel.kind, sentinel.hosts, sentinel.service_name, sentinel.db) == (
        "sentinel", [("s1", 26379), ("s2", 26379), ("::1", 26380)], "mymaster", 3)
    assert parse_store_url("redis+sentinel://s1/mymaster").db == 0
    cluster = parse_store_url("redis+cluster://n1:7000,n2:7001")
    assert (cluster.kind, cluster.hosts) == ("cluster", [("n1", 7000), ("n2", 7001)])
    assert parse_store_url("redis://n1:7000,n2:7001/?cluster=1").kind == "cluster"


@pytest.mark.parametrize(("url", "problem"), [
    ("localhost:6379", "missing scheme"),
    ("mysql://u:topsecret@h/db", "unsupported scheme"),
    ("redis://:topsecret@h:99999/0", "bad port"),
    ("redis://:topsecret@h:6379/zero", "database"),
    ("redis://:topsecret@h1,h2", "several hosts"),
    ("redis+sentinel://:topsecret@s1:26379", "service name"),
    ("redis+cluster://:topsecret@n1:7000/3", "only database 0"),
    ("redis://:topsecret@h/?colour=red", "unknown option 'colour'"),
    ("redis://:topsecret@h/?password=topsecret", "unknown option 'password'"),
    ("redis://:topsecret@h/?lease_ttl=soon", "lease_ttl"),
    ("redis://:topsecret@h/?prefix=a{b}", "prefix"),
    ("redis://u:top@secret@/0", "no host"),
    ("redis://:topsecret@h/?ssl_ca_certs=/x", "rediss://"),
])
def test_store_url_errors_name_the_problem_not_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_store_url(url)
    assert problem in str(err.value)
    assert "secret" not in str(err.value)


def test_redact_url() -> None:
    assert redact_url("redis://user:pa:ss@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis+sentinel://:x@s1,s2/m?sentinel_password=y&prefix=p") == (
        "redis+sentinel://:***@s1,s2/m?sentinel_password=***&prefix=p")
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(store: Store) -> None:
    """1,000 writes at once (API requests on top of the engine's traffic): redis-py's default pool raised "Too
    many connections" past 100, and a failed store write pauses dialing. They now queue for a connection."""
    s = redis_only(store, "connection pool")
    await s.save_campaign(CampaignSettings(campaign_id="c1"))
    atts = [Attempt(f"k{i}", "c1", f"L{i}", "+15550000001", "1000", T0 + i) for i in range(1000)]
    await asyncio.gather(*(s.record_attempt(a) for a in atts))
    assert len(await s.attempts("c1")) == 1000


async def test_of_two_creates_of_one_campaign_exactly_one_wins(store: Store, peer: Store) -> None:
    """Two creates of one id at once (two API requests, two nodes): both used to be saved, the second overwriting
    the first's settings while both clients were told 201."""
    first, second = CampaignSettings(campaign_id="c9", name="first"), CampaignSettings(campaign_id="c9", name="second")
    won = await asyncio.gather(store.create_campaign(first), peer.create_campaign(second))
    assert sorted(won) == [False, True]
    kept = await store.get_campaign("c9")
    assert kept is not None and kept.name == ("first" if won[0] else "second")
    assert [c.campaign_id for c in await peer.list_campaigns()].count("c9") == 1
    assert not await store.create_campaign(first)


async def test_campaign_updates_through_two_nodes_at_once_all_land(store: Store, peer: Store) -> None:
    """Each edit reads the definition, changes it and writes it; 100 edits at once through two nodes (each adds
    one line) must all count: a write over a definition changed since its read would lose the other's edit."""
    await store.save_campaign(CampaignSettings(campaign_id="c1", name="C1", max_lines=0))

    def one_more(s: CampaignSettings) -> CampaignSettings:
        return replace(s, max_lines=s.max_lines + 1)

    done = await asyncio.gather(*((store if i % 2 else peer).update_campaign("c1", one_more) for i in range(100)))
    assert sorted(after.max_lines for _, after in (d for d in done if d is not None)) == list(range(1, 101))
    assert all(d is not None and d[1].max_lines == d[0].max_lines + 1 for d in done)
    kept = await peer.get_campaign("c1")
    assert kept is not None and (kept.max_lines, kept.name) == (100, "C1")


async def test_a_campaign_update_refused_or_of_no_campaign_writes_nothing(store: Store) -> None:
    assert await store.update_campaign("nope", lambda s: s) is None
    assert await store.get_campaign("nope") is None
    await store.save_campaign(CampaignSettings(campaign_id="c1", name="C1"))

    def refuse(s: CampaignSettings) -> CampaignSettings:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await store.update_campaign("c1", refuse)
    kept = await store.get_campaign("c1")
    assert kept is not None and kept.name == "C1"


async def test_a_campaign_update_outrun_at_every_try_is_busy_and_writes_nothing(store: Store,
                                                                                backend: Backend) -> None:
    """Another writer changes the definition between each read and its compare-and-set: the edit gives up
    (CampaignBusy, for a 409) rather than overwrite it or retry for ever."""
    import redis

    from dialer.ports import CampaignBusy

    s = redis_only(store, "compare-and-set")
    await s.save_campaign(CampaignSettings(campaign_id="c1", name="C1"))
    key = s._k("c1", "def")
    meddler: redis.Redis | redis.RedisCluster
    if backend.name == "cluster":  # any one node: the client finds the key's own
        meddler = redis.RedisCluster.from_url(backend.url.replace("redis+cluster://", "redis://").split(",")[0],
                                              decode_responses=True)
    else:
        meddler = redis.Redis.from_url(backend.url, decode_responses=True)
    calls = 0

    def outrun(c: CampaignSettings) -> CampaignSettings:
        nonlocal calls
        calls += 1
        meddler.set(key, json.dumps(json.loads(meddler.get(key) or "{}") | {"name": f"other{calls}"}))
        return replace(c, max_lines=7)

    try:
        with pytest.raises(CampaignBusy, match="c1"):
            await s.update_campaign("c1", outrun)
    finally:
        meddler.close()
    kept = await s.get_campaign("c1")
    assert kept is not None and (kept.name, kept.max_lines) == (f"other{calls}", CampaignSettings("c1").max_lines)
    assert calls > 1


async def test_a_campaigns_status_is_kept_and_every_change_moves_the_version(store: Store, peer: Store) -> None:
    """The status asked of a campaign (start/pause/stop through any node) is kept with it, and the campaign version
    nodes poll moves after every create, edit and status change, each seen by the other node once it moved."""
    v0 = await peer.campaign_version()
    assert await store.set_campaign_status("c1", CampaignStatus.RUNNING) is None  # no campaign: nothing written
    assert await store.campaign_status("c1") is None and await peer.campaign_version() == v0
    assert await store.create_campaign(CampaignSettings(campaign_id="c1", name="C1"))
    v1 = await peer.campaign_version()
    assert v1 > v0 and await peer.campaign_status("c1") is CampaignStatus.CREATED
    assert await peer.campaign_statuses() == {"c1": CampaignStatus.CREATED}
    assert await store.set_campaign_status("c1", CampaignStatus.RUNNING) is CampaignStatus.CREATED
    v2 = await peer.campaign_version()
    assert v2 > v1 and await peer.campaign_status("c1") is CampaignStatus.RUNNING
    assert await peer.set_campaign_status("c1", CampaignStatus.PAUSED) is CampaignStatus.RUNNING
    v3 = await store.campaign_version()
    assert v3 > v2 and await store.campaign_statuses() == {"c1": CampaignStatus.PAUSED}
    done = await peer.update_campaign("c1", lambda c: replace(c, abandon_target=0.01))
    assert done is not None and await store.campaign_version() > v3
    kept = await store.get_campaign("c1")
    assert kept is not None and kept.abandon_target == 0.01
    assert await store.campaign_status("c1") is CampaignStatus.PAUSED  # an edit leaves the status as it was
    v4 = await store.campaign_version()
    assert await store.update_campaign("nope", lambda c: c) is None and await store.campaign_version() == v4
    await store.save_campaign(CampaignSettings(campaign_id="c2"))
    assert await peer.campaign_version() > v4
    assert await peer.campaign_statuses() == {"c1": CampaignStatus.PAUSED, "c2": CampaignStatus.CREATED}



async def test_a_pause_never_lands_over_a_stop(store: Store, peer: Store) -> None:
    """A pause and a stop at the same moment through two nodes: the pause read "running", the stop landed, and the
    pause was written over it. Checked and written in one step, the pause finds the stop and writes nothing."""
    assert await store.create_campaign(CampaignSettings(campaign_id="c1"))
    assert await store.set_campaign_status("c1", CampaignStatus.RUNNING) is CampaignStatus.CREATED
    assert await peer.set_campaign_status("c1", CampaignStatus.STOPPED) is CampaignStatus.RUNNING
    v = await peer.campaign_version()
    kept = await store.set_campaign_status("c1", CampaignStatus.PAUSED, unless=CampaignStatus.STOPPED)
    assert kept is CampaignStatus.STOPPED  # nothing written, nothing announced
    assert await peer.campaign_status("c1") is CampaignStatus.STOPPED and await peer.campaign_version() == v
    assert await store.set_campaign_status("c1", CampaignStatus.RUNNING, unless=CampaignStatus.STOPPED) is \
        CampaignStatus.STOPPED
    assert await store.set_campaign_status("c1", CampaignStatus.RUNNING) is CampaignStatus.STOPPED  # a start does
    assert await peer.set_campaign_status("c1", CampaignStatus.PAUSED, unless=CampaignStatus.STOPPED) is \
        CampaignStatus.RUNNING
    assert await store.campaign_status("c1") is CampaignStatus.PAUSED and await store.campaign_version() > v


@pytest.mark.redis
async def test_a_burst_through_sentinel_waits_for_a_connection_instead_of_failing(
        redis_sentinel: RedisSentinel) -> None:
    """The Sentinel-managed pool was redis-py's plain one: past 100 commands in flight it raised "Too many
    connections" (a failed store write pauses dialing), as the plain client's pool did before it blocked."""
    s = open_store(f"{redis_sentinel.url}?prefix=t{uuid.uuid4().hex[:10]}:", node_id="node-a")
    assert isinstance(s, RedisStore)
    try:
        await s.save_campaign(CampaignSettings(campaign_id="c1"))
        atts = [Attempt(f"k{i}", "c1", f"L{i}", "+15550000001", "1000", T0 + i) for i in range(1000)]
        await asyncio.gather(*(s.record_attempt(a) for a in atts))
        assert len(await s.attempts("c1")) == 1000
    finally:
        await s.aclose()


def test_every_redis_client_has_a_blocking_pool_of_a_hundred() -> None:
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool

    from dialer.store_factory import build_client

    for url in ("redis://h:6379/0", "rediss://h:6379/0", "redis+sentinel://s1,s2/mymaster/2",
                "rediss+sentinel://s1/mymaster"):
        pool = build_client(parse_store_url(url)).connection_pool  # type: ignore[union-attr]
        assert isinstance(pool, BlockingConnectionPool), url
        assert (pool.max_connections, pool.timeout) == (100, 5.0), url
        if "sentinel" in url:
            assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster", url
            assert pool.connection_kwargs["db"] == (2 if url.endswith("/2") else 0), url
    for url in ("redis+cluster://n1:7000,n2:7001", "rediss://n1:7000/?cluster=1"):
        cluster = build_client(parse_store_url(url))
        assert isinstance(cluster, WaitingRedisCluster), url
        assert (cluster.max_in_flight, cluster.wait_s) == (100, 5.0), url


@pytest.mark.redis
async def test_a_cluster_client_waits_its_turn_up_to_its_timeout(redis_cluster: RedisClusterServers) -> None:
    """Commands and pipelines beyond the turns wait for one (a pipeline's own retries take no second turn); one
    that waits longer than the socket timeout fails as the blocking pool does, a ConnectionError."""
    import redis
    from redis.asyncio.cluster import ClusterNode

    client = WaitingRedisCluster(startup_nodes=[ClusterNode("127.0.0.1", redis_cluster.ports[0])], max_in_flight=2,
                                 wait_s=0.3, decode_responses=True)
    prefix = f"t{uuid.uuid4().hex[:10]}:"

    async def piped(i: int) -> list[object]:
        pipe = client.pipeline()
        pipe.incr(f"{prefix}{{k{i % 7}}}")
        pipe.incr(f"{prefix}{{j{i % 5}}}")  # another slot, most often on another node
        return await pipe.execute()

    try:
        await asyncio.gather(*(piped(i) for i in range(60)), *(client.incr(f"{prefix}n{i}") for i in range(60)))
        assert sum([int(await client.get(f"{prefix}{{k{i}}}") or 0) for i in range(7)]) == 60
        async with client.turn(), client.turn():  # nested (redis-py re-sending from a pipeline): no second turn
            assert await client.incr(f"{prefix}nested") == 1
        release = asyncio.Event()

        async def hold() -> None:
            async with client.turn():
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            await client.incr(f"{prefix}late")
        async def late() -> object:
            return await client.incr(f"{prefix}late")

        waiting = asyncio.create_task(late())
        await asyncio.sleep(0.1)
        release.set()
        assert await waiting == 1
        await asyncio.gather(*holders)
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------------------------- webhook events kept


def _event(n: int, kind: str = "call.ended") -> str:
    return json.dumps({"type": kind, "data": {"number": f"+57300{n:07d}"}, "id": f"i-{n}", "ts": T0 + n})


async def test_webhook_events_given_up_are_kept_listed_in_pages_and_dropped(store: Store, peer: Store) -> None:
    assert await store.failed_webhooks() == [] and await store.failed_webhook_counts() == {}
    kinds = ["call.ended", "call.disposition", "agent.state", "call.ended", "call.disposition"]
    hooks = ["https://a.example", "https://a.example", "https://b.example", "https://b.example", "https://a.example"]
    kept = [await store.keep_failed_webhook(h, k, f"i-{n}", _event(n, k), "HTTP 503", T0 + n, 100)
            for n, (h, k) in enumerate(zip(hooks, kinds, strict=True))]
    assert [d for _, d in kept] == [0] * 5
    assert [i for i, _ in kept] == sorted(i for i, _ in kept) and len({i for i, _ in kept}) == 5  # ids rise
    rows = await peer.failed_webhooks()  # another node sees them
    assert [(r.hook, r.kind, r.delivery, r.reason, r.at, r.tries) for r in rows] == [
        (h, k, f"i-{n}", "HTTP 503", T0 + n, 1) for n, (h, k) in enumerate(zip(hooks, kinds, strict=True))]
    assert json.loads(rows[0].event)["data"]["number"] == "+573000000000"
    first, second = await store.failed_webhooks(limit=2), await store.failed_webhooks(after=rows[1].id, limit=2)
    assert [r.id for r in first + second] == [r.id for r in rows[:4]]
    assert [r.delivery for r in await store.failed_webhooks(hook="https://a.example")] == ["i-0", "i-1", "i-4"]
    assert [r.delivery for r in await store.failed_webhooks(kinds=["call.disposition"])] == ["i-1", "i-4"]
    assert [r.delivery for r in await store.failed_webhooks(hook="https://b.example", kinds=["call."])] == ["i-3"]
    assert [r.delivery for r in await store.failed_webhooks(limit=1, kinds=["agent."])] == ["i-2"]
    assert await peer.failed_webhook_counts() == {"https://a.example": 3, "https://b.example": 2}
    assert [r.delivery for r in await store.get_failed_webhooks([rows[4].id, rows[0].id, 999_999])] == ["i-0", "i-4"]

    assert await peer.drop_failed_webhooks([rows[0].id, rows[2].id, 999_999]) == 2
    assert await store.drop_failed_webhooks([rows[0].id]) == 0 and await store.drop_failed_webhooks([]) == 0
    assert [r.delivery for r in await store.failed_webhooks()] == ["i-1", "i-3", "i-4"]
    assert await store.failed_webhook_counts() == {"https://a.example": 2, "https://b.example": 1}


async def test_a_webhook_event_given_up_again_is_kept_once(store: Store, peer: Store) -> None:
    """A redelivery given up again updates its entry (reason, time, one more try), keeping its id: never twice."""
    first, _ = await store.keep_failed_webhook("https://a.example", "call.ended", "i-1", _event(1), "HTTP 404",
                                               T0, 10)
    other, _ = await store.keep_failed_webhook("https://b.example", "call.ended", "i-1", _event(1), "HTTP 500",
                                               T0, 10)  # the same event given up by another hook: its own entry
    again, dropped = await peer.keep_failed_webhook("https://a.example", "call.ended", "i-1", _event(1),
                                                    "ConnectError", T0 + 60, 10)
    assert (again, dropped) == (first, 0) and other != first
    (row,) = await store.failed_webhooks(hook="https://a.example")
    assert (row.id, row.reason, row.at, row.tries) == (first, "ConnectError", T0 + 60, 2)
    assert await store.failed_webhook_counts() == {"https://a.example": 1, "https://b.example": 1}
    # Dropped (delivered at last), then given up once more: kept anew.
    assert await store.drop_failed_webhooks([first]) == 1
    anew, _ = await store.keep_failed_webhook("https://a.example", "call.ended", "i-1", _event(1), "HTTP 500",
                                              T0 + 120, 10)
    assert anew > other
    assert [(r.id, r.tries) for r in await store.failed_webhooks(hook="https://a.example")] == [(anew, 1)]


async def test_kept_webhook_events_are_bounded_the_oldest_dropped_first(store: Store) -> None:
    dropped = [(await store.keep_failed_webhook("https://a.example", "call.ended", f"i-{n}", _event(n), "HTTP 500",
                                                T0 + n, 3))[1] for n in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [r.delivery for r in await store.failed_webhooks()] == ["i-2", "i-3", "i-4"]
    assert await store.failed_webhook_counts() == {"https://a.example": 3}
    # A lower bound (settings changed) drops all that are over it at the next keep.
    _, over = await store.keep_failed_webhook("https://b.example", "call.ended", "i-9", _event(9), "shutdown", T0, 2)
    assert over == 2
    assert [(r.hook, r.delivery) for r in await store.failed_webhooks()] == [("https://a.example", "i-4"),
                                                                           ("https://b.example", "i-9")]
    assert await store.failed_webhook_counts() == {"https://a.example": 1, "https://b.example": 1}
    # Kept again from the same bound: the one already there is updated, nothing else goes.
    assert (await store.keep_failed_webhook("https://a.example", "call.ended", "i-4", _event(4), "HTTP 500",
                                            T0 + 9, 2))[1] == 0
    assert len(await store.failed_webhooks()) == 2


@pytest.mark.redis
async def test_kept_webhook_events_survive_a_redis_restart_and_a_new_node(redis_server: RedisServer) -> None:
    prefix = f"w{uuid.uuid4().hex[:10]}:"
    store = open_store(f"{redis_server.url}?prefix={prefix}", node_id="node-w")
    try:
        kept, _ = await store.keep_failed_webhook("https://a.example", "call.disposition", "i-7",
                                                  _event(7, "call.disposition"), "shutdown", T0, 10)
    finally:
        assert isinstance(store, RedisStore)
        await store.aclose()
    redis_server.restart()  # a clean stop: the AOF is flushed
    later = open_store(f"{redis_server.url}?prefix={prefix}", node_id="node-x")
    try:
        (row,) = await later.failed_webhooks()
        assert (row.id, row.kind, row.reason, json.loads(row.event)["type"]) == (kept, "call.disposition",
                                                                                 "shutdown", "call.disposition")
    finally:
        assert isinstance(later, RedisStore)
        await later.aclose()


# ---------------------------------------------------------------------------------------------- webhook outbox


def _out(n: int, order: int, hook: str = "https://a.example", kind: str = "call.ended") -> OutboxEntry:
    body = json.dumps({"type": kind, "data": {"note": f"\"{n}\" é/\\n"}, "id": f"i-{n}", "ts": T0 + n})
    return OutboxEntry(hook, kind, f"i-{n}", body, order)


async def test_an_outbox_left_by_an_earlier_run_becomes_kept_events_in_the_order_queued(store: Store) -> None:
    puts = [_out(1, 3), _out(2, 1, "https://b.example"), _out(3, 2), _out(4, 4)]
    await store.outbox_write(puts[:2], [])
    await store.outbox_write(puts[2:], [("https://a.example", "i-4"), ("https://a.example", "i-9")])  # i-9: none
    await store.outbox_write([], [("https://a.example", "i-4")])  # delivered: forgotten
    # One was kept already (given up) before its outbox entry went: it stays as it is, once.
    kept_id, _ = await store.keep_failed_webhook("https://a.example", "call.ended", "i-3", puts[2].event,
                                                 "HTTP 404", T0, 100)
    rows, dropped = await store.outbox_claim(None, "node restarted", T0 + 5, 100)
    assert dropped == 0
    assert [(r.hook, r.kind, r.delivery, r.reason, r.at) for r in rows] == [  # in id order
        ("https://a.example", "call.ended", "i-3", "HTTP 404", T0),
        ("https://b.example", "call.ended", "i-2", "node restarted", T0 + 5),
        ("https://a.example", "call.ended", "i-1", "node restarted", T0 + 5)]
    assert rows[0].id == kept_id and rows[0].tries == 1
    assert [r.event for r in rows] == [puts[2].event, puts[1].event, puts[0].event]  # bodies byte for byte
    assert await store.failed_webhooks() == rows
    assert await store.outbox_claim(None, "node restarted", T0 + 6, 100) == ([], 0)  # the outbox is gone


async def test_a_claim_over_the_kept_bound_drops_the_oldest(store: Store) -> None:
    await store.outbox_write([_out(n, n) for n in range(5)], [])
    rows, dropped = await store.outbox_claim(None, "node restarted", T0, 3)
    assert dropped == 2 and [r.delivery for r in rows] == ["i-2", "i-3", "i-4"]


async def test_a_gone_nodes_outbox_is_claimed_by_another_node_once(backend: Backend) -> None:
    a = redis_only(backend.make("node-a"), "node registry")
    b, c = backend.make("node-b"), backend.make("node-c")
    await a.heartbeat(now=T0)
    await a.outbox_write([_out(1, 1), _out(2, 2)], [])
    await b.outbox_write([_out(3, 1)], [])  # b never heartbeats: gone as soon as it is seen
    assert await c.outbox_orphans(T0 + 30) == ["node-b"]  # a was seen within the lease TTL (30 s)
    assert await a.outbox_orphans(T0 + 30) == ["node-b"]  # never a node's own
    assert await c.outbox_orphans(T0 + 31) == ["node-a", "node-b"]
    rows, _ = await c.outbox_claim("node-a", "node lost", T0 + 31, 100)
    assert [(r.delivery, r.reason) for r in rows] == [("i-1", "node lost"), ("i-2", "node lost")]
    assert await b.outbox_claim("node-a", "node lost", T0 + 31, 100) == ([], 0)  # taken once
    assert await c.outbox_orphans(T0 + 31) == ["node-b"]
    # A node claimed while alive (cut off from the store) writes on: its outbox is there again.
    await a.outbox_write([_out(4, 3)], [])
    assert [r.delivery for r in (await c.outbox_claim("node-a", "node lost", T0 + 40, 100))[0]] == ["i-4"]
