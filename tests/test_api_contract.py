"""The REST API as an integrator meets it: what the README promises for bad input, auth and unknown ids, checked
against the app over a running runtime (the helpers of tests/test_api.py)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from tests.test_api import api_env, make_campaign
from tests.test_api_auth import bearer, settings


@pytest.mark.parametrize(("rule_set", "overrides", "field"), [
    ("us-tsr-regf", {"attempt_caps": 5}, "attempt_caps"),
    ("us-tsr-regf", {"attempt_caps": [[1]]}, "attempt_caps"),
    ("us-tsr-regf", {"windows": {"mon": 5}}, "windows"),
    ("us-tsr-regf", {"window_start": None}, "window_start"),
    ("us-tsr-regf", {"min_ring_s": "x"}, "min_ring_s"),
    ("us-tsr-regf", {"holidays_closed": "x"}, "holidays_closed"),
    ("us-tsr-regf", {"abandon_window_s": [1]}, "abandon_window_s"),
    ("us-tsr-regf", {"count_amd_false_positives": "x"}, "count_amd_false_positives"),
    # Where the rule set has no limit, nothing was compared: a string was stored as the campaign's rule.
    ("none", {"abandon_message_s": "x"}, "abandon_message_s"),
    ("none", {"max_contacts_per_local_day": "y"}, "max_contacts_per_local_day"),
    ("none", {"max_contacts_per_local_day": 1.5}, "max_contacts_per_local_day"),
    ("none", {"contact_cooldown_s": True}, "contact_cooldown_s"),
])
async def test_a_rule_override_of_the_wrong_type_is_a_422_naming_it_never_a_500(
        rule_set: str, overrides: dict[str, Any], field: str) -> None:
    async with api_env() as env:
        body = {"campaign_id": "c1", "rule_set": rule_set, "rule_overrides": overrides}
        r = await env.api.post("/api/v1/campaigns", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"rule_overrides.{field}: "), r.text
        assert (await env.api.get("/api/v1/campaigns/c1")).status_code == 404  # nothing half-saved
        await make_campaign(env.api, rule_set=rule_set)
        r = await env.api.patch("/api/v1/campaigns/c1", json={"rule_overrides": overrides})
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"rule_overrides.{field}: "), r.text
        assert (await env.api.get("/api/v1/campaigns/c1")).json()["rule_overrides"] == {}


async def test_good_rule_overrides_still_pass_and_a_loosening_one_names_its_field() -> None:
    async with api_env() as env:
        good = {"window_start": "10:00", "min_ring_s": 20, "holidays_closed": True, "attempt_caps": [[5, 604800]],
                "max_contacts_per_local_day": 1, "abandon_message_s": 1.5}
        await make_campaign(env.api, rule_set="us-tsr-regf", rule_overrides=good)
        r = await env.api.post("/api/v1/campaigns", json={"campaign_id": "c2", "rule_set": "us-tsr-regf",
                                                          "rule_overrides": {"abandon_target": 0.5}})
        assert r.status_code == 422
        assert r.json()["detail"] == "rule_overrides.abandon_target: 0.5 would loosen us-tsr-regf's 0.03"


async def test_dnc_takes_a_number_in_each_international_spelling_the_readme_lists() -> None:
    # README (Compliance gates): written with its country code ("+", "00" or "tel:") an entry blocks its number in
    # any spelling. The API refused "0044 ..." and "tel:+44..." with "needs a country".
    async with api_env() as env:
        await make_campaign(env.api)
        r = await env.api.post("/api/v1/dnc", json={"numbers": ["0044 20 7946 0958"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"added": 1, "already": 0, "repeated": 0}
        r = await env.api.post("/api/v1/dnc", json={"numbers": ["tel:+442079460958", "+44 (0)20 7946 0958"]})
        assert r.json() == {"added": 0, "already": 1, "repeated": 1}
        r = await env.api.get("/api/v1/dnc/00442079460958")
        assert r.json() == {"number": "+442079460958", "campaign_id": None, "blocked": True}
        assert (await env.api.delete("/api/v1/dnc/tel:+442079460958")).status_code == 204
        assert (await env.api.get("/api/v1/dnc/+442079460958")).json()["blocked"] is False
        # A national number still needs its country code, and the answer says how to write it.
        r = await env.api.post("/api/v1/dnc", json={"numbers": ["+573001234567", "020 7946 0958"]})
        assert r.status_code == 422
        assert r.json()["detail"].startswith("numbers[1]: ") and "0044" in r.json()["detail"]


async def test_dnc_reads_and_removals_of_an_unknown_campaign_are_a_404_as_adds_are() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        assert (await env.api.post("/api/v1/dnc", json={"numbers": ["+573001234567"]})).status_code == 200
        r = await env.api.post("/api/v1/dnc", json={"numbers": ["+573001234567"], "campaign_id": "nope"})
        assert r.status_code == 404
        # It answered 200 "blocked" (by the global list) for a campaign that does not exist, a typo unnoticed.
        r = await env.api.get("/api/v1/dnc/+573001234567", params={"campaign_id": "nope"})
        assert r.status_code == 404 and r.json()["detail"] == "campaign 'nope' not found"
        r = await env.api.delete("/api/v1/dnc/+573001234567", params={"campaign_id": "nope"})
        assert r.status_code == 404 and r.json()["detail"] == "campaign 'nope' not found"
        r = await env.api.get("/api/v1/dnc/+573001234567", params={"campaign_id": "c1"})
        assert r.json()["blocked"] is True


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope-nope-nope-nope"}])
async def test_a_malformed_body_without_a_valid_token_is_a_401_not_a_422(headers: dict[str, str]) -> None:
    # FastAPI decodes a JSON body before it runs the auth dependency: a client without a token got the JSON error
    # (422) where the README promises 401, and learned how the endpoint parses its body.
    async with api_env(settings()) as env:
        for method, path in (("POST", "/api/v1/campaigns"), ("PATCH", "/api/v1/campaigns/c1"),
                             ("POST", "/api/v1/dnc"), ("POST", "/api/v1/calls/x1/disposition")):
            r = await env.api.request(method, path, content=b"{bad", headers={**headers,
                                                                               "Content-Type": "application/json"})
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.json() == {"detail": "a valid bearer token is required"}
        # With a valid token the body's error is the answer, as before.
        r = await env.api.post("/api/v1/campaigns", content=b"{bad", headers={**bearer("admin"),
                                                                               "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


async def test_a_json_lead_with_a_boolean_in_a_known_field_is_refused_naming_it() -> None:
    # `true` was read as the text "True": a lead stored with lead_id "True", or segment "True", and no word said.
    async with api_env() as env:
        await make_campaign(env.api)
        rows = [{"lead_id": True, "phone": "+573001234561", "country": "CO"},
                {"lead_id": "L2", "phone": "+573001234562", "country": "CO", "segment": False},
                {"lead_id": "L3", "phone": "+573001234563", "country": "CO", "vip": True},  # a custom field may
                {"lead_id": 4, "phone": "+573001234564", "country": "CO", "timezone": None}]
        r = await env.api.post("/api/v1/campaigns/c1/leads", json=rows)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["rejected"] == [
            {"row": 1, "field": "lead_id", "reason": "must be a string or a number, not a boolean"},
            {"row": 2, "field": "segment", "reason": "must be a string or a number, not a boolean"}]
        assert body["accepted"] == 2 and body["new"] == 2
        assert (await env.store.lead_counts("c1"))["pending"] == 2


async def test_attempts_of_an_unknown_campaign_or_with_a_bound_that_is_not_a_time_are_refused() -> None:
    async with api_env() as env:
        await make_campaign(env.api)
        assert (await env.api.get("/api/v1/attempts", params={"campaign_id": "c1"})).status_code == 200
        # A typo in the campaign id answered an empty page, as a campaign with no attempts does.
        r = await env.api.get("/api/v1/attempts", params={"campaign_id": "c1x"})
        assert r.status_code == 404 and r.json()["detail"] == "campaign 'c1x' not found"
        # since=nan answered every attempt (no comparison with NaN holds), since=inf none.
        for bound in ("since", "until"):
            for value in ("nan", "inf", "-inf"):
                r = await env.api.get("/api/v1/attempts", params={bound: value})
                assert r.status_code == 422, (bound, value, r.text)
                assert r.json()["detail"][0]["loc"] == ["query", bound]
        r = await env.api.get("/api/v1/attempts", params={"since": 0, "until": 1e12})
        assert r.status_code == 200


async def test_a_last_event_id_this_api_never_gave_is_told_as_unknown_and_the_replay_follows() -> None:
    # A Last-Event-ID that is not an integer was taken as no Last-Event-ID at all: no replay and no stream.gap,
    # so the client believed it had resumed while every event since its id was lost.
    from api.app import create_app
    from config.settings import ApiSettings
    from dialer.commands import Emit
    from tests.test_api_events import SseReader, http_server

    async with api_env() as env:
        app = create_app(env.runtime, ApiSettings(events_heartbeat_s=0.3))
        for i in range(2):
            app.state.hub(Emit("call.ended", {"i": i}))
        async with http_server(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("GET", "/api/v1/events", params={"types": "call."},
                                   headers={"Last-Event-ID": "abc"}) as resp:
                frames = (await SseReader(resp).frames(4))[1:]  # after ": connected"
    assert frames[0]["event"] == "stream.gap"
    gap = json.loads(frames[0]["data"])
    assert gap["reason"] == "unknown_id" and gap["last_event_id"] == "abc"
    assert [json.loads(f["data"]) for f in frames[1:3]] == [{"i": 0}, {"i": 1}]


async def test_a_big_json_upload_never_stalls_the_engines_loop() -> None:
    # The JSON rows were parsed on the event loop the core runs on: 30,000 leads held it about 4.7 s in a running
    # engine (GET /healthz waited as long), past every abandon threshold of the calls answered meanwhile. The CSV
    # body is parsed off the loop; JSON now is too.
    rows = [{"lead_id": f"J{i}", "phone": f"+57300{i:07d}", "country": "CO", "amount_due": "10",
             "days_past_due": 5, "segment": "early"} for i in range(20_000)]
    rows[7]["phone"] = "12"
    async with api_env() as env:
        await make_campaign(env.api)
        r, worst = await _worst_loop_gap_while(env.api.post("/api/v1/campaigns/c1/leads", json=rows))
        assert r.status_code == 200, r.text
        assert (r.json()["accepted"], r.json()["new"]) == (19_999, 19_999)
        assert r.json()["rejected"] == [{"row": 8, "field": "phone", "reason": "not a valid number for CO"}]
        assert (await env.store.lead_counts("c1"))["pending"] == 19_999
        assert worst < 1.0, f"the loop was held {worst:.2f} s"


async def _worst_loop_gap_while(request: Any) -> tuple[Any, float]:
    """(the answer to `request`, the longest the event loop was held meanwhile, in seconds)."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    answer = await request
    done.set()
    await tick
    return answer, worst


