"""The walking skeleton end to end on a real Asterisk 22: REST API → core → AMI bridge → Asterisk → agent rooms.

20 leads whose numbers force each outcome (sim-customer dialplan: last 6 digits O NN TTT), 3 agents.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.campaign import check_forced_run, forced_leads, run_campaign

pytestmark = pytest.mark.asterisk


async def test_campaign_of_20_leads_through_real_asterisk(asterisk: Any) -> None:
    telephony = asterisk.telephony()
    leads, expected = forced_leads()
    run = await run_campaign(telephony, leads, ("ag1", "ag2", "ag3"),
                             {"campaign_id": "sk", "ring_timeout_s": 15, "wrapup_s": 1}, timeout_s=120)
    check_forced_run(run, expected)
    assert run.stats["live_answers"] == 8
