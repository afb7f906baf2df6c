"""The sans-IO translator: AMI messages ↔ core events and actions."""

from __future__ import annotations

from ami_bridge.client import _Protocol
from ami_bridge.config import AmiConfig
from ami_bridge.translate import StaleLeg, Translator
from dialer.commands import ConnectToAgent, Hangup, HangupAgentLeg, Originate, OriginateAgentLeg, PlayAbandonMessage
from dialer.events import (
    AgentConnected,
    AgentDisconnected,
    AgentJoinedCall,
    AgentMissing,
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
)
from dialer.model import Outcome

CFG = AmiConfig(secret="x", call_channel="Local/{number}@sim-customer", agent_channel="Local/{agent_id}@sim-agent")


def _dial(t: Translator, call_id: str = "c1") -> None:
    (action,) = t.actions_for(Originate(call_id, "camp", "L1", "+15550001", "+15559999", 25.0))
    assert action.fields["ChannelId"] == call_id
    assert action.fields["Async"] == "true"
    assert action.fields["Timeout"] == "25000"
    assert "MARCADOR_CALL_ID=" + call_id in action.fields["Variable"]


def test_originate_fields_and_answer_connect_hangup() -> None:
    t = Translator(CFG)
    _dial(t)
    assert t.on_event({"Event": "Newchannel", "Uniqueid": "c1", "Channel": "Local/x@sim-customer-1;1"}) == ([], [])
    events, _ = t.on_event({"Event": "Newstate", "Uniqueid": "c1;2", "ChannelStateDesc": "Ringing"})
    assert events == [CallProgress("c1", "ringing")]
    events, _ = t.on_event({"Event": "UserEvent", "UserEvent": "DialerAnswered", "CallId": "c1",
                            "Channel": "Local/x@sim-customer-1;1", "AMDStatus": "HUMAN"})
    assert events == [CallAnswered("c1", "HUMAN")]
    (redirect,) = t.actions_for(ConnectToAgent("c1", "ag1"))
    assert redirect.fields == {"Action": "Redirect", "Channel": "Local/x@sim-customer-1;1",
                               "Context": "marcador-agent-room", "Exten": "ag1", "Priority": "1"}
    events, _ = t.on_event({"Event": "ConfbridgeJoin", "Conference": "agent-ag1", "Uniqueid": "c1"})
    assert events == [AgentJoinedCall("c1", "ag1")]
    events, _ = t.on_event({"Event": "Hangup", "Uniqueid": "c1", "Cause": "16"})
    assert events == [CallEnded("c1", 16)]
    assert "c1" not in t.calls


def test_failure_reasons_classify_outcomes() -> None:
    # Reason 0/1 (the far end just hung up, as a SIP trunk reports busy) defer to the hangup cause.
    for reason, cause, outcome in (("5", "16", Outcome.BUSY), ("8", "16", Outcome.CONGESTION),
                                   ("3", "16", Outcome.NO_ANSWER), ("0", "17", Outcome.BUSY),
                                   ("1", "17", Outcome.BUSY), ("0", "19", Outcome.NO_ANSWER),
                                   ("0", "34", Outcome.CONGESTION), ("0", "1", Outcome.FAILED)):
        t = Translator(CFG)
        (orig,) = t.actions_for(Originate("c1", "camp", "L1", "+15550001", "", 25.0))
        t.on_event({"Event": "Hangup", "Uniqueid": "c1;2", "Cause": cause})  # far half: cause kept
        events = t.originate_result(orig, [{"Response": "Success", "Message": "Originate successfully queued"},
                                           {"Event": "OriginateResponse", "Response": "Failure", "Reason": reason}])
        assert events == [CallFailed("c1", outcome, int(cause))]
        assert "c1" not in t.calls


