"""Retention: readings and delivered notifications older than ``ALERT_RETENTION_DAYS`` are deleted,
in short batches, by the ``alert_retention_sensor``.

Never deleted, whatever their age:

- each source's latest reading of each metric (what the evaluation and ``$age`` alerts read; a
  source reporting once a week would otherwise lose it);
- the reading an open event fired on;
- any notification not delivered (pending or dead-lettered), and every notification of an event
  that is open or still has one undelivered;
- events themselves (the alert history is small).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.app_db.alert_tables import alert_events, alert_notifications, readings

BATCH = 5000


@dataclass
class RetentionStats:
    readings: int = 0
    notifications: int = 0
    finished: bool = True
    """False when the time budget ran out first: the next run goes on."""


def purge(
    engine: sa.Engine,
    now: dt.datetime,
    retention_days: int,
    *,
    not_after: dt.datetime | None = None,
    budget_seconds: float = 30.0,
) -> RetentionStats:
    """Delete what retention allows (see the module docstring). ``not_after``: readings dated later
    are ignored by the evaluation, so they do not count as a newer reading."""
    cutoff = now - dt.timedelta(days=retention_days)
    not_after = not_after or now
    deadline = time.monotonic() + budget_seconds
    stats = RetentionStats()
    with engine.connect() as conn:
        fired_on = {
            (metadata or {}).get("reading_id")
            for metadata in conn.execute(
                sa.select(alert_events.c["metadata"]).where(sa.not_(alert_events.c.is_resolved))
            ).scalars()
        }
    fired_on.discard(None)

    old, newer = readings.alias("old"), readings.alias("newer")  # aliases: DELETE FROM readings must not correlate
    has_newer = (
        sa.select(newer.c.id)
        .where(
            newer.c.device_id == old.c.device_id,
            newer.c.metric == old.c.metric,
            newer.c.timestamp <= not_after,
            sa.or_(
                newer.c.timestamp > old.c.timestamp,
                sa.and_(newer.c.timestamp == old.c.timestamp, newer.c.id > old.c.id),
            ),
        )
        .exists()
    )
    old_readings = sa.select(old.c.id).where(old.c.timestamp < cutoff, has_newer)
    if fired_on:
        old_readings = old_readings.where(old.c.id.not_in(sorted(fired_on)))
    stats.readings = _delete_in_batches(engine, readings, old_readings, deadline, stats)

    n, other = alert_notifications.alias("n"), alert_notifications.alias("other")
    undelivered_sibling = sa.select(other.c.id).where(other.c.event_id == n.c.event_id, other.c.sent_at.is_(None))
    resolved = sa.select(alert_events.c.id).where(alert_events.c.is_resolved)
    old_notifications = sa.select(n.c.id).where(
        n.c.sent_at.is_not(None), n.c.sent_at < cutoff, n.c.event_id.in_(resolved), ~undelivered_sibling.exists()
    )
    stats.notifications = _delete_in_batches(engine, alert_notifications, old_notifications, deadline, stats)
    return stats


def _delete_in_batches(
    engine: sa.Engine, table: sa.Table, candidates: sa.Select, deadline: float, stats: RetentionStats
) -> int:
    deleted = 0
    while True:
        if time.monotonic() > deadline:
            stats.finished = False
            return deleted
        batch = candidates.limit(BATCH).scalar_subquery()
        with engine.begin() as conn:
            count = conn.execute(sa.delete(table).where(table.c.id.in_(batch))).rowcount
        deleted += count
        if count < BATCH:
            return deleted
