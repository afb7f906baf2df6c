"""Disposition codes an agent (or the API) posts after a call, with the flags the hopper and the core act on.

Pure data and validation: the hopper reads `final`, `callback`, `wrong_party` and `dnc`; the core adds a `dnc`
number to the DNC store; a `promise_to_pay` carries an amount and a date for the collection system.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

_FLAGS = ("final", "callback", "dnc", "promise_to_pay", "wrong_party")
# How far ahead a callback or a promise may be set: further is a typo (or milliseconds sent as seconds).
MAX_AHEAD_DAYS = 366
MAX_AHEAD_S = MAX_AHEAD_DAYS * 86400.0


@dataclass(frozen=True, slots=True)
class DispositionCode:
    code: str
    label: str
    final: bool = False  # the lead is done: never dialed again in this campaign
    callback: bool = False  # needs a callback time
    dnc: bool = False  # the dialed number goes to the DNC list (the core does it); the hopper stops using it
    promise_to_pay: bool = False  # needs an amount and a date
    wrong_party: bool = False  # this phone reaches someone else: stop using it for this lead

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not self.code.strip():
            raise ValueError("code: must be a non-empty string")
        if not isinstance(self.label, str):
            raise ValueError(f"label: must be a string (code {self.code!r})")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be a bool (code {self.code!r})")
        if self.final and self.callback:
            # A callback keeps the lead alive; both at once would leave the hopper guessing.
            raise ValueError(f"callback: a final code cannot ask for a callback (code {self.code!r})")

    @property
    def steers_lead(self) -> bool:
        """The code changes what happens to its lead (ends it, drops the phone, calls back): a lead the disposing
        node no longer holds gets it through the store."""
        return self.final or self.wrong_party or self.dnc or self.callback


_DEFAULTS = (
    # A promise is followed up by the collection system (a broken one comes back as a new load): stop dialing.
    DispositionCode("PTP", "Promise to pay", final=True, promise_to_pay=True),
    DispositionCode("PAID", "Paid", final=True),
    DispositionCode("PARTIAL_PAYMENT", "Partial payment made"),
    DispositionCode("CALLBACK", "Callback requested", callback=True),
    DispositionCode("REFUSED", "Refused to pay"),
    DispositionCode("WRONG_PARTY", "Wrong party on this number", wrong_party=True),
    DispositionCode("DNC", "Do not call", final=True, dnc=True),
    # A disputed debt must not be pursued until validated (FDCPA §809(b) and local equivalents).
    DispositionCode("DISPUTE", "Debt disputed", final=True),
    DispositionCode("NO_CONTACT", "Reached, debtor not available"),
    DispositionCode("LEFT_MESSAGE", "Message left with third party"),
    DispositionCode("DECEASED", "Debtor deceased", final=True),
    DispositionCode("BANKRUPTCY", "Bankruptcy filed", final=True),
)


class DispositionSet:
    """An immutable collection of disposition codes, looked up by code."""

    __slots__ = ("_codes",)

    def __init__(self, codes: list[DispositionCode] | tuple[DispositionCode, ...]) -> None:
        by_code: dict[str, DispositionCode] = {}
        for i, c in enumerate(codes):
            if c.code in by_code:
                raise ValueError(f"dispositions[{i}].code: duplicate code {c.code!r}")
            by_code[c.code] = c
        self._codes = by_code

    @classmethod
    def default(cls) -> DispositionSet:
        return cls(_DEFAULTS)

    @classmethod
    def from_config(cls, entries: list[dict[str, Any]]) -> DispositionSet:
        """Build from config entries like `{"code": "PTP", "label": "...", "final": true, "promise_to_pay": true}`.
        Errors name the entry index and the field: `dispositions[2].final: expected a bool, got 'yes'`."""
        if not isinstance(entries, list):
            raise ValueError("dispositions: expected a list of entries")
        known = {f.name for f in fields(DispositionCode)}
        codes: list[DispositionCode] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"dispositions[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a mapping, got {type(entry).__name__}")
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ValueError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
            code = entry.get("code")
            if not isinstance(code, str) or not code.strip():
                raise ValueError(f"{where}.code: required non-empty string, got {code!r}")
            code = code.strip()
            if code in seen:
                raise ValueError(f"{where}.code: duplicate code {code!r}")
            seen.add(code)
            label = entry.get("label", code)
            if not isinstance(label, str):
                raise ValueError(f"{where}.label: expected a string, got {label!r}")
            flags: dict[str, bool] = {}
            for name in _FLAGS:
                value = entry.get(name, False)
                if not isinstance(value, bool):
                    raise ValueError(f"{where}.{name}: expected a bool, got {value!r}")
                flags[name] = value
            if flags["final"] and flags["callback"]:
                raise ValueError(f"{where}.callback: a final code cannot ask for a callback")
            codes.append(DispositionCode(code, label, **flags))
        return cls(codes)

    def __contains__(self, code: object) -> bool:
        return code in self._codes

    def __iter__(self) -> Iterator[DispositionCode]:
        return iter(self._codes.values())

    def __len__(self) -> int:
        return len(self._codes)

    def get(self, code: str) -> DispositionCode | None:
        return self._codes.get(code)

    def validate(self, code: str, callback_at: float | None = None, ptp_amount: float | None = None,
                 ptp_date: date | None = None, *, now: float | None = None,
                 calendar: bool = False) -> DispositionCode:
        """The code's definition, once its companions are right: a callback code needs `callback_at` (after `now`
        when given), a promise needs a positive `ptp_amount` and a `ptp_date`; other codes must not carry them
        (a stray field is an integration mistake worth surfacing). ValueError names the field. With `calendar`
        (the API, whose `now` is the wall clock; the core's may be virtual) a callback and a promise must also fall
        within MAX_AHEAD_DAYS, and a promise not in the past."""
        found = self._codes.get(code) if isinstance(code, str) else None
        if found is None:
            raise ValueError(f"code: unknown disposition {code!r}")
        if found.callback:
            if callback_at is None:
                raise ValueError(f"callback_at: required for {code}")
            if isinstance(callback_at, bool) or not isinstance(callback_at, int | float) \
                    or not math.isfinite(callback_at):
                raise ValueError(f"callback_at: expected epoch seconds, got {callback_at!r}")
            if now is not None and callback_at <= now:
                raise ValueError(f"callback_at: must be in the future for {code}")
            if calendar and now is not None and callback_at > now + MAX_AHEAD_S:
                raise ValueError(f"callback_at: more than {MAX_AHEAD_DAYS} days ahead for {code} (epoch seconds "
                                 f"{callback_at!r}; milliseconds by mistake?)")
        elif callback_at is not None:
            raise ValueError(f"callback_at: {code} does not take a callback time")
        if found.promise_to_pay:
            if ptp_amount is None:
                raise ValueError(f"ptp_amount: required for {code}")
            if isinstance(ptp_amount, bool) or not isinstance(ptp_amount, int | float) \
                    or not math.isfinite(ptp_amount) or ptp_amount <= 0:
                raise ValueError(f"ptp_amount: expected a positive amount, got {ptp_amount!r}")
            if ptp_date is None:
                raise ValueError(f"ptp_date: required for {code}")
            if not isinstance(ptp_date, date):
                raise ValueError(f"ptp_date: expected a date, got {ptp_date!r}")
            if calendar and now is not None:
                # The debtor's today may be the UTC yesterday (zones run to UTC-12): no zone needed for the floor.
                earliest = datetime.fromtimestamp(now - 12 * 3600, UTC).date()
                if ptp_date < earliest:
                    raise ValueError(f"ptp_date: {ptp_date.isoformat()} is in the past")
                if ptp_date > datetime.fromtimestamp(now + MAX_AHEAD_S, UTC).date():
                    raise ValueError(f"ptp_date: {ptp_date.isoformat()} is more than {MAX_AHEAD_DAYS} days ahead")
        else:
            if ptp_amount is not None:
                raise ValueError(f"ptp_amount: {code} does not take a promise amount")
            if ptp_date is not None:
                raise ValueError(f"ptp_date: {code} does not take a promise date")
        return found
