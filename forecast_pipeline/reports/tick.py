"""The schedule tick (the legacy ``schedules_tick``): claim due schedules, record one schedule run
per slot, advance ``next_run_at``; all in one short transaction.

- Due schedules (``active AND next_run_at <= now``) are locked with ``FOR UPDATE SKIP LOCKED``:
  a second tick running at the same moment skips them instead of waiting, and once the first
  commits their ``next_run_at`` is in the future, so each slot is recorded once.
- ``INSERT INTO schedule_runs ... ON CONFLICT (schedule_id, scheduled_for) DO NOTHING``: even a tick
  that found a slot already recorded (say ``next_run_at`` was set back by hand) does not double it.
- After downtime the latest missed slot runs once (``missed_slots`` says how many were dropped)
  and ``next_run_at`` moves to the first slot after now (see :mod:`.cadence`).
- A malformed schedule (unknown cadence, bad time zone, anchor day out of range) is logged with its
  id and reason, **deactivated** (``active = false``) and given ``last_error``; the others in the
  tick go on. Deactivating is deliberate: left active, it would be claimed and logged every minute
  and, past ``REPORT_TICK_LIMIT`` of them, crowd out valid schedules. Fix the row and set
  ``active = true`` (``forecast-pipeline reports add-schedule`` with the same name does both).

Requires PostgreSQL (``SKIP LOCKED``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from forecast_pipeline.app_db import leases
from forecast_pipeline.app_db.report_tables import report_schedules, schedule_runs
from forecast_pipeline.json_logging import FIELDS
from forecast_pipeline.reports.cadence import (
    anchor_of,
    catch_up,
    check_anchor_day,
    load_timezone,
    parse_cadence,
)

log = logging.getLogger(__name__)
UTC = dt.UTC


def run_key_for(schedule_id: int, slot: dt.datetime) -> str:
    """One Dagster run per schedule slot (the sensor's ``run_key``)."""
    return f"report-{schedule_id}-{slot.astimezone(UTC).isoformat()}"


@dataclass(frozen=True)
class DueRun:
    schedule_run_id: int
    schedule_id: int
    account_id: int
    scheduled_for: dt.datetime
    run_key: str
    missed_slots: int = 0


@dataclass(frozen=True)
class SkippedSchedule:
    schedule_id: int
    name: str
    reason: str


@dataclass
class TickResult:
    now: dt.datetime
    recorded: list[DueRun] = field(default_factory=list)
    """Slots recorded by this tick: one report run each."""
    already_recorded: list[tuple[int, dt.datetime]] = field(default_factory=list)
    malformed: list[SkippedSchedule] = field(default_factory=list)
    advanced: dict[int, dt.datetime] = field(default_factory=dict)
    """schedule id -> its new ``next_run_at``."""

    def add(self, other: TickResult) -> None:
        self.recorded += other.recorded
        self.already_recorded += other.already_recorded
        self.malformed += other.malformed
        self.advanced.update(other.advanced)

    def summary(self, dry_run: bool = False) -> str:
        would = "would be " if dry_run else ""
        return (
            f"{len(self.recorded)} slot(s) {would}recorded, {len(self.already_recorded)} already recorded, "
            f"{len(self.malformed)} malformed schedule(s) {would}deactivated, {len(self.advanced)} {would}advanced"
        )

    def as_dict(self) -> dict:
        return {
            "now": self.now.isoformat(),
            "recorded": [
                {
                    "schedule_run_id": d.schedule_run_id,
                    "schedule_id": d.schedule_id,
                    "account_id": d.account_id,
                    "scheduled_for": d.scheduled_for.isoformat(),
                    "missed_slots": d.missed_slots,
                    "run_key": d.run_key,
                }
                for d in self.recorded
            ],
            "already_recorded": [{"schedule_id": i, "scheduled_for": s.isoformat()} for i, s in self.already_recorded],
            "malformed": [{"schedule_id": m.schedule_id, "name": m.name, "reason": m.reason} for m in self.malformed],
            "advanced": {str(i): s.isoformat() for i, s in self.advanced.items()},
        }


def tick(
    engine: sa.Engine,
    *,
    now: dt.datetime | None = None,
    limit: int = 100,
    dry_run: bool = False,
    logger: logging.Logger | None = None,
) -> TickResult:
    """One tick over at most ``limit`` due schedules (oldest ``next_run_at`` first). With
    ``dry_run`` everything is computed the same way and rolled back."""
    logger = logger or log
    now = (now or dt.datetime.now(UTC)).astimezone(UTC)
    result = TickResult(now=now)
    s = report_schedules.c
    due = (
        sa.select(s.id, s.account_id, s.name, s.cadence, s.timezone, s.next_run_at, s.run_time, s.anchor_day)
        .where(s.active.is_(True), s.next_run_at <= now)
        .order_by(s.next_run_at, s.id)
        .limit(limit)
    )

    outcomes: dict[int, TickResult] = {}  # per schedule: kept only if its savepoint commits

    def take(conn: sa.Connection, row) -> dict | None:
        outcomes[row.id] = TickResult(now=now)
        return _process(conn, row, now, outcomes[row.id], logger, dry_run)

    def skipped(row, exc: BaseException) -> None:  # the row stays due and is retried next tick
        logger.error(f"report schedule {row.id} ({row.name!r}) failed in the tick and was skipped: {exc!r}")

    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            # a savepoint per schedule: one row's unexpected error never undoes the others
            for row in leases.claim(
                conn, due, table=report_schedules, take=take, skip_errors=(Exception,), on_skip=skipped
            ):
                result.add(outcomes[row.id])
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    return result


def _process(
    conn: sa.Connection, row, now: dt.datetime, result: TickResult, logger: logging.Logger, dry_run: bool = False
) -> dict | None:
    """Record the schedule's due slot; returns the schedule's new values (None: nothing due). A dry
    run's log says what would be written: its transaction is rolled back."""
    try:
        cadence = parse_cadence(row.cadence)
        tz = load_timezone(row.timezone)
        anchor_day = check_anchor_day(row.anchor_day)
        position = catch_up(row.next_run_at, now, cadence, tz, run_time=row.run_time, anchor_day=anchor_day)
        anchor = anchor_of(row.next_run_at, tz, row.run_time, anchor_day)
    except (ValueError, OverflowError) as exc:  # ScheduleDefinitionError is a ValueError
        reason = str(exc)
        result.malformed.append(SkippedSchedule(row.id, row.name, reason))
        done = "would be" if dry_run else "was"
        logger.warning(f"report schedule {row.id} ({row.name!r}) is malformed and {done} deactivated: {reason}")
        return {"active": False, "last_error": reason, "updated_at": now}
    slot = position.due_slot
    if slot is None:  # cannot happen for a row selected as due, but never record a future slot
        return None
    run_key = run_key_for(row.id, slot)
    inserted = conn.execute(
        postgresql.insert(schedule_runs)
        .values(
            schedule_id=row.id,
            scheduled_for=slot,
            missed_slots=position.missed_slots,
            status="queued",
            run_key=run_key,
            created_at=now,
        )
        .on_conflict_do_nothing(constraint="uq_schedule_runs_slot")
        .returning(schedule_runs.c.id)
    ).scalar_one_or_none()
    advance = {
        "next_run_at": position.next_slot,
        "run_time": anchor.run_time,
        "anchor_day": anchor.anchor_day if cadence == "monthly" else row.anchor_day,
        "last_error": None,
        "updated_at": now,
    }
    result.advanced[row.id] = position.next_slot
    if inserted is None:
        result.already_recorded.append((row.id, slot))
        logger.info(f"report schedule {row.id}: slot {slot.isoformat()} was already recorded")
        return advance
    result.recorded.append(DueRun(int(inserted), row.id, row.account_id, slot, run_key, position.missed_slots))
    fields = {
        "schedule_id": row.id,
        "schedule_run_id": int(inserted),
        "scheduled_for": slot.isoformat(),
        "missed_slots": position.missed_slots,
        "next_run_at": position.next_slot.isoformat(),
    }
    if dry_run:
        del fields["schedule_run_id"]
        logger.info(
            f"dry run: report slot would be recorded: schedule {row.id} slot {fields['scheduled_for']} "
            f"({position.missed_slots} missed, next {fields['next_run_at']})",
            extra={FIELDS: fields},
        )
        return advance
    logger.info(
        f"report slot recorded: schedule {row.id} slot {fields['scheduled_for']} (schedule run {int(inserted)}, "
        f"{position.missed_slots} missed, next {fields['next_run_at']})",
        extra={FIELDS: fields},
    )
    return advance


def unlaunched_runs(
    engine: sa.Engine, older_than_seconds: float, now: dt.datetime | None = None
) -> list[tuple[DueRun, dt.datetime]]:
    """Schedule runs still ``queued`` (their report run never started) recorded more than
    ``older_than_seconds`` ago, with when they were recorded: the tick committed but its run
    request may have been lost."""
    now = now or dt.datetime.now(UTC)
    r, s = schedule_runs.c, report_schedules.c
    query = (
        sa.select(r.id, r.schedule_id, s.account_id, r.scheduled_for, r.run_key, r.missed_slots, r.created_at)
        .join(report_schedules, s.id == r.schedule_id)
        .where(r.status == "queued")
        .order_by(r.id)
    )
    with engine.connect() as conn:
        stale = leases.expired(conn, query, r.created_at, older_than_seconds, now)
    return [(DueRun(*row[:6]), row.created_at) for row in stale]
