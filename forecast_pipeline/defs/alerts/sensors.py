"""Alert sensors, all on by default and all using the ``app_db`` resource:

- ``alert_evaluation_sensor`` evaluates every enabled alert every 30 s (the legacy worker's
  interval), writes events and queues their notifications, and reports the figures in the
  tick's log and as the tick's skip reason and cursor (both visible in the UI's tick history).
  It does no webhook I/O, so a slow webhook never delays an evaluation;
- ``alert_notification_sensor`` runs a delivery pass every 15 s (see :mod:`.notify`), bounded by
  ``DELIVERY_BUDGET_SECONDS``, well inside Dagster's 60 s sensor timeout;
- ``alert_retention_sensor`` deletes old readings and delivered notifications hourly (see
  :mod:`.retention`);
- ``pipeline_health_sensor`` turns each new ``product_forecasts`` observation (one per as-of date
  forecast, with the run's figures) into readings of the ``forecast_pipeline`` source. It follows
  observations rather than materializations: a run whose failure rate breaks the limit publishes
  nothing and fails, and that is exactly the run the failure-rate alert must see. Runs limited
  to chosen ``product_ids`` are ignored.

None launches runs. Without the alert tables they skip with a reason naming
``forecast-pipeline alerts init``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from forecast_pipeline.alerts.config import get_alert_settings
from forecast_pipeline.alerts.defaults import LAST_RUN_AGE
from forecast_pipeline.alerts.health import health_values, record_pipeline_health
from forecast_pipeline.alerts.notify import deliver_pending
from forecast_pipeline.alerts.retention import purge
from forecast_pipeline.alerts.service import run_evaluation
from forecast_pipeline.app_db.alert_tables import missing_tables
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.defs.forecasts.assets import requested_products
from forecast_pipeline.resources import AppDatabase

EVALUATION_INTERVAL_SECONDS = 30
DELIVERY_INTERVAL_SECONDS = 15
DELIVERY_BUDGET_SECONDS = 40
RETENTION_INTERVAL_SECONDS = 3600
RETENTION_BUDGET_SECONDS = 40
FORECASTS_ASSET = AssetKey("product_forecasts")
HEALTH_BATCH = 100


_upgraded: set[str] = set()


@contextlib.contextmanager
def _alert_tables(app_db: AppDatabase) -> Iterator[tuple[sa.Engine, str | None]]:
    """The engine and why the alert tables cannot be used yet (None: they can). The engine is
    disposed afterwards: no idle connections between ticks; it reconnects on next use."""
    engine = app_db.engine()
    try:
        yield engine, _missing_tables_reason(app_db)
    finally:
        engine.dispose()


def _missing_tables_reason(app_db: AppDatabase) -> str | None:
    """Why the sensor cannot work yet, or None. Tables of an older version are upgraded first
    (once per process), so a deployment that skipped `alerts init` after an upgrade still works."""
    missing = missing_tables(app_db.engine())
    if not missing:
        if app_db.url not in _upgraded:
            upgrade_app_schema(app_db.engine())
            _upgraded.add(app_db.url)
        return None
    return (
        f"Alert tables missing in {app_db.redacted_url()} ({', '.join(missing)}): run `forecast-pipeline alerts init`"
    )


@sensor(
    name="alert_evaluation_sensor",
    minimum_interval_seconds=EVALUATION_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Evaluates every enabled alert against its source's latest reading (fresh within "
        "ALERT_FRESHNESS_SECONDS for polling sources), opens and resolves alert events and queues "
        "their webhook notifications. Each tick's figures show as its skip reason."
    ),
)
def alert_evaluation_sensor(context: SensorEvaluationContext, app_db: AppDatabase) -> SensorResult:
    settings = get_alert_settings()
    with _alert_tables(app_db) as (engine, reason):
        if reason:
            context.log.warning(reason)
            return SensorResult(skip_reason=SkipReason(reason))

        def log(level: str, message: str) -> None:
            getattr(context.log, level)(message)

        result = run_evaluation(engine, settings, log=log, deliver=False)
    stats = result.stats
    figures = stats.as_dict()
    context.log.info(f"Alert evaluation completed: {stats.summary()} {json.dumps(figures)}")
    return SensorResult(
        skip_reason=SkipReason(f"Alert evaluation: {stats.summary()}"),
        cursor=json.dumps({**figures, "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}),
    )


@sensor(
    name="alert_notification_sensor",
    minimum_interval_seconds=DELIVERY_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "POSTs queued alert notifications to ALERT_WEBHOOK_URL, oldest first, at least once: "
        "retries what may succeed later with capped backoff, dead-letters what cannot "
        "(`forecast-pipeline alerts notifications list|resend`)."
    ),
)
def alert_notification_sensor(context: SensorEvaluationContext, app_db: AppDatabase) -> SensorResult:
    settings = get_alert_settings()
    with _alert_tables(app_db) as (engine, reason):
        if reason:
            return SensorResult(skip_reason=SkipReason(reason))
        stats = deliver_pending(engine, settings, budget_seconds=DELIVERY_BUDGET_SECONDS, log=context.log.warning)
    if settings.webhook_url is None:
        message = f"ALERT_WEBHOOK_URL is not set: {stats.pending} notification(s) wait in the outbox"
    else:
        message = f"Notifications: {stats.summary()}"
    if stats.sent or stats.failed or stats.dead_lettered:
        context.log.info(message)
    return SensorResult(skip_reason=SkipReason(message))


@sensor(
    name="alert_retention_sensor",
    minimum_interval_seconds=RETENTION_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Deletes readings and delivered notifications older than ALERT_RETENTION_DAYS, keeping each "
        "source's latest reading, open events' data and every undelivered notification."
    ),
)
def alert_retention_sensor(context: SensorEvaluationContext, app_db: AppDatabase) -> SensorResult:
    settings = get_alert_settings()
    with _alert_tables(app_db) as (engine, reason):
        if reason:
            return SensorResult(skip_reason=SkipReason(reason))
        now = dt.datetime.now(dt.UTC)
        stats = purge(
            engine,
            now,
            settings.retention_days,
            not_after=now + dt.timedelta(seconds=settings.clock_skew_seconds),
            budget_seconds=RETENTION_BUDGET_SECONDS,
        )
    message = (
        f"Retention ({settings.retention_days} days): deleted {stats.readings} readings, "
        f"{stats.notifications} notifications" + ("" if stats.finished else " (more next time)")
    )
    context.log.info(message)
    return SensorResult(skip_reason=SkipReason(message))


def _subset_run(run: Any) -> bool:
    """Whether the run forecast only chosen products (its figures are not the pipeline's)."""
    return bool(requested_products(run.run_config))


def _published_newest(instance: Any, run_id: str, partition: str | None) -> bool:
    """Whether the run materialized ``product_forecasts`` for ``partition`` and that became the
    cache's newest date (``last_run_updated``): a backfill of an older date leaves the cache as
    stale as it was, so it must not reset the last-run age either."""
    for event in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        dagster_event = event.dagster_event
        if dagster_event.asset_key == FORECASTS_ASSET and dagster_event.partition == partition:
            newest = dagster_event.materialization.metadata.get("last_run_updated")
            return newest is None or bool(newest.value)  # None: recorded before the figure existed
    return False


@sensor(
    name="pipeline_health_sensor",
    minimum_interval_seconds=EVALUATION_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Records the figures of each product_forecasts run (failure rate, elapsed seconds, "
        "no-forecast rate, last-run time), failed runs included, as readings of the forecast_pipeline alert source."
    ),
)
def pipeline_health_sensor(context: SensorEvaluationContext, app_db: AppDatabase) -> SensorResult:
    with _alert_tables(app_db) as (engine, reason):
        if reason:
            return SensorResult(skip_reason=SkipReason(reason))  # cursor kept: nothing is missed
        instance = context.instance
        if context.cursor:
            records = instance.fetch_observations(
                AssetRecordsFilter(asset_key=FORECASTS_ASSET, after_storage_id=int(context.cursor)),
                limit=HEALTH_BATCH,
                ascending=True,
            ).records
        else:  # first tick: the current state is the newest run's figures
            records = instance.fetch_observations(FORECASTS_ASSET, limit=1).records
        if not records:
            # with no figures yet, every later one is new: start the cursor at 0
            return SensorResult(
                skip_reason=SkipReason("No new product_forecasts run figures"), cursor=context.cursor or "0"
            )
        recorded, ignored, waiting, cursor = [], 0, None, context.cursor
        for record in records:
            run_record = instance.get_run_record_by_id(record.run_id) if record.run_id else None
            run = run_record.dagster_run if run_record is not None else None
            if run is not None and not run.is_finished:
                # figures are observed before the publish: whether it published is known at the end
                waiting = record.run_id
                break
            cursor = str(record.storage_id)
            if run is not None and _subset_run(run):
                ignored += 1
                continue
            figures = {k: v.value for k, v in record.asset_observation.metadata.items()}
            start = run_record.start_time if run_record is not None else None
            elapsed = record.timestamp - start if start else None
            values = health_values(figures, elapsed)
            if run is not None and not _published_newest(instance, run.run_id, record.partition_key):
                # nothing published, or an older date: the age keeps counting from the last publish
                del values[LAST_RUN_AGE]
            finished_at = dt.datetime.fromtimestamp(record.timestamp, dt.UTC)
            metadata = {
                "run_id": record.run_id,
                "partition": record.partition_key,
                "storage_id": record.storage_id,
                **{k: v for k, v in figures.items() if isinstance(v, int | float | str)},
            }
            with engine.begin() as conn:
                record_pipeline_health(conn, values, finished_at, metadata)
            recorded.append(f"{record.partition_key or '-'}: " + ", ".join(f"{k}={v:g}" for k, v in values.items()))
            context.log.info(f"Pipeline health from run {record.run_id} ({recorded[-1]})")
    summary = f"Recorded pipeline health of {len(recorded)} forecast run(s)" + (
        f", ignored {ignored} run(s) limited to chosen products" if ignored else ""
    )
    shown = "; ".join(recorded[-5:]) + (" ..." if len(recorded) > 5 else "")
    if waiting:
        shown += f" (waiting for run {waiting} to finish)"
    return SensorResult(skip_reason=SkipReason(f"{summary}: {shown}"), cursor=cursor)