async def test_a_big_dnc_list_is_taken_without_holding_the_engines_loop_or_flooding_its_queue() -> None:
    # POST /dnc takes up to 100,000 numbers. Each was parsed on the loop, then queued to the core as one event
    # each, which the core drains in one go before its next tick: 100,000 numbers held a running engine's loop
    # 16-22 s (GET /healthz waited as long), filled the core's event queue (100,000: the PBX's events behind it
    # dropped) and sent one `dnc.added` event per number to every SSE client and webhook.
    numbers = [f"+57300{i:07d}" for i in range(20_000)]
    async with api_env() as env:
        await make_campaign(env.api)
        r, worst = await _worst_loop_gap_while(env.api.post("/api/v1/dnc", json={"numbers": numbers}))
        assert r.status_code == 200, r.text
        assert r.json() == {"added": 20_000, "already": 0, "repeated": 0}
        assert worst < 1.0, f"the loop was held {worst:.2f} s"
        assert env.runtime.event_backlog <= 1  # one event for the request, not one per number
        for number in (numbers[0], numbers[-1]):  # effective at the answer, before the next dial
            assert env.runtime.core.dnc.lookup(number, "c1", env.runtime.clock()) is not None
        again = await env.api.post("/api/v1/dnc", json={"numbers": numbers[:10]})
        assert again.json() == {"added": 0, "already": 10, "repeated": 0}