def test_a_failure_reported_before_the_hangup_waits_for_its_cause() -> None:
    # Seen on Asterisk 22: OriginateResponse (Reason 0) first, the channel's Hangup (cause 17) just after.
    t = Translator(CFG)
    (orig,) = t.actions_for(Originate("c1", "camp", "L1", "+15550001", "", 25.0))
    t.on_event({"Event": "Newchannel", "Uniqueid": "c1", "Channel": "PJSIP/trunk-0001"})
    failure = [{"Response": "Success"}, {"Event": "OriginateResponse", "Response": "Failure", "Reason": "0"}]
    assert t.originate_result(orig, failure) == []
    assert t.on_event({"Event": "Hangup", "Uniqueid": "c1", "Cause": "17"}) == ([CallFailed("c1", Outcome.BUSY, 17)],
                                                                                [])
    assert "c1" not in t.calls
    # A channel never created has no Hangup to wait for: classified at once.
    (orig,) = t.actions_for(Originate("c2", "camp", "L1", "+15550001", "", 25.0))
    assert t.originate_result(orig, failure) == [CallFailed("c2", Outcome.FAILED, None)]
    # The link lost between the two: the reconcile still gives the reported failure, not `lost`.
    (orig,) = t.actions_for(Originate("c3", "camp", "L1", "+15550001", "", 25.0))
    t.on_event({"Event": "Newchannel", "Uniqueid": "c3", "Channel": "PJSIP/trunk-0003"})
    assert t.originate_result(orig, failure) == []
    assert t.reconcile([]) == [CallFailed("c3", Outcome.FAILED, None)]


def test_refused_originate_fails_the_call_and_unknown_fate_waits_for_reconcile() -> None:
    t = Translator(CFG)
    (orig,) = t.actions_for(Originate("c1", "camp", "L1", "+1", "", 25.0))
    assert t.originate_result(orig, [{"Response": "Error", "Message": "Permission denied"}]) == [
        CallFailed("c1", Outcome.FAILED, None)]
    (orig,) = t.actions_for(Originate("c2", "camp", "L2", "+2", "", 25.0))
    assert t.originate_result(orig, None) == []  # in doubt: never redialed, never forgotten
    assert t.reconcile([{"Uniqueid": "other"}]) == [CallFailed("c2", Outcome.LOST, None)]


def test_reconcile_learns_an_answer_missed_while_deaf_and_keeps_ringing_calls() -> None:
    t = Translator(CFG)
    t.actions_for(Originate("c1", "camp", "L1", "+1", "", 25.0))
    t.actions_for(Originate("c2", "camp", "L2", "+2", "", 25.0))
    events = t.reconcile([
        {"Uniqueid": "c1", "Channel": "Local/1;1", "ChannelStateDesc": "Up", "Context": "marcador-answered"},
        {"Uniqueid": "c2;2", "Channel": "Local/2;2", "ChannelStateDesc": "Ringing", "Context": "sim-customer"},
    ])
    assert events == [CallAnswered("c1", "NOTSURE")]
    assert set(t.calls) == {"c1", "c2"}
    # the ringing call's OriginateResponse arrives on the new link as a plain event and still classifies it
    events, _ = t.on_event({"Event": "OriginateResponse", "ActionID": "orig-c2", "Response": "Failure",
                            "Reason": "5"})
    assert events == [CallFailed("c2", Outcome.BUSY, None)]


def test_hangup_before_channel_is_known_is_sent_when_it_appears() -> None:
    t = Translator(CFG)
    _dial(t)
    assert t.actions_for(Hangup("c1")) == []
    _, actions = t.on_event({"Event": "Newchannel", "Uniqueid": "c1", "Channel": "Local/x;1"})
    assert [a.fields for a in actions] == [{"Action": "Hangup", "Channel": "Local/x;1", "Cause": "16"}]


def test_agent_leg_lifecycle() -> None:
    t = Translator(CFG, id_prefix="n1")
    (leg,) = t.actions_for(OriginateAgentLeg("ag1"))
    uid = str(leg.fields["ChannelId"])
    assert uid.startswith("n1-agent-ag1-") and leg.fields["Context"] == "marcador-agent-login"
    t.on_event({"Event": "Newchannel", "Uniqueid": uid, "Channel": "Local/ag1@sim-agent-1;1"})
    assert t.on_event({"Event": "ConfbridgeJoin", "Conference": "agent-ag1", "Uniqueid": uid})[0] == [
        AgentConnected("ag1")]
    (hang,) = t.actions_for(HangupAgentLeg("ag1"))
    assert hang.fields["Channel"] == "Local/ag1@sim-agent-1;1"
    assert t.on_event({"Event": "Hangup", "Uniqueid": uid, "Cause": "16"})[0] == [AgentDisconnected("ag1")]


