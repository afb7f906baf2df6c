"""Compliance gates run before every dial: DNC, calling window and holidays in the debtor's local time,
attempt caps, cool-downs and per-jurisdiction rule sets (see DESIGN.md, Compliance)."""

from dialer.compliance.calendar import Calendar, DayPlan, holidays_for, next_open, zone
from dialer.compliance.dnc import DncList, DncScope
from dialer.compliance.gates import DebtorHistory, Gatekeeper, Reason, Refusal
from dialer.compliance.rulesets import RULE_SETS, RuleSet, load_rule_set

__all__ = [
    "RULE_SETS",
    "Calendar",
    "DayPlan",
    "DebtorHistory",
    "DncList",
    "DncScope",
    "Gatekeeper",
    "Reason",
    "Refusal",
    "RuleSet",
    "holidays_for",
    "load_rule_set",
    "next_open",
    "zone",
]
