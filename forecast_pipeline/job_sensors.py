"""Sensors that run the forecast job queue (replacing the legacy plan worker's polling loop).

- ``forecast_job_queue``: claims due jobs and launches one run per job attempt (``run_key``).
- ``forecast_job_succeeded`` / ``forecast_job_failed`` / ``forecast_job_cancelled``: close the loop
  when a job's run ends: succeeded with duration and rows, or requeued with backoff, or failed.
- ``forecast_job_recovery``: finds running jobs whose run is gone, finished unnoticed, silent
  (heartbeat stopped: the process died) or stuck past ``FORECAST_JOB_TIMEOUT_SECONDS``, and
  requeues or fails them with an audit entry.

The queue lives in PostgreSQL (``APP_DATABASE_URL``); with any other database the sensors skip.
"""

import datetime as dt
import time

import sqlalchemy as sa
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
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

from forecast_pipeline import job_queue
from forecast_pipeline.app_db import AppDatabase
from forecast_pipeline.partitions import as_of_partitions
from forecast_pipeline.schedules import daily_forecast_job
from forecast_pipeline.settings import Settings, get_settings

NEEDS_POSTGRES = "the forecast job queue needs PostgreSQL: set APP_DATABASE_URL (now {url})"


def _today() -> dt.date:
    return dt.date.fromisoformat(as_of_partitions.get_last_partition_key())


def run_request_for(job: job_queue.ClaimedJob, request: job_queue.JobRequest) -> RunRequest:
    """One run for the whole job: a single as-of date, or a range run as one single-run backfill."""
    # the queue retries a job itself (with backoff), so Dagster's run retries are off for it
    tags = {job_queue.JOB_ID_TAG: str(job.id), job_queue.ATTEMPT_TAG: str(job.attempts), "dagster/max_retries": "0"}
    if job.concurrency_key:
        tags["forecast/concurrency_key"] = job.concurrency_key
    run_config = {}
    if request.product_ids:
        run_config = {"ops": {"product_forecasts": {"config": {"product_ids": list(request.product_ids)}}}}
    run_key = job_queue.run_key_for(job.id, job.attempts)
    if request.first == request.last:
        return RunRequest(run_key=run_key, partition_key=request.first.isoformat(), tags=tags, run_config=run_config)
    tags["dagster/asset_partition_range_start"] = request.first.isoformat()
    tags["dagster/asset_partition_range_end"] = request.last.isoformat()
    return RunRequest(run_key=run_key, tags=tags, run_config=run_config)


@sensor(
    job=daily_forecast_job,
    minimum_interval_seconds=get_settings().job_sensor_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Claims due forecast_jobs (priority, then age; FOR UPDATE SKIP LOCKED) and launches a run per job.",
)
def forecast_job_queue(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(NEEDS_POSTGRES.format(url=app_db.redacted_url()))
    settings = get_settings()
    requests = []
    for job in job_queue.claim_due_jobs(engine, settings.job_claim_limit):
        try:
            request = job_queue.parse_parameters(job.parameters, settings.history_start, _today())
        except job_queue.BadJobParameters as exc:
            job_queue.fail_bad_job(engine, job.id, str(exc))
            context.log.warning(f"forecast job {job.id} failed: bad parameters: {exc}")
            continue
        context.log.info(
            f"forecast job {job.id} (attempt {job.attempts}): as-of {request.first}..{request.last}"
            + (f", products {list(request.product_ids)}" if request.product_ids else "")
        )
        requests.append(run_request_for(job, request))
    return SensorResult(run_requests=requests, skip_reason=None if requests else "no due forecast jobs")


def _job_tags(run: DagsterRun) -> tuple[int, int] | None:
    if job_queue.JOB_ID_TAG not in run.tags:
        return None
    return int(run.tags[job_queue.JOB_ID_TAG]), int(run.tags.get(job_queue.ATTEMPT_TAG, "0"))


def rows_written(instance: DagsterInstance, run_id: str) -> int | None:
    """The ``rows`` the run's forecast_predictions materializations reported (one per as-of date)."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    counts = [
        int(m.metadata["rows"].value)
        for m in (record.event_log_entry.asset_materialization for record in records)
        if m and m.asset_key == AssetKey("forecast_predictions")
    ]
    return sum(counts) if counts else None


def failure_of(instance: DagsterInstance, run_id: str) -> tuple[str, bool]:
    """The run's error text, and whether retrying can help (a ``Failure`` marked permanent cannot)."""
    messages, retryable = [], True
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        if data.user_failure_data is not None:
            messages.append(data.user_failure_data.description or "")
            if data.user_failure_data.metadata.get("permanent") is not None:
                retryable = False
        elif data.error is not None:
            messages.append(data.error.message.strip())
    if not messages:
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records:
            messages.append(record.event_log_entry.message or "run failed")
    return ("; ".join(m for m in messages if m) or "run failed"), retryable


def finish_job_for_run(
    instance: DagsterInstance, engine: sa.Engine, run: DagsterRun, settings: Settings | None = None
) -> str | None:
    """Apply a finished run's outcome to its job; returns the job's new status (None: nothing to do)."""
    tagged = _job_tags(run)
    if tagged is None:
        return None
    job_id, attempt = tagged
    settings = settings or get_settings()
    if run.status == DagsterRunStatus.SUCCESS:
        done = job_queue.mark_succeeded(engine, job_id, run.run_id, rows_written(instance, run.run_id), attempt=attempt)
        return "succeeded" if done else None
    if run.status == DagsterRunStatus.CANCELED:
        done = job_queue.mark_cancelled(engine, job_id, "the Dagster run was cancelled", run.run_id, attempt=attempt)
        return "cancelled" if done else None
    if run.status == DagsterRunStatus.FAILURE:
        error, retryable = failure_of(instance, run.run_id)
        return job_queue.mark_failed(
            engine,
            job_id,
            error,
            run_id=run.run_id,
            retryable=retryable,
            attempt=attempt,
            base_seconds=settings.job_retry_base_seconds,
            max_seconds=settings.job_retry_max_seconds,
        )
    return None


def _close(context: RunStatusSensorContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None or _job_tags(context.dagster_run) is None:
        return SkipReason("not a queued forecast job")
    status = finish_job_for_run(context.instance, engine, context.dagster_run)
    job_id = context.dagster_run.tags[job_queue.JOB_ID_TAG]
    context.log.info(f"forecast job {job_id}: {status or 'already closed'} (run {context.dagster_run.run_id})")
    return SkipReason(f"forecast job {job_id}: {status or 'already closed'}")


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[daily_forecast_job],
    minimum_interval_seconds=get_settings().job_sensor_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks a forecast job succeeded (duration, rows) when its run succeeds.",
)
def forecast_job_succeeded(context: RunStatusSensorContext, app_db: AppDatabase):
    return _close(context, app_db)


@run_failure_sensor(
    monitored_jobs=[daily_forecast_job],
    minimum_interval_seconds=get_settings().job_sensor_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requeues a forecast job with backoff when its run fails, or fails it after max_attempts.",
)
def forecast_job_failed(context: RunFailureSensorContext, app_db: AppDatabase):
    return _close(context, app_db)


@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    monitored_jobs=[daily_forecast_job],
    minimum_interval_seconds=get_settings().job_sensor_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks a forecast job cancelled when its run is cancelled.",
)
def forecast_job_cancelled(context: RunStatusSensorContext, app_db: AppDatabase):
    return _close(context, app_db)


