"""Database reads and writes for alert evaluation. Every statement is parameterised, every write
is idempotent, and each alert's writes are one short transaction.

The race between two evaluators is settled by the database: an event is inserted with
``ON CONFLICT (alert_id) WHERE NOT is_resolved DO NOTHING`` against the partial unique index, and
resolved with ``UPDATE ... WHERE id = :id AND NOT is_resolved``; only the statement that changed a
row queues a notification, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from forecast_pipeline.alerts.evaluate import Alert, Decision, Reading, Source
from forecast_pipeline.app_db.alert_tables import alert_events, alert_notifications, alerts, devices, readings

OPEN_EVENT = sa.text("NOT is_resolved")
"""The partial unique index's predicate; ON CONFLICT must name it for PostgreSQL to infer the index."""


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """Timezone-aware UTC (SQLite hands back naive datetimes, which the app writes in UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _insert(conn: sa.Connection, table: sa.Table):
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"alert tables need PostgreSQL or SQLite (APP_DATABASE_URL), not {conn.dialect.name}")


@dataclass(frozen=True)
class AlertInput:
    """One enabled alert with everything its evaluation needs."""

    alert: Alert
    source: Source | None
    reading: Reading | None
    open_event_id: int | None
    source_name: str | None = None
    future_readings: int = 0
    """Readings of this source and metric dated after the cut-off, ignored."""


def load_inputs(conn: sa.Connection, not_after: dt.datetime | None = None) -> list[AlertInput]:
    """Every enabled alert with its source, its latest reading of the metric dated at most
    ``not_after`` (later ones are counted, not used: a clock far ahead would otherwise keep its
    reading "latest" for ever) and its open event, in one statement (the latest reading and the
    count are indexed correlated lookups per alert)."""
    latest = readings.alias("latest")
    same_series = sa.and_(latest.c.device_id == alerts.c.device_id, latest.c.metric == alerts.c.metric)
    in_time = sa.true() if not_after is None else latest.c.timestamp <= not_after
    latest_id = (
        sa.select(latest.c.id)
        .where(same_series, in_time)
        .order_by(latest.c.timestamp.desc(), latest.c.id.desc())
        .limit(1)
        .correlate(alerts)
        .scalar_subquery()
    )
    future = (
        sa.literal(0)
        if not_after is None
        else sa.select(sa.func.count())
        .select_from(latest)
        .where(same_series, latest.c.timestamp > not_after)
        .correlate(alerts)
        .scalar_subquery()
    )
    open_event = alert_events.alias("open_event")
    query = (
        sa.select(
            alerts.c.id,
            alerts.c.name,
            alerts.c.device_id,
            alerts.c.metric,
            alerts.c.operator,
            alerts.c.threshold_value,
            alerts.c.value_path,
            devices.c.id.label("source_id"),
            devices.c.name.label("source_name"),
            devices.c.is_active,
            devices.c.poll_enabled,
            readings.c.id.label("reading_id"),
            readings.c.metric.label("reading_metric"),
            readings.c.value,
            readings.c.json_value,
            readings.c["metadata"].label("reading_metadata"),
            readings.c.timestamp,
            open_event.c.id.label("open_event_id"),
            future.label("future_readings"),
        )
        .select_from(
            alerts.outerjoin(devices, devices.c.id == alerts.c.device_id)
            .outerjoin(readings, readings.c.id == latest_id)
            .outerjoin(open_event, sa.and_(open_event.c.alert_id == alerts.c.id, sa.not_(open_event.c.is_resolved)))
        )
        .where(alerts.c.is_enabled.is_(True))
        .order_by(alerts.c.id)
    )
    inputs = []
    for row in conn.execute(query):
        alert = Alert(
            id=row.id,
            device_id=row.device_id,
            metric=row.metric,
            operator=row.operator,
            threshold_value=row.threshold_value,
            value_path=row.value_path,
            name=row.name,
        )
        source = (
            Source(row.source_id, row.source_name, bool(row.is_active), bool(row.poll_enabled))
            if row.source_id is not None
            else None
        )
        reading = (
            Reading(
                id=row.reading_id,
                metric=row.reading_metric,
                value=row.value,
                json_value=row.json_value,
                metadata=row.reading_metadata,
                timestamp=utc(row.timestamp),
            )
            if row.reading_id is not None
            else None
        )
        inputs.append(
            AlertInput(alert, source, reading, row.open_event_id, row.source_name, int(row.future_readings or 0))
        )
    return inputs


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return utc(value).isoformat()
    return value


def event_payload(conn: sa.Connection, event_id: int, kind: str) -> dict[str, Any]:
    """The JSON a webhook receives: the event row (legacy columns) plus its alert's and source's names."""
    row = (
        conn.execute(
            sa.select(alert_events, alerts.c.name.label("alert_name"), devices.c.name.label("device_name"))
            .select_from(
                alert_events.join(alerts, alerts.c.id == alert_events.c.alert_id).join(
                    devices, devices.c.id == alert_events.c.device_id
                )
            )
            .where(alert_events.c.id == event_id)
        )
        .mappings()
        .one()
    )
    return {"type": f"alert.{kind}", "event": {k: _jsonable(v) for k, v in row.items()}}


def queue_notification(conn: sa.Connection, event_id: int, kind: str, payload: dict[str, Any] | None = None) -> None:
    """Queue the webhook notification for an event change (idempotent per event and kind)."""
    payload = payload or event_payload(conn, event_id, kind)
    conn.execute(
        _insert(conn, alert_notifications)
        .values(event_id=event_id, kind=kind, payload=payload)
        .on_conflict_do_nothing(index_elements=["event_id", "kind"])
    )


def superseded(conn: sa.Connection, item: AlertInput, not_after: dt.datetime) -> str | None:
    """Why a decision on ``item`` (loaded earlier) is out of date, or None: the alert was disabled
    or its rule changed, or a reading of the series newer than the one judged is in (dated at most
    ``not_after``, as ``load_inputs`` reads them)."""
    alert, reading = item.alert, item.reading
    current = conn.execute(
        sa.select(
            alerts.c.is_enabled, alerts.c.operator, alerts.c.threshold_value, alerts.c.metric, alerts.c.device_id
        ).where(alerts.c.id == alert.id)
    ).one_or_none()
    rule = (alert.operator, alert.threshold_value, alert.metric, alert.device_id)
    if current is None or not current.is_enabled or tuple(current[1:]) != rule:
        return "the alert changed"
    if reading is None:
        return None
    series = (readings.c.device_id == alert.device_id, readings.c.metric == alert.metric)
    later = sa.or_(
        readings.c.timestamp > reading.timestamp,
        sa.and_(readings.c.timestamp == reading.timestamp, readings.c.id > reading.id),
    )
    newer = conn.execute(sa.select(sa.exists().where(*series, later, readings.c.timestamp <= not_after))).scalar()
    return "a newer reading arrived" if newer else None


def create_event(conn: sa.Connection, item: AlertInput, decision: Decision, now: dt.datetime) -> int | None:
    """Open an event for a triggered alert and queue its notification (whether or not a webhook is
    configured: it is sent once one is); ``None`` when one is open already (another evaluator won)."""
    alert, reading = item.alert, item.reading
    metadata = {
        "message": decision.message,
        "device_name": item.source_name,
        "alert_name": alert.name,
        "value_path": alert.value_path,
        "reading_id": reading.id if reading else None,
        "reading_timestamp": _jsonable(reading.timestamp) if reading else None,
    }
    event_id = conn.execute(
        _insert(conn, alert_events)
        .values(
            alert_id=alert.id,
            device_id=alert.device_id,
            triggered_at=now,
            current_value=decision.value,
            threshold_value=alert.threshold_value,
            operator=alert.operator,
            metric=alert.metric,
            is_resolved=False,
            metadata=metadata,
        )
        .on_conflict_do_nothing(index_elements=["alert_id"], index_where=OPEN_EVENT)
        .returning(alert_events.c.id)
    ).scalar_one_or_none()
    if event_id is not None:
        queue_notification(conn, event_id, "triggered")
    return event_id


ALWAYS = sa.true()
ALERT_DISABLED = "alert_disabled"
SOURCE_INACTIVE = "source_inactive"
ALERT_CHANGED = "alert_changed"
# ``resolved_reason`` of an open event its alert can no longer resolve: the alert disabled, its
# source inactive (neither is evaluated any more), or its rule changed (operator, threshold, metric
# or source: the new rule would resolve it by another test, or another series).
_SOURCE_INACTIVE = sa.exists().where(devices.c.id == alerts.c.device_id, devices.c.is_active.is_(False))
_RULE_CHANGED = sa.or_(
    alerts.c.operator != alert_events.c.operator,
    alerts.c.threshold_value != alert_events.c.threshold_value,
    alerts.c.metric != alert_events.c.metric,
    alerts.c.device_id != alert_events.c.device_id,
)
ORPHANED_BECAUSE = {
    ALERT_DISABLED: alerts.c.is_enabled.is_(False),
    SOURCE_INACTIVE: _SOURCE_INACTIVE,
    ALERT_CHANGED: _RULE_CHANGED,
}


def resolve_event(conn: sa.Connection, event_id: int, value: float | None, now: dt.datetime) -> bool:
    """Resolve an open event with the value that ended it and queue the resolution; False if it was
    resolved already. The trigger is queued first if it never was (an event opened by an older
    version without a webhook), so the receiver never gets a resolution without its trigger; only
    by the evaluator that resolves it (another one's trigger, long delivered, may be gone by retention)."""
    return _resolve(conn, event_id, value, now)


def close_orphaned_event(conn: sa.Connection, event_id: int, reason: str, now: dt.datetime) -> bool:
    """Close an open event its alert can no longer resolve (``reason``, see ``ORPHANED_BECAUSE``):
    left open, it would stay so for ever, and with it the receiver's incident. Resolved with no
    value and ``resolved_reason`` in its metadata, with a resolution notification like any other
    (every resolution is sent). Only while the reason still holds: an alert enabled again
    meanwhile is evaluated again. False if it was not closed."""
    still = sa.exists().where(alerts.c.id == alert_events.c.alert_id, ORPHANED_BECAUSE[reason])
    return _resolve(conn, event_id, None, now, reason=reason, where=still)


def _resolve(
    conn: sa.Connection,
    event_id: int,
    value: float | None,
    now: dt.datetime,
    reason: str | None = None,
    where: sa.ColumnElement[bool] = ALWAYS,
) -> bool:
    triggered = event_payload(conn, event_id, "triggered")  # as it was while open
    values: dict[str, Any] = {"is_resolved": True, "resolved_at": now, "resolution_value": value}
    if reason:
        values["metadata"] = {**(triggered["event"]["metadata"] or {}), "resolved_reason": reason}
    changed = conn.execute(
        sa.update(alert_events)
        .where(alert_events.c.id == event_id, sa.not_(alert_events.c.is_resolved), where)
        .values(**values)
    ).rowcount
    if changed:
        queue_notification(conn, event_id, "triggered", triggered)  # no-op when queued at the trigger
        queue_notification(conn, event_id, "resolved")
    return bool(changed)


def ensure_source(conn: sa.Connection, name: str, kind: str = "sensor", poll_enabled: bool = True) -> int:
    """The id of the source called ``name``, created if missing (idempotent, race-safe)."""
    existing = conn.execute(sa.select(devices.c.id).where(devices.c.name == name)).scalar_one_or_none()
    if existing is not None:
        return existing
    conn.execute(
        _insert(conn, devices)
        .values(name=name, kind=kind, is_active=True, poll_enabled=poll_enabled)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return conn.execute(sa.select(devices.c.id).where(devices.c.name == name)).scalar_one()


def add_readings(
    conn: sa.Connection,
    device_id: int,
    values: Mapping[str, float],
    timestamp: dt.datetime,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """One reading per metric, all at ``timestamp``; returns how many were written."""
    rows = [
        {
            "device_id": device_id,
            "metric": metric,
            "value": float(value),
            "metadata": dict(metadata) if metadata else None,
            "timestamp": utc(timestamp),
        }
        for metric, value in values.items()
    ]
    if rows:
        conn.execute(sa.insert(readings), rows)
    return len(rows)


def orphaned_open_events(conn: sa.Connection) -> list[sa.Row]:
    """Open events their alert can no longer resolve (``id``, ``alert_id``, ``alert_name``,
    ``reason``), the first reason of ``ORPHANED_BECAUSE`` that holds."""
    reason = sa.case(*((condition, name) for name, condition in ORPHANED_BECAUSE.items()), else_=None)
    return list(
        conn.execute(
            sa.select(
                alert_events.c.id, alert_events.c.alert_id, alerts.c.name.label("alert_name"), reason.label("reason")
            )
            .join(alerts, alerts.c.id == alert_events.c.alert_id)
            .where(sa.not_(alert_events.c.is_resolved), sa.or_(*ORPHANED_BECAUSE.values()))
            .order_by(alert_events.c.id)
        )
    )


def open_events(conn: sa.Connection, alert_id: int | None = None) -> list[sa.Row]:
    query = sa.select(alert_events).where(sa.not_(alert_events.c.is_resolved)).order_by(alert_events.c.id)
    if alert_id is not None:
        query = query.where(alert_events.c.alert_id == alert_id)
    return list(conn.execute(query))
