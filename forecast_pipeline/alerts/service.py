"""One alert evaluation, as the sensor and ``forecast-pipeline alerts evaluate`` run it:
read every enabled alert in one statement, decide each (pure logic), apply each decision in its
own short transaction (queuing its notification), then, unless told not to, run a delivery pass.
The sensor does not: delivery has its own sensor, so webhook I/O never eats the evaluation's time."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from forecast_pipeline.alerts import evaluate, notify, store
from forecast_pipeline.alerts.config import AlertSettings
from forecast_pipeline.alerts.evaluate import Decision, EvaluationStats


@dataclass
class Outcome:
    """What happened to one alert: its decision, and whether this evaluator applied it."""

    alert_id: int
    alert_name: str | None
    source_name: str | None
    metric: str
    decision: Decision
    applied: bool = False
    event_id: int | None = None
    dry_run: bool = False

    def line(self) -> str:
        label = self.alert_name or f"{self.source_name or '?'}/{self.metric}"
        action = self.decision.action
        if self.dry_run and action in (evaluate.TRIGGER, evaluate.RESOLVE):
            action = f"would {action}"
        event = f" event {self.event_id}" if self.event_id is not None else ""
        return f"alert {self.alert_id} [{label}]: {action}{event}: {self.decision.message}"


@dataclass
class EvaluationResult:
    stats: EvaluationStats
    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False


def run_evaluation(
    engine: sa.Engine,
    settings: AlertSettings,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    deliver: bool = True,
    log: Callable[[str, str], None] | None = None,
) -> EvaluationResult:
    """Evaluate every enabled alert once. ``dry_run`` decides but writes and sends nothing;
    ``deliver`` runs a delivery pass afterwards when ``ALERT_WEBHOOK_URL`` is set.

    ``log(level, message)`` receives one line per triggered, resolved, failed or skipped alert,
    and one per source and metric with readings dated beyond the clock skew.
    """
    started = time.perf_counter()
    given = store.utc(now) if now is not None else None  # not given: the delivery pass reads the clock itself
    now = given or dt.datetime.now(dt.UTC)
    emit = log or (lambda level, message: None)
    stats = EvaluationStats()
    result = EvaluationResult(stats=stats, dry_run=dry_run)
    not_after = now + dt.timedelta(seconds=settings.clock_skew_seconds)
    # first: an alert whose rule changed is then judged afresh in this pass, with no open event
    _close_orphaned(engine, stats, now, dry_run, emit)
    with engine.connect() as conn:
        inputs = store.load_inputs(conn, not_after)
    future: dict[tuple[int, str], tuple[str | None, int]] = {}
    for item in inputs:
        if item.future_readings:
            future[(item.alert.device_id, item.alert.metric)] = (item.source_name, item.future_readings)
    for (_, metric), (source_name, count) in sorted(future.items()):
        stats.future_readings += count
        emit(
            "warning",
            f"source {source_name!r} metric {metric!r}: {count} reading(s) dated more than "
            f"{settings.clock_skew_seconds}s ahead of {now.isoformat(timespec='seconds')} ignored (check its clock)",
        )
    for item in inputs:
        decision = evaluate.decide(
            item.alert, item.source, item.reading, item.open_event_id is not None, now, settings.freshness_seconds
        )
        outcome = Outcome(
            item.alert.id, item.alert.name, item.source_name, item.alert.metric, decision, dry_run=dry_run
        )
        try:
            if not dry_run:
                _apply(engine, item, outcome, now, not_after)
        except sa.exc.SQLAlchemyError as exc:  # this alert only; the rest go on
            message = f"database error: {getattr(exc, 'orig', None) or exc}"
            outcome.decision = Decision(item.alert.id, evaluate.ERROR, decision.value, message)
        decision = outcome.decision
        stats.count(decision, applied=outcome.applied or dry_run)
        result.outcomes.append(outcome)
        if decision.action == evaluate.ERROR:
            emit("warning", outcome.line())
        elif decision.action in (evaluate.TRIGGER, evaluate.RESOLVE):
            emit("info", outcome.line())
        elif decision.action == evaluate.SKIP:
            emit("debug", outcome.line())
    if not dry_run and deliver and settings.notifications_enabled:
        delivered = notify.deliver_pending(engine, settings, log=lambda m: emit("warning", m), now=given)
        stats.notifications_sent = delivered.sent
        stats.notifications_failed = delivered.failed
        stats.notifications_dead_lettered = delivered.dead_lettered
        stats.notifications_pending = delivered.pending
    stats.seconds = time.perf_counter() - started
    return result


def _apply(
    engine: sa.Engine, item: store.AlertInput, outcome: Outcome, now: dt.datetime, not_after: dt.datetime
) -> None:
    decision = outcome.decision
    if decision.action in (evaluate.TRIGGER, evaluate.RESOLVE):
        # judged on what was loaded at the start of the pass: another evaluator may have seen a newer
        # reading meanwhile (and acted on it), or the alert may have changed
        with engine.connect() as conn:
            stale = store.superseded(conn, item, not_after)
        if stale:
            outcome.decision = Decision(decision.alert_id, evaluate.SKIP, decision.value, f"{stale}: judged next time")
            return
    if decision.action == evaluate.TRIGGER:
        with engine.begin() as conn:
            outcome.event_id = store.create_event(conn, item, decision, now)
        outcome.applied = outcome.event_id is not None
        if not outcome.applied:
            outcome.decision = Decision(
                decision.alert_id, evaluate.STILL_OPEN, decision.value, "another evaluator opened the event first"
            )
    elif decision.action == evaluate.RESOLVE:
        with engine.begin() as conn:
            outcome.applied = store.resolve_event(conn, item.open_event_id, decision.value, now)
        outcome.event_id = item.open_event_id
        if not outcome.applied:
            outcome.decision = Decision(
                decision.alert_id, evaluate.NORMAL, decision.value, "another evaluator resolved the event first"
            )


def _close_orphaned(
    engine: sa.Engine, stats: EvaluationStats, now: dt.datetime, dry_run: bool, emit: Callable[[str, str], None]
) -> None:
    """Close the open events their alerts can no longer resolve (see :func:`store.close_orphaned_event`),
    each in its own transaction; a database error leaves that one for the next evaluation."""
    why = {
        store.ALERT_DISABLED: "the alert is disabled",
        store.SOURCE_INACTIVE: "its source is inactive",
        store.ALERT_CHANGED: "the alert's rule changed",
    }
    with engine.connect() as conn:
        events = store.orphaned_open_events(conn)
    for event in events:
        label = f"alert {event.alert_id}" + (f" [{event.alert_name}]" if event.alert_name else "")
        try:
            if not dry_run:
                with engine.begin() as conn:
                    if not store.close_orphaned_event(conn, event.id, event.reason, now):
                        continue  # another evaluator closed it, or the reason no longer holds
        except sa.exc.SQLAlchemyError as exc:
            emit("warning", f"{label}: closing event {event.id}: database error: {getattr(exc, 'orig', None) or exc}")
            continue
        stats.closed_disabled += 1
        emit("info", f"{label}: {'would close' if dry_run else 'closed'} event {event.id}: {why[event.reason]}")
