"""Cadence arithmetic (pure, no services): DST in several time zones, month ends, catch-up."""

import datetime as dt
import zoneinfo

import pytest

from forecast_pipeline.reports.cadence import (
    ScheduleDefinitionError,
    add_months,
    catch_up,
    check_anchor_day,
    first_slot,
    load_timezone,
    local_instant,
    next_slot,
    parse_cadence,
)

UTC = dt.UTC
NY = zoneinfo.ZoneInfo("America/New_York")
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
SYDNEY = zoneinfo.ZoneInfo("Australia/Sydney")
LORD_HOWE = zoneinfo.ZoneInfo("Australia/Lord_Howe")  # DST shift of 30 minutes


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def local(tz, *args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


@pytest.mark.parametrize(
    ("tz", "cadence", "start", "expected"),
    [
        # New York springs forward on 2025-03-09: 06:00 EST is 11:00Z, 06:00 EDT is 10:00Z
        (NY, "daily", utc(2025, 3, 8, 11, 0), utc(2025, 3, 9, 10, 0)),
        (NY, "weekly", utc(2025, 3, 5, 11, 0), utc(2025, 3, 12, 10, 0)),
        # and falls back on 2025-11-02
        (NY, "biweekly", utc(2025, 10, 25, 10, 0), utc(2025, 11, 8, 11, 0)),
        # Berlin falls back on 2025-10-26: 06:00 CEST is 04:00Z, 06:00 CET is 05:00Z
        (BERLIN, "daily", utc(2025, 10, 25, 4, 0), utc(2025, 10, 26, 5, 0)),
        (BERLIN, "weekly", utc(2025, 3, 24, 5, 0), utc(2025, 3, 31, 4, 0)),
        # Sydney (southern hemisphere) leaves DST on 2025-04-06: 09:00 AEDT 22:00Z, 09:00 AEST 23:00Z
        (SYDNEY, "weekly", utc(2025, 3, 31, 22, 0), utc(2025, 4, 7, 23, 0)),
        (SYDNEY, "biweekly", utc(2025, 9, 28, 23, 0), utc(2025, 10, 12, 22, 0)),
        # Lord Howe moves by 30 minutes (UTC+11 -> +10:30 on 2025-04-06)
        (LORD_HOWE, "daily", utc(2025, 4, 3, 22, 0), utc(2025, 4, 4, 22, 0)),
        (LORD_HOWE, "daily", utc(2025, 4, 4, 22, 0), utc(2025, 4, 5, 22, 30)),
    ],
)
def test_wall_clock_time_is_kept_across_dst(tz, cadence, start, expected):
    following = next_slot(start, cadence, tz)
    assert following == expected
    assert following.astimezone(tz).time() == start.astimezone(tz).time()


def test_a_year_of_daily_slots_stays_at_the_same_local_time_in_every_zone():
    for tz in (NY, BERLIN, SYDNEY, LORD_HOWE, zoneinfo.ZoneInfo("UTC")):
        slot = local_instant(dt.date(2025, 1, 1), dt.time(6, 0), tz)
        offsets = set()
        for _ in range(365):
            slot = next_slot(slot, "daily", tz)
            assert slot.astimezone(tz).time() == dt.time(6, 0)
            offsets.add(slot.astimezone(tz).utcoffset())
        assert slot.astimezone(tz).date() == dt.date(2026, 1, 1)
        assert len(offsets) == (1 if str(tz) == "UTC" else 2)


def test_a_time_missing_on_the_spring_forward_day_runs_late_then_returns():
    # 02:30 does not exist in New York on 2025-03-09
    before = local(NY, 2025, 3, 8, 2, 30)
    gap_day = next_slot(before, "daily", NY)
    assert gap_day == utc(2025, 3, 9, 7, 30)
    assert gap_day.astimezone(NY).strftime("%Y-%m-%d %H:%M %Z") == "2025-03-09 03:30 EDT"
    # with the schedule's stored run_time the next slot is back at 02:30
    assert next_slot(gap_day, "daily", NY, run_time=dt.time(2, 30)).astimezone(NY).time() == dt.time(2, 30)
    # catch_up keeps the anchor of next_run_at, so a run of slots never drifts to 03:30
    position = catch_up(before, utc(2025, 3, 12, 12), "daily", NY)
    assert position.due_slot.astimezone(NY).strftime("%m-%d %H:%M") == "03-12 02:30"
    assert position.missed_slots == 4


def test_a_time_repeated_on_the_fall_back_day_runs_once_at_its_first_occurrence():
    slot = next_slot(local(NY, 2025, 11, 1, 1, 30), "daily", NY)
    assert slot == utc(2025, 11, 2, 5, 30)  # 01:30 EDT, not 01:30 EST (06:30Z)
    assert next_slot(slot, "daily", NY) == utc(2025, 11, 3, 6, 30)


def test_monthly_clamps_to_the_month_end_and_returns_to_the_anchor_day():
    tz = zoneinfo.ZoneInfo("UTC")
    slot = utc(2025, 1, 31, 6)
    seen = []
    for _ in range(5):
        slot = next_slot(slot, "monthly", tz, anchor_day=31)
        seen.append(slot.date().isoformat())
    assert seen == ["2025-02-28", "2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30"]
    assert next_slot(utc(2024, 1, 31, 6), "monthly", tz, anchor_day=31) == utc(2024, 2, 29, 6)  # leap year
    assert next_slot(utc(2025, 2, 28, 6), "monthly", tz, anchor_day=30) == utc(2025, 3, 30, 6)
    assert next_slot(utc(2025, 12, 31, 6), "monthly", tz, anchor_day=31) == utc(2026, 1, 31, 6)
    # without the anchor the clamped day would stick: that is why schedules store anchor_day
    assert next_slot(utc(2025, 2, 28, 6), "monthly", tz) == utc(2025, 3, 28, 6)


def test_monthly_across_dst_keeps_local_time_and_anchor():
    feb = local(BERLIN, 2025, 2, 28, 9, 0)  # CET, 08:00Z
    march = next_slot(feb, "monthly", BERLIN, anchor_day=31, run_time=dt.time(9, 0))
    assert march == utc(2025, 3, 31, 7, 0)  # 09:00 CEST
    assert next_slot(march, "monthly", BERLIN, anchor_day=31) == utc(2025, 4, 30, 7, 0)
    assert next_slot(local(NY, 2025, 10, 31, 23, 30), "monthly", NY, anchor_day=31) == utc(2025, 12, 1, 4, 30)


def test_add_months():
    assert add_months(dt.date(2025, 1, 31), 1, 31) == dt.date(2025, 2, 28)
    assert add_months(dt.date(2025, 11, 15), 3, 31) == dt.date(2026, 2, 28)
    assert add_months(dt.date(2025, 3, 15), -1, 30) == dt.date(2025, 2, 28)
    assert add_months(dt.date(2025, 3, 15), 0, 10) == dt.date(2025, 3, 10)


def test_catch_up_when_nothing_is_due():
    next_run = utc(2025, 6, 1, 6)
    position = catch_up(next_run, utc(2025, 6, 1, 5, 59), "daily", BERLIN)
    assert position.due_slot is None and position.next_slot == next_run and position.missed_slots == 0


def test_catch_up_on_time_runs_the_slot_and_moves_one_step():
    next_run = utc(2025, 6, 1, 6)
    position = catch_up(next_run, next_run, "weekly", BERLIN)
    assert position.due_slot == next_run and position.missed_slots == 0
    assert position.next_slot == utc(2025, 6, 8, 6)


def test_catch_up_after_downtime_runs_the_latest_missed_slot_once():
    next_run = local(NY, 2025, 3, 6, 6, 0)
    position = catch_up(next_run, utc(2025, 3, 11, 12, 0), "daily", NY)  # 08:00 EDT on the 11th
    assert position.due_slot == local(NY, 2025, 3, 11, 6, 0)
    assert position.missed_slots == 5  # the 6th to the 10th are dropped
    assert position.next_slot == local(NY, 2025, 3, 12, 6, 0)
    monthly = catch_up(utc(2025, 1, 31, 6), utc(2025, 4, 15), "monthly", zoneinfo.ZoneInfo("UTC"))
    assert (monthly.due_slot, monthly.next_slot, monthly.missed_slots) == (utc(2025, 3, 31, 6), utc(2025, 4, 30, 6), 2)
    biweekly = catch_up(utc(2025, 1, 1, 6), utc(2025, 12, 31, 12), "biweekly", zoneinfo.ZoneInfo("UTC"))
    assert biweekly.due_slot == utc(2025, 12, 31, 6) and biweekly.missed_slots == 26


def test_first_slot():
    assert first_slot(dt.date(2025, 3, 9), "daily", NY, dt.time(6)) == utc(2025, 3, 9, 10)
    assert first_slot(dt.date(2025, 2, 10), "monthly", BERLIN, dt.time(9), anchor_day=31) == utc(2025, 2, 28, 8)
    assert first_slot(dt.date(2025, 2, 10), "monthly", BERLIN, dt.time(9), anchor_day=5) == utc(2025, 3, 5, 8)


@pytest.mark.parametrize("cadence", ["hourly", "", None, 7, "Every day"])
def test_unknown_cadences_are_rejected(cadence):
    with pytest.raises(ScheduleDefinitionError, match="unknown cadence"):
        parse_cadence(cadence)
    with pytest.raises(ScheduleDefinitionError):
        next_slot(utc(2025, 1, 1), cadence, NY)


def test_cadence_names_are_normalised():
    assert parse_cadence(" Weekly ") == "weekly"


# localtime is the evaluating host's own zone (the CLI's and the daemon's can differ), Factory has no
# offset of its own, right/ zones count leap seconds (27 s off), posix/ duplicates the names
@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus_Mons", "", None, "../etc/passwd", "EST5EDT/x", "localtime", "Factory", "posixrules"]
    + ["right/UTC", "posix/Europe/Berlin"],
)
def test_bad_time_zones_are_rejected(name):
    with pytest.raises(ScheduleDefinitionError, match="not an IANA time zone"):
        load_timezone(name)


