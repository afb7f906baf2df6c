"""Do-not-call list, global and per campaign, in memory.

Each entry carries the instant it takes effect (`added_at`), so a DNC file loaded ahead of time starts blocking at
the stated moment and a number added now blocks the very next dial. The shared stores keep their own DNC sets; this
is the structure the gates consult, fed from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

_FORMATTING = str.maketrans("", "", " -.()\t")
_ALWAYS = float("-inf")


class DncScope(StrEnum):
    GLOBAL = "global"
    CAMPAIGN = "campaign"


def normalize(number: str) -> str:
    """E.164 stays as is; visual separators ("+57 300-123 4567") are dropped so both spellings match."""
    if number[:1] == "+" and number[1:].isdigit():
        return number
    return number.translate(_FORMATTING)


class DncList:
    """Numbers not to dial: globally (`campaign_id=None`) or for one campaign; effective from `added_at`."""

    __slots__ = ("_campaigns", "_global")

    def __init__(self) -> None:
        self._global: dict[str, float] = {}
        self._campaigns: dict[str, dict[str, float]] = {}

    def _table(self, campaign_id: str | None, create: bool = False) -> dict[str, float] | None:
        if campaign_id is None:
            return self._global
        table = self._campaigns.get(campaign_id)
        if table is None and create:
            table = self._campaigns[campaign_id] = {}
        return table

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
        table[key] = added_at
        return True

    def add_many(self, numbers: Iterable[str], campaign_id: str | None = None, added_at: float = _ALWAYS) -> int:
        """A DNC file: every number effective from `added_at`. Returns how many entries were new or moved earlier."""
        return sum(self.add(n, campaign_id, added_at) for n in numbers)

    def remove(self, number: str, campaign_id: str | None = None) -> bool:
        table = self._table(campaign_id)
        return table is not None and table.pop(normalize(number), None) is not None

    def lookup(self, number: str, campaign_id: str | None = None, now: float | None = None) -> DncScope | None:
        """Which list blocks `number` at `now` (global first); None if neither. `now=None` counts every entry."""
        key = normalize(number)
        at = self._global.get(key)
        if at is not None and (now is None or at <= now):
            return DncScope.GLOBAL
        if campaign_id is not None:
            table = self._campaigns.get(campaign_id)
            if table is not None:
                at = table.get(key)
                if at is not None and (now is None or at <= now):
                    return DncScope.CAMPAIGN
        return None

    def contains(self, number: str, campaign_id: str | None = None, now: float | None = None) -> bool:
        return self.lookup(number, campaign_id, now) is not None

    def __len__(self) -> int:
        return len(self._global) + sum(len(t) for t in self._campaigns.values())
