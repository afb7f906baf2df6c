"""Real Asterisk 22: how the call flow's outcomes come out of Asterisk's own events (audit of the AMI bridge).

Numbers follow the sim-customer convention (last six digits O NN TTT, asterisk-docker/config/extensions.conf).
"""

from __future__ import annotations

from typing import Any

import pytest

from ami_bridge.config import AmiConfig
from ami_bridge.telephony import AmiTelephony
from tests.harness.campaign import TRUNK_CAUSES, check_forced_run, run_campaign, trunk_cause_leads

pytestmark = pytest.mark.asterisk


def _telephony(asterisk: Any) -> AmiTelephony:
    return AmiTelephony(AmiConfig(host=asterisk.host, port=asterisk.port, username=asterisk.username,
                                  secret=asterisk.secret, auth="md5", call_channel="Local/{number}@sim-customer",
                                  agent_channel="Local/{agent_id}@sim-agent"))


async def test_trunk_hangup_causes_classify_busy_no_answer_and_congestion(asterisk: Any) -> None:
    # A SIP trunk reports busy/no answer/congestion/unallocated as a hang-up cause without a tone, and Asterisk's
    # OriginateResponse then says Reason 0 for all of them: the outcome must come from the cause.
    leads, expected = trunk_cause_leads()
    run = await run_campaign(_telephony(asterisk), leads, ("ag1",),
                             {"campaign_id": "tc", "ring_timeout_s": 15, "wrapup_s": 1}, timeout_s=40)
    check_forced_run(run, expected)
    assert {a["lead_id"]: a["hangup_cause"] for a in run.attempts} == {f"T{c}": int(c) for c in TRUNK_CAUSES}