def test_an_agent_leg_hung_up_before_its_channel_is_known_is_hung_up_when_it_appears() -> None:
    # A logout right after the login: the leg's hangup used to be dropped, the agent stayed "logging out" with its
    # phone in the room. As for calls, it is sent once the channel is announced.
    t = Translator(CFG, id_prefix="n1")
    (leg,) = t.actions_for(OriginateAgentLeg("ag1"))
    uid = str(leg.fields["ChannelId"])
    assert t.actions_for(HangupAgentLeg("ag1")) == []
    _, actions = t.on_event({"Event": "Newchannel", "Uniqueid": uid, "Channel": "Local/ag1@sim-agent-1;1"})
    assert [a.fields for a in actions] == [{"Action": "Hangup", "Channel": "Local/ag1@sim-agent-1;1", "Cause": "16"}]
    assert actions[0].agent_id == "ag1"
    assert t.on_event({"Event": "Hangup", "Uniqueid": uid, "Cause": "16"})[0] == [AgentDisconnected("ag1")]
    # a new leg for the agent starts clean
    (leg2,) = t.actions_for(OriginateAgentLeg("ag1"))
    assert t.on_event({"Event": "Newchannel", "Uniqueid": str(leg2.fields["ChannelId"]),
                       "Channel": "Local/ag1@sim-agent-2;1"}) == ([], [])


def test_abandon_redirect_goes_to_the_abandon_context() -> None:
    t = Translator(CFG)
    _dial(t)
    t.on_event({"Event": "UserEvent", "UserEvent": "DialerAnswered", "CallId": "c1", "Channel": "Local/x;1"})
    (action,) = t.actions_for(PlayAbandonMessage("c1"))
    assert action.fields["Context"] == "marcador-abandon"


def test_a_customer_who_found_no_agent_in_the_room_is_reported_by_its_uniqueid() -> None:
    # UserEvent() cuts the CallId at a comma ("dc1,east-1" arrives as "dc1"): the channel's Uniqueid names the call.
    t = Translator(CFG)
    _dial(t, "dc1,east-1")
    t.on_event({"Event": "UserEvent", "UserEvent": "DialerAnswered", "Uniqueid": "dc1,east-1", "CallId": "dc1",
                "Channel": "Local/x;1"})
    events, actions = t.on_event({"Event": "UserEvent", "UserEvent": "DialerNoAgent", "Uniqueid": "dc1,east-1",
                                  "CallId": "dc1", "AgentId": "ag1", "Channel": "Local/x;1"})
    assert (events, actions) == ([AgentMissing("dc1,east-1", "ag1")], [])
    # the message plays, then the hang-up ends the call as any answered call
    assert t.on_event({"Event": "Hangup", "Uniqueid": "dc1,east-1", "Cause": "16"})[0] == [CallEnded("dc1,east-1", 16)]
    assert t.on_event({"Event": "UserEvent", "UserEvent": "DialerNoAgent", "Uniqueid": "zz", "CallId": "zz",
                       "AgentId": "ag1"}) == ([], [])  # not a call of ours


