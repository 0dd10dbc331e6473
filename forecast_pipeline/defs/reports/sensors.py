"""Report sensors, all using the ``app_db`` resource (PostgreSQL; elsewhere off by default, saying why):

- ``report_schedule_tick`` (every 60 s, the legacy beat's ``schedules_tick``): runs
  :func:`~forecast_pipeline.reports.tick.tick` and requests one ``generate_report`` run per
  recorded slot with ``run_key=f"report-{schedule_id}-{slot iso}"``. It also requests again any
  slot still ``queued`` ``REPORT_LAUNCH_GRACE_SECONDS`` after it was recorded with no Dagster run
  carrying its run key (the tick committed but its run request was lost), and fails such a slot
  after a day, or when its run ended without starting the step.
- ``report_run_failed`` / ``report_run_cancelled``: mark the slot ``failed`` when its run fails or
  is cancelled before the step could record it (e.g. Redis unreachable at start).
"""

import datetime as dt

import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from forecast_pipeline.app_db.postgres_only import postgres_only_reason
from forecast_pipeline.defs.postgres_only import postgres_only_sensor
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.reports.config import get_report_settings
from forecast_pipeline.defs.reports.jobs import (
    ACCOUNT_TAG,
    OP_NAME,
    SCHEDULE_RUN_TAG,
    SCHEDULE_TAG,
    generate_report,
    mark_failed,
    run_config_for,
)
from forecast_pipeline.reports.tick import DueRun, tick, unlaunched_runs
from forecast_pipeline.settings import get_settings

FEATURE = "report scheduling"
RUN_KEY_TAG = "dagster/run_key"
GIVE_UP_SECONDS = 86400


def _postgres_only(description: str) -> dict:
    """Off by default, with the reason in the UI, when the application database is not PostgreSQL."""
    return postgres_only_sensor(get_settings().app_database_url, FEATURE, description)


def run_request_for(due: DueRun) -> RunRequest:
    return RunRequest(
        run_key=due.run_key,
        run_config=run_config_for(due.schedule_run_id),
        tags={
            SCHEDULE_RUN_TAG: str(due.schedule_run_id),
            SCHEDULE_TAG: str(due.schedule_id),
            ACCOUNT_TAG: str(due.account_id),
            "report/scheduled_for": due.scheduled_for.isoformat(),
        },
    )


def recover_unlaunched(instance: DagsterInstance, engine: sa.Engine, grace_seconds: float, log=None) -> list[DueRun]:
    """Slots recorded ``grace_seconds`` ago and still ``queued``: those with no run are returned
    (to request again, same run key); those whose run ended or that waited a day are failed."""
    now = dt.datetime.now(dt.UTC)
    again = []
    for due, created_at in unlaunched_runs(engine, grace_seconds, now):
        runs = instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: due.run_key}), limit=1)
        run = runs[0] if runs else None
        reason = None
        if run is None:
            if (now - created_at).total_seconds() > GIVE_UP_SECONDS:
                reason = f"no report run was launched for {due.run_key} within a day"
            else:
                again.append(due)
                if log:
                    log.warning(f"schedule run {due.schedule_run_id}: no run found for {due.run_key}; requesting again")
        elif run.is_finished and run.status != DagsterRunStatus.SUCCESS:
            reason = f"run {run.run_id} ended {run.status.value} before the report step started"
        if reason and mark_failed(engine, due.schedule_run_id, reason, run_id=run.run_id if run else None) and log:
            log.warning(f"schedule run {due.schedule_run_id}: {reason}")
    return again


@sensor(
    job=generate_report,
    minimum_interval_seconds=60,
    **_postgres_only(
        "Every minute: locks due report schedules (FOR UPDATE SKIP LOCKED), records one schedule run per slot, "
        "advances next_run_at by its cadence in its time zone and launches generate_report for the slot."
    ),
)
def report_schedule_tick(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(postgres_only_reason(app_db.url, FEATURE))
    settings = get_report_settings()
    result = tick(engine, limit=settings.tick_limit, logger=context.log)
    requests = [run_request_for(due) for due in result.recorded]
    requests += [
        run_request_for(due)
        for due in recover_unlaunched(context.instance, engine, settings.launch_grace_seconds, context.log)
    ]
    return SensorResult(run_requests=requests, skip_reason=None if requests else result.summary())


def schedule_run_of(run: DagsterRun) -> int | None:
    if SCHEDULE_RUN_TAG in run.tags:
        return int(run.tags[SCHEDULE_RUN_TAG])
    config = (run.run_config or {}).get("ops", {}).get(OP_NAME, {}).get("config", {})
    return int(config["schedule_run_id"]) if "schedule_run_id" in config else None


def _close(context: RunStatusSensorContext, app_db: AppDatabase, reason: str):
    engine = app_db.locking_engine()
    schedule_run_id = schedule_run_of(context.dagster_run)
    if engine is None or schedule_run_id is None:
        return SkipReason("not a scheduled report run")
    changed = mark_failed(engine, schedule_run_id, reason, run_id=context.dagster_run.run_id)
    outcome = "marked failed" if changed else "already final"
    context.log.info(f"schedule run {schedule_run_id}: {outcome} (run {context.dagster_run.run_id})")
    return SkipReason(f"schedule run {schedule_run_id}: {outcome}")


@run_failure_sensor(
    monitored_jobs=[generate_report],
    **_postgres_only("Marks a report slot failed when its generate_report run fails before recording it."),
)
def report_run_failed(context: RunFailureSensorContext, app_db: AppDatabase):
    message = context.failure_event.message if context.failure_event else None
    return _close(context, app_db, f"report run failed: {message or 'see the Dagster run'}")


@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    monitored_jobs=[generate_report],
    **_postgres_only("Marks a report slot failed when its generate_report run is cancelled."),
)
def report_run_cancelled(context: RunStatusSensorContext, app_db: AppDatabase):
    return _close(context, app_db, "report run was cancelled")
