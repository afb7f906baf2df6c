"""Do-not-call list, global and per campaign, in memory.

Each entry carries the instant it takes effect (`added_at`), so a DNC file loaded ahead of time starts blocking at
the stated moment and a number added now blocks the very next dial. The shared stores keep their own DNC sets; this
is the structure the gates consult, fed from them.

A number is filed under one key whatever its spelling, so a DNC'd number is never dialed in another format:
- written with its country code ("+", "00" or "tel:"), the key is its E.164 form as `phonenumbers` reads it, the
  form lead intake gives every dialed number: "+44 (0)20 7946 0958", "0044 20 7946 0958", "+4402079460958" and
  "+44 20 7946 0958 ext. 3" are all +442079460958 (an extension is dropped: the line itself is blocked);
- written without one ("020 7946 0958", "300 123 4567"), its country cannot be known here, so the entry blocks every
  number whose digits after some country code (1 to 3 digits) are the same, leading zeros ignored on both sides.
  That may block a same-digits number of another country too: the safe side for a do-not-call list.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

import phonenumbers
from phonenumbers import PhoneNumberFormat

from dialer.leads import normalise_phone

_ALWAYS = float("-inf")


class DncScope(StrEnum):
    GLOBAL = "global"
    CAMPAIGN = "campaign"


def _international(number: str) -> str | None:
    """`number` as E.164 when it is written with its country code, else None: read as lead intake reads numbers
    (so Mexico's retired "+52 1" is the same line), or, for what intake refuses, as `phonenumbers` formats it."""
    text = number.strip().removeprefix("tel:")
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        return None
    try:
        return normalise_phone(text, None)
    except ValueError:
        pass
    try:
        return phonenumbers.format_number(phonenumbers.parse(text, None), PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        digits = "".join(c for c in text if c.isdigit())
        return "+" + digits if digits else text


def _national(number: str) -> str:
    """The key of a number written without a country code: its digits, trunk zeros dropped."""
    return "".join(c for c in number if c.isdigit()).lstrip("0")


def normalize(number: str) -> str:
    """The key `number` is filed under: E.164 when written with a country code, else its national digits."""
    got = _international(number)
    return got if got is not None else _national(number)


def lookup_key(number: str) -> str:
    """The key to look `number` up under. The hot path: a number as intake or the API writes it (canonical E.164)
    is its own key; any other spelling is normalised."""
    if number[:1] == "+" and number[1:].isdigit():
        return number
    return normalize(number)


def _national_keys(e164: str) -> tuple[str, ...]:
    """The national keys that block E.164 `e164`: its digits after a country code of 0 to 3 digits (0: NANP's
    national form "1 212 ..." keeps the country code as trunk prefix), leading zeros dropped."""
    digits = e164[1:]
    return tuple(digits[k:].lstrip("0") for k in range(4))


class DncList:
    """Numbers not to dial: globally (`campaign_id=None`) or for one campaign; effective from `added_at`."""

    __slots__ = ("_campaigns", "_global", "_national")

    def __init__(self) -> None:
        self._global: dict[str, float] = {}
        self._campaigns: dict[str, dict[str, float]] = {}
        self._national = 0  # national-format entries held: only then does a lookup try national keys

    def _table(self, campaign_id: str | None, create: bool = False) -> dict[str, float] | None:
        if campaign_id is None:
            return self._global
        table = self._campaigns.get(campaign_id)
        if table is None and create:
            table = self._campaigns[campaign_id] = {}
        return table

    def entries(self, campaign_id: str | None = None) -> dict[str, float]:
        """The list's keys (as `normalize` files them) and when each took effect."""
        return dict(self._table(campaign_id) or {})

    def add(self, number: str, campaign_id: str | None = None, added_at: float = _ALWAYS) -> bool:
        """Block `number` from `added_at` on (default: always). Re-adding keeps the earliest effective time.

        Returns True when the entry is new or now takes effect earlier.
        """
        table = self._table(campaign_id, create=True)
        assert table is not None
        key = normalize(number)
        old = table.get(key)
        if old is not None and old <= added_at:
            return False
        if old is None and not key.startswith("+"):
            self._national += 1
        table[key] = added_at
        return True

    def add_many(self, numbers: Iterable[str], campaign_id: str | None = None, added_at: float = _ALWAYS) -> int:
        """A DNC file: every number effective from `added_at`. Returns how many entries were new or moved earlier."""
        return sum(self.add(n, campaign_id, added_at) for n in numbers)

    def remove(self, number: str, campaign_id: str | None = None) -> bool:
        table = self._table(campaign_id)
        key = normalize(number)
        if table is None or table.pop(key, None) is None:
            return False
        if not key.startswith("+"):
            self._national -= 1
        return True

    def lookup(self, number: str, campaign_id: str | None = None, now: float | None = None) -> DncScope | None:
        """Which list blocks `number` at `now` (global first); None if neither. `now=None` counts every entry.

        E.164 as lead intake writes it is taken as is (the hot path); any other spelling is normalised first.
        """
        key = lookup_key(number)
        keys = (key, *_national_keys(key)) if self._national and key.startswith("+") else (key,)
        if self._blocks(self._global, keys, now):
            return DncScope.GLOBAL
        if campaign_id is not None:
            table = self._campaigns.get(campaign_id)
            if table is not None and self._blocks(table, keys, now):
                return DncScope.CAMPAIGN
        return None

    @staticmethod
    def _blocks(table: dict[str, float], keys: tuple[str, ...], now: float | None) -> bool:
        for key in keys:
            at = table.get(key)
            if at is not None and (now is None or at <= now):
                return True
        return False

    def contains(self, number: str, campaign_id: str | None = None, now: float | None = None) -> bool:
        return self.lookup(number, campaign_id, now) is not None

    def __len__(self) -> int:
        return len(self._global) + sum(len(t) for t in self._campaigns.values())
