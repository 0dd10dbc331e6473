"""Cadence arithmetic for report schedules: pure functions over aware datetimes and ``zoneinfo``.

A schedule runs at a wall-clock time (``run_time``) in its own time zone, on days given by its
cadence: ``daily`` (+1 day), ``weekly`` (+7 days), ``biweekly`` (+14 days) or ``monthly`` (+1
month on ``anchor_day``, clamped to the month's last day: an anchor of 31 gives Jan 31 -> Feb 28
(29) -> Mar 31 -> Apr 30). Days are counted on the local calendar, so the wall-clock time is kept
across DST changes and the UTC instant moves instead.

Local times that DST makes odd follow PEP 495 (``fold=0``):

- a time that does not exist that day (spring forward, e.g. 02:30 in New York on 2025-03-09) runs
  as late as the gap is long (03:30 local); the next slot is back at 02:30;
- a time that occurs twice (fall back, e.g. 01:30 on 2025-11-02) runs once, at the first one.

Slots are returned in UTC.
"""

from __future__ import annotations

import calendar
import datetime as dt
import zoneinfo
from dataclasses import dataclass

from forecast_pipeline.time_zones import iana_zone

CADENCES = ("daily", "weekly", "biweekly", "monthly")
_DAYS = {"daily": 1, "weekly": 7, "biweekly": 14}
UTC = dt.UTC


class ScheduleDefinitionError(ValueError):
    """A schedule that cannot be computed (unknown cadence, bad time zone, bad anchor)."""


def parse_cadence(cadence: object) -> str:
    if not isinstance(cadence, str) or cadence.strip().lower() not in CADENCES:
        raise ScheduleDefinitionError(f"unknown cadence {cadence!r}; expected one of {', '.join(CADENCES)}")
    return cadence.strip().lower()


def load_timezone(name: object) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise ScheduleDefinitionError(f"time zone {name!r} is not an IANA time zone name (e.g. Europe/Berlin)")
    try:
        return iana_zone(name.strip())
    except ValueError as exc:
        raise ScheduleDefinitionError(f"time zone {name!r} is not an IANA time zone name (e.g. Europe/Berlin)") from exc


def check_anchor_day(day: object) -> int | None:
    if day is None:
        return None
    if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
        raise ScheduleDefinitionError(f"anchor day {day!r} must be a whole number from 1 to 31")
    return day


def _aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone: slots are aware datetimes")
    return moment


def local_instant(day: dt.date, run_time: dt.time, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """The UTC instant of ``run_time`` on local ``day`` (PEP 495 ``fold=0`` for gaps and folds)."""
    local = dt.datetime.combine(day, run_time.replace(tzinfo=None, fold=0), tzinfo=tz)
    return local.astimezone(UTC)


def add_months(day: dt.date, months: int, anchor_day: int) -> dt.date:
    """``day``'s month plus ``months``, on ``anchor_day`` clamped to that month's length."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return dt.date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class Anchor:
    """What a schedule keeps from slot to slot: local time of day and (monthly) day of month."""

    run_time: dt.time
    anchor_day: int


def anchor_of(slot: dt.datetime, tz: zoneinfo.ZoneInfo, run_time: dt.time | None = None, anchor_day: int | None = None):
    """The schedule's anchor: the given values, else those of ``slot`` read in ``tz``."""
    local = _aware(slot).astimezone(tz)
    return Anchor(
        run_time=(run_time or local.time()).replace(tzinfo=None, fold=0),
        anchor_day=anchor_day or local.day,
    )


def next_slot(
    slot: dt.datetime,
    cadence: str,
    tz: zoneinfo.ZoneInfo,
    *,
    run_time: dt.time | None = None,
    anchor_day: int | None = None,
) -> dt.datetime:
    """The slot after ``slot`` (UTC). ``run_time``/``anchor_day`` default to ``slot``'s own, read in
    ``tz``; pass the schedule's stored values so a DST-shifted or clamped slot does not drift."""
    cadence = parse_cadence(cadence)
    anchor = anchor_of(slot, tz, run_time, anchor_day)
    local_day = slot_day(slot, tz, anchor.run_time)
    if cadence == "monthly":
        following = add_months(local_day, 1, anchor.anchor_day)
    else:
        following = local_day + dt.timedelta(days=_DAYS[cadence])
    return local_instant(following, anchor.run_time, tz)


def slot_day(slot: dt.datetime, tz: zoneinfo.ZoneInfo, run_time: dt.time) -> dt.date:
    """The local day a slot at ``run_time`` belongs to: the day before its date in ``tz`` when a
    DST gap pushed it past midnight (23:30 in America/Nuuk on the night clocks spring forward)."""
    day = slot.astimezone(tz).date()
    previous = day - dt.timedelta(days=1)
    return previous if local_instant(previous, run_time, tz) == slot else day


def first_slot(
    start: dt.date,
    cadence: str,
    tz: zoneinfo.ZoneInfo,
    run_time: dt.time,
    anchor_day: int | None = None,
) -> dt.datetime:
    """The first slot on or after local day ``start`` (monthly: on ``anchor_day``, clamped)."""
    cadence = parse_cadence(cadence)
    if cadence != "monthly" or anchor_day is None:
        return local_instant(start, run_time, tz)
    this_month = add_months(start, 0, anchor_day)
    return local_instant(this_month if this_month >= start else add_months(start, 1, anchor_day), run_time, tz)


@dataclass(frozen=True)
class CatchUp:
    """Where a schedule stands at ``now``."""

    due_slot: dt.datetime | None
    """The latest slot at or before ``now`` (the one to run), or None if nothing is due."""
    next_slot: dt.datetime
    """The first slot after ``now``: the schedule's new ``next_run_at``."""
    missed_slots: int
    """Slots before ``due_slot`` that were skipped (downtime): they are not run."""


def catch_up(
    next_run_at: dt.datetime,
    now: dt.datetime,
    cadence: str,
    tz: zoneinfo.ZoneInfo,
    *,
    run_time: dt.time | None = None,
    anchor_day: int | None = None,
) -> CatchUp:
    """Given a schedule's ``next_run_at`` and ``now``: the single slot to run and the next future
    slot. After downtime the missed slots collapse into one run of the latest of them."""
    _aware(now)
    anchor = anchor_of(next_run_at, tz, run_time, anchor_day)
    slot = _aware(next_run_at).astimezone(UTC)
    if slot > now:
        return CatchUp(None, slot, 0)
    missed = 0
    following = next_slot(slot, cadence, tz, run_time=anchor.run_time, anchor_day=anchor.anchor_day)
    while following <= now:
        slot, missed = following, missed + 1
        following = next_slot(slot, cadence, tz, run_time=anchor.run_time, anchor_day=anchor.anchor_day)
    return CatchUp(slot, following, missed)