def recover_stale_jobs(
    instance: DagsterInstance, engine: sa.Engine, log=None, settings: Settings | None = None
) -> dict[str, int]:
    """One pass of stale-job recovery; returns how many jobs each rule touched."""
    settings = settings or get_settings()
    counts = {"finished_unnoticed": 0, "no_run": 0, "dead_process": 0, "timed_out": 0}
    retry = {"base_seconds": settings.job_retry_base_seconds, "max_seconds": settings.job_retry_max_seconds}
    for job in job_queue.running_jobs(engine):
        records = instance.get_run_records(
            RunsFilter(tags={job_queue.JOB_ID_TAG: str(job.id), job_queue.ATTEMPT_TAG: str(job.attempts)}), limit=1
        )
        run = records[0].dagster_run if records else None
        reason = None
        if run is None:
            if job.claimed_seconds_ago > settings.job_launch_grace_seconds:
                reason, rule = f"no Dagster run was launched within {settings.job_launch_grace_seconds}s", "no_run"
        elif run.is_finished:
            ended = records[0].end_time
            if ended is not None and time.time() - ended < settings.job_finished_grace_seconds:
                continue  # the run status sensors close it; recovery is for what they missed
            if finish_job_for_run(instance, engine, run, settings):
                counts["finished_unnoticed"] += 1
                job_queue.write_audit(
                    engine, job.id, "recovered", {"run_id": run.run_id, "run_status": run.status.value}
                )
            continue
        elif (
            run.status == DagsterRunStatus.STARTED
            and job.has_heartbeat
            and job.silent_seconds > settings.job_stale_after_seconds
        ):
            reason, rule = (
                f"run {run.run_id} stopped sending heartbeats {job.silent_seconds:.0f}s ago: its process is gone",
                "dead_process",
            )
        elif job.claimed_seconds_ago > settings.job_timeout_seconds:
            reason, rule = (
                f"run {run.run_id} still {run.status.value} after {settings.job_timeout_seconds}s",
                "timed_out",
            )
        if reason is None:
            continue
        status = job_queue.mark_failed(
            engine,
            job.id,
            reason,
            run_id=run.run_id if run else None,
            attempt=job.attempts,
            event=f"stale_{rule}",
            **retry,
        )
        if status is None:
            continue
        counts[rule] += 1
        if run is not None and not run.is_finished:
            # the run record would otherwise stay "started" forever; its failure sensor sees the job moved on
            instance.report_run_failed(run, f"forecast_job_recovery: {reason}")
        if log:
            log.warning(f"forecast job {job.id}: {reason} -> {status}")
    return counts


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requeues or fails running forecast jobs whose run is gone, silent or stuck (audit entry each).",
)
def forecast_job_recovery(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(NEEDS_POSTGRES.format(url=app_db.redacted_url()))
    counts = recover_stale_jobs(context.instance, engine, context.log)
    return SkipReason(", ".join(f"{k}: {v}" for k, v in counts.items()))