SEMICOLONS = "lead_id;phone;country;timezone;amount_due;days_past_due;segment\nL1;+573001234567;CO;;10,5;1;x\n"


async def test_a_csv_separated_by_semicolons_is_refused_saying_so() -> None:
    # Excel where the decimal mark is a comma (Colombia, Spain, Mexico...) saves "CSV" with semicolons. The answer
    # said every required column was missing, while the header plainly named them all.
    async with api_env() as env:
        await make_campaign(env.api)
        for body in (SEMICOLONS, SEMICOLONS.replace(";", "\t"), SEMICOLONS + "x" * 70_000):  # the pooled path too
            r = await env.api.post("/api/v1/campaigns/c1/leads", content=body.encode(),
                                   headers={"Content-Type": "text/csv"})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert detail.startswith("csv: missing required columns") and "save the file as comma-separated" in detail
            assert ("semicolons" if ";" in body else "tabs") in detail
        r = await env.api.post("/api/v1/campaigns/c1/leads", content=b"id,number\n1,2\n",
                               headers={"Content-Type": "text/csv"})
        assert "comma-separated" not in r.json()["detail"]  # a comma file missing columns: no such hint


def test_import_leads_says_the_file_is_separated_by_semicolons(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from marcador_cli.main import app as cli_app

    path = tmp_path / "excel.csv"
    path.write_text(SEMICOLONS)
    r = CliRunner().invoke(cli_app, ["import-leads", str(path), "--campaign", "c1", "--api", "http://127.0.0.1:9"])
    assert r.exit_code == 1
    assert "separated by semicolons: save the file as comma-separated CSV" in r.output


async def test_a_promise_to_pay_of_an_amount_no_lead_may_owe_is_refused_naming_it() -> None:
    # amount_due must be under 10^12 (README, Leads); a promise of 1e20 was taken and stored on the attempt.
    from tests.test_api import PTP_DATE, _one_call_in_wrapup

    async with api_env() as env:
        call_id, _ = await _one_call_in_wrapup(env)
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition",
                               json={"code": "PTP", "ptp_amount": 1e20, "ptp_date": PTP_DATE})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "ptp_amount"]
        # a promise dated last week, or a callback at epoch milliseconds (year 5138), is a typo: refused, named
        last_week = (date.today() - timedelta(days=7)).isoformat()
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition",
                               json={"code": "PTP", "ptp_amount": 120.5, "ptp_date": last_week})
        assert r.status_code == 422 and r.json()["detail"] == f"ptp_date: {last_week} is in the past", r.text
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition",
                               json={"code": "CALLBACK", "callback_at": env.runtime.clock() * 1000})
        assert r.status_code == 422 and r.json()["detail"].startswith("callback_at: more than 366 days"), r.text
        r = await env.api.post(f"/api/v1/calls/{call_id}/disposition",
                               json={"code": "PTP", "ptp_amount": 120.5, "ptp_date": PTP_DATE})
        assert r.status_code == 202, r.text