def test_protocol_decodes_utf8_split_across_reads() -> None:
    got: list[dict[str, str]] = []

    class Sink:
        def __init__(self) -> None:
            self.awaiting_actions: list[object] = []

        def dispatch(self, message: dict[str, str]) -> None:
            got.append(dict(message))

    proto = _Protocol()
    proto.connection_made(_NullTransport())  # type: ignore[arg-type]
    proto.factory = Sink()
    raw = "Asterisk Call Manager/11.0.0\r\nEvent: UserEvent\r\nName: Peña Núñez\r\n\r\n".encode()
    cut = raw.index("ñ".encode()) + 1  # split inside the two bytes of "ñ"
    proto.data_received(raw[:cut])
    proto.data_received(raw[cut:])
    assert got and got[0]["Name"] == "Peña Núñez"


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_room_resync_reannounces_customers_and_recalls_a_leg_outside_its_room() -> None:
    t = Translator(CFG, id_prefix="n1")
    (leg,) = t.actions_for(OriginateAgentLeg("ag1"))
    uid = str(leg.fields["ChannelId"])
    t.on_event({"Event": "Newchannel", "Uniqueid": uid, "Channel": "Local/ag1@sim-agent-1;1"})
    _dial(t)
    t.on_event({"Event": "UserEvent", "UserEvent": "DialerAnswered", "CallId": "c1", "Channel": "Local/x;1"})
    events, actions = t.reconcile_room("ag1", [{"Uniqueid": uid}, {"Uniqueid": "c1"}])
    assert events == [AgentJoinedCall("c1", "ag1")] and actions == []
    events, actions = t.reconcile_room("ag1", [])
    assert events == [] and [a.fields["Channel"] for a in actions] == ["Local/ag1@sim-agent-1;1"]


def test_caller_id_goes_as_name_and_number_or_a_bare_number_wrapped() -> None:
    t = Translator(CFG)
    (named,) = t.actions_for(Originate("c1", "camp", "L1", "+15550001", "Marcador <1000>", 25.0))
    (did,) = t.actions_for(Originate("c2", "camp", "L1", "+15550001", "+12125550101", 25.0))
    (none,) = t.actions_for(Originate("c3", "camp", "L1", "+15550001", "", 25.0))
    assert named.fields["CallerID"] == "Marcador <1000>"  # was "<Marcador <1000>>"
    assert did.fields["CallerID"] == "<+12125550101>"
    assert "CallerID" not in none.fields


def test_not_ready_reason_names_what_the_operator_must_fix() -> None:
    """A user without `reporting` is refused both readiness probes: the log used to say the dialplan context or
    ConfBridge was missing, sending operators to extensions.conf for a manager.conf privilege."""
    from ami_bridge.telephony import not_ready_reason

    ok, denied = {"Response": "Success"}, {"Response": "Error", "Message": "Permission denied"}
    assert not_ready_reason(ok, {"Response": "Success", "Message": "No active conferences."}, "x") is None
    reason = not_ready_reason(denied, denied, "marcador-answered")
    assert reason is not None and "reporting" in reason and "manager.conf" in reason
    missing = not_ready_reason({"Response": "Error", "Message": "Did not find context marcador-answered"}, ok,
                               "marcador-answered")
    assert missing is not None and "marcador-answered" in missing and "reporting" not in missing
    no_bridge = not_ready_reason(ok, {"Response": "Error", "Message": "Invalid/unknown command"}, "x")
    assert no_bridge is not None and "ConfBridge" in no_bridge


def test_a_callee_gone_before_the_dialplan_announced_the_answer_is_an_answer_then_an_end() -> None:
    # Asterisk 22, AMD on: Success, the channel Up, then its Hangup; AMD() never returned to raise DialerAnswered.
    t = Translator(CFG)
    (orig,) = t.actions_for(Originate("c1", "camp", "L1", "+15550001", "", 25.0))
    t.on_event({"Event": "Newchannel", "Uniqueid": "c1", "Channel": "Local/x@sim-customer-1;1"})
    assert t.originate_result(orig, [{"Response": "Success"}, {"Event": "OriginateResponse", "Response": "Success",
                                                               "Reason": "4"}]) == []
    t.on_event({"Event": "Newstate", "Uniqueid": "c1;2", "ChannelStateDesc": "Up"})  # the far half: not ours
    assert t.on_event({"Event": "Hangup", "Uniqueid": "c1;2", "Cause": "16"}) == ([], [])
    assert not t.calls["c1"].up
    t.on_event({"Event": "Newstate", "Uniqueid": "c1", "ChannelStateDesc": "Up"})
    events, _ = t.on_event({"Event": "Hangup", "Uniqueid": "c1", "Cause": "16"})
    assert events == [CallAnswered("c1", "HANGUP"), CallEnded("c1", 16)]
    assert "c1" not in t.calls