@pytest.mark.parametrize("day", [0, 32, -1, "3", True, 1.5])
def test_bad_anchor_days_are_rejected(day):
    with pytest.raises(ScheduleDefinitionError, match="anchor day"):
        check_anchor_day(day)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="no time zone"):
        catch_up(dt.datetime(2025, 1, 1), utc(2025, 1, 2), "daily", NY)


NUUK = zoneinfo.ZoneInfo("America/Nuuk")  # springs forward at 23:00 local, into the next day


def test_a_slot_pushed_past_midnight_by_a_gap_keeps_its_day():
    # 23:30 does not exist in Nuuk on Saturday 2025-03-29: it runs at 00:30 on the 30th (UTC-1)
    saturday = local_instant(dt.date(2025, 3, 29), dt.time(23, 30), NUUK)
    assert saturday == utc(2025, 3, 30, 1, 30)
    assert saturday.astimezone(NUUK).date() == dt.date(2025, 3, 30)
    # daily: the 30th's own 23:30 slot still runs (not skipped to the 31st)
    assert next_slot(saturday, "daily", NUUK, run_time=dt.time(23, 30)) == local(NUUK, 2025, 3, 30, 23, 30)
    # weekly: back on Saturday, not moved to Sunday for good
    weekly = next_slot(saturday, "weekly", NUUK, run_time=dt.time(23, 30))
    assert weekly == local(NUUK, 2025, 4, 5, 23, 30)
    # the tick after the Saturday slot moves next_run_at to the 30th's slot
    position = catch_up(saturday, utc(2025, 3, 30, 1, 31), "daily", NUUK, run_time=dt.time(23, 30))
    assert (position.due_slot, position.missed_slots) == (saturday, 0)
    assert position.next_slot == local(NUUK, 2025, 3, 30, 23, 30)
