"""Which local clocks a dial must respect: the debtor's zone and the dialed number's own.

Collection rules judge the calling window where the called person may be. When what is known conflicts (the lead
says New York, the phone dialed is a Honolulu landline) or is ambiguous (a Spanish mobile: Madrid or the Canaries),
a dial is placed only while the window is open in every place the person may be (as US Reg F's commentary puts it:
convenient in all the locations). So a dial respects:
- the lead's zone when it has one (given, or derived from its first phone), plus the dialed number's own zone when
  the number pins one down (a geographic number; several zones keeping one clock count as one) and it differs;
- when the lead has no zone (its first phone's candidates keep different clocks), every candidate zone of the
  dialed number: the dial waits until the window is open in all of them.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from dialer.compliance.calendar import zone
from dialer.leads import zone_for_e164
from dialer.model import Lead

_MAX_NUMBERS = 200_000  # numbers' zones kept; dropped wholesale beyond it (a lookup is cheap to redo)


class DialZones:
    """Zones per dial, with each number's candidate zones cached (parsing a number is the costly part)."""

    __slots__ = ("_dials", "_numbers")

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str | None], tuple[str, ...]] = {}
        self._dials: dict[tuple[str, str | None, str | None], tuple[ZoneInfo, ...] | None] = {}

    def of_number(self, number: str, country: str | None) -> tuple[str, ...]:
        """The zone the number pins down (one), or its candidates when their clocks differ; () when unknown."""
        key = (number, country)
        got = self._numbers.get(key)
        if got is None:
            try:
                one, candidates = zone_for_e164(number, country)
            except ValueError:  # not a number phonenumbers knows: only the lead's zone can place it
                one, candidates = None, []
            got = (one,) if one is not None else tuple(sorted(candidates))
            if len(self._numbers) >= _MAX_NUMBERS:
                self._numbers.clear()
            self._numbers[key] = got
        return got

    def for_dial(self, lead: Lead, number: str) -> tuple[ZoneInfo, ...] | None:
        """The zones whose window must be open to dial `number` of `lead`; None when the lead's zone is an unknown
        name, or the lead has none and the number gives none."""
        key = (number, lead.timezone, lead.country)
        try:
            return self._dials[key]  # the hot path: every dial is checked
        except KeyError:
            pass
        got = self._resolve(lead, number)
        if len(self._dials) >= _MAX_NUMBERS:
            self._dials.clear()
        self._dials[key] = got
        return got

    def _resolve(self, lead: Lead, number: str) -> tuple[ZoneInfo, ...] | None:
        own = self.of_number(number, lead.country)
        if lead.timezone is not None:
            tz = zone(lead.timezone)
            if tz is None:
                return None
            if len(own) == 1 and own[0] != tz.key:
                other = zone(own[0])
                if other is not None:
                    return (tz, other)
            return (tz,)
        zones = tuple(z for z in (zone(name) for name in own) if z is not None)
        return zones or None