def test_a_failed_agent_call_back_is_one_disconnect_not_two() -> None:
    # A leg whose dial fails ends twice over AMI: its channel's Hangup, then the failed OriginateResponse. Each
    # was an AgentDisconnected, so every failed call-back spent two of the agent's rejoin attempts (8 ran out
    # after 4). The response of a leg already replaced by a newer one is not that newer leg's end either.
    t = Translator(CFG, id_prefix="n1")
    (leg,) = t.actions_for(OriginateAgentLeg("ag1"))
    uid = str(leg.fields["ChannelId"])
    t.on_event({"Event": "Newchannel", "Uniqueid": uid, "Channel": "Local/ag1@sim-agent-1;1"})
    assert t.on_event({"Event": "Hangup", "Uniqueid": uid, "Cause": "17"})[0] == [AgentDisconnected("ag1")]
    failed = [{"Response": "Failure"}, {"Event": "OriginateResponse", "Response": "Failure", "Reason": "5"}]
    assert t.originate_result(leg, failed) == []
    # No channel ever (the dial refused at once): the response alone tells it, once.
    (leg2,) = t.actions_for(OriginateAgentLeg("ag1"))
    (leg3,) = t.actions_for(OriginateAgentLeg("ag1"))  # a newer leg before leg2's answer came
    assert t.originate_result(leg2, failed) == []
    assert t.originate_result(leg3, failed) == [AgentDisconnected("ag1")]
    assert t.originate_result(leg3, failed) == []


def test_agent_legs_carry_their_node_and_a_later_run_tells_its_own_stale_legs_from_others() -> None:
    t = Translator(CFG, id_prefix="dc-1-65f0a1b2", node_id="dc-1")
    (leg,) = t.actions_for(OriginateAgentLeg("a1"))
    assert leg.fields["Variable"] == ["MARCADOR_NODE=dc-1"]
    assert "Variable" not in Translator(CFG).actions_for(OriginateAgentLeg("a1"))[0].fields  # no node: untagged
    mine = str(leg.fields["ChannelId"])
    channels = [
        {"Uniqueid": mine, "Channel": "PJSIP/a1-1"},  # this run's own: never a candidate
        {"Uniqueid": "dc-1-65f00000-agent-a2-1", "Channel": "PJSIP/a2-1", "Application": "ConfBridge",
         "ApplicationData": "agent-a2,marcador_bridge,marcador_agent"},
        {"Uniqueid": "dc-1-65f00000-agent-a2-1;2", "Channel": "Local/a2@x-1;2"},  # a Local leg's far half
        {"Uniqueid": "dc-1-65f00000-agent-a3-1", "Channel": "PJSIP/a3-1", "Application": "Dial"},  # ringing
        {"Uniqueid": "dc-1-65f00000-7", "Channel": "PJSIP/trunk-7"},  # a customer call
    ]
    found = t.stale_leg_candidates(channels)
    assert found == [StaleLeg("dc-1-65f00000-agent-a2-1", "PJSIP/a2-1", "agent-a2"),
                     StaleLeg("dc-1-65f00000-agent-a3-1", "PJSIP/a3-1", None)]
    assert t.owned_by_us(found[0], "dc-1") and not t.owned_by_us(found[0], "dc-10")
    # Untagged (an engine older than MARCADOR_NODE): by its ChannelId, <node>-<boot, hex>-agent-.
    assert t.owned_by_us(found[0], "")
    assert not t.owned_by_us(StaleLeg("dc-1-b-65f00000-agent-a2-1", "PJSIP/x", None), "")  # node "dc-1-b"
    assert not Translator(CFG, id_prefix="m").owned_by_us(found[0], "dc-1")  # no node id: never sweeps