async def test_a_bad_caller_id_did_is_named_by_its_place_in_did_pool() -> None:
    """The error said `caller-ID DID at index 1`: the field an integrator must fix is `did_pool[1]`, on a new
    campaign and on an edit alike; nothing of the refused request is kept."""
    async with api_env() as env:
        r = await env.api.post("/api/v1/campaigns", json={"campaign_id": "c9", "did_pool": ["+12025550100", "123"]})
        assert r.status_code == 422 and r.json()["detail"] == "did_pool[1]: not a valid E.164 number: '123'", r.text
        assert (await env.api.get("/api/v1/campaigns/c9")).status_code == 404
        await make_campaign(env.api)
        r = await env.api.patch("/api/v1/campaigns/c1", json={"did_pool": ["+12025550100", "+12025550100"]})
        assert r.status_code == 422 and r.json()["detail"].startswith("did_pool[1]: a duplicate"), r.text
        assert (await env.api.get("/api/v1/campaigns/c1")).json()["did_pool"] == []


async def test_a_malformed_body_from_a_role_without_the_right_is_a_403_not_a_422() -> None:
    """A viewer's or an agent's token on a route its role may not use, with a body that is not JSON, got the
    body's 422 (FastAPI decodes it before the auth dependency runs) where the README promises 403; an agent token
    acting for another agent likewise. With the right, the body's error is the answer."""
    from tests.test_api_auth import MATRIX, TOKENS

    async with api_env(settings()) as env:
        bad = {"Content-Type": "application/json"}
        for method, path, body, allowed in MATRIX:
            if body is None:
                continue
            for role in TOKENS:
                r = await env.api.request(method, path, content=b"{bad", headers={**bearer(role), **bad})
                if role == "admin" or role in allowed:  # the body's 422, or the route's own 404 first
                    assert r.status_code in (404, 422), (method, path, role, r.text)
                else:
                    assert r.status_code == 403 and "needs one of" in r.json()["detail"], (method, path, role)
        r = await env.api.post("/api/v1/agents/a2/preview", content=b"{bad", headers={**bearer("agent"), **bad})
        assert r.status_code == 403 and r.json()["detail"] == "an agent token may act for agent 'a1' only", r.text
        r = await env.api.post("/api/v1/agents/a1/preview", content=b"{bad", headers={**bearer("agent"), **bad})
        assert r.status_code == 422, r.text
