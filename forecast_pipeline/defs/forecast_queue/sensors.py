"""Sensors that run the forecast job queue (replacing the legacy plan worker's polling loop).

- ``forecast_job_queue``: carries out cancel requests, then claims as many due jobs as the run
  queue can start (validated against the run config first) and requests one run per job attempt
  (``run_key``), tagged with the job's ``dagster/priority`` and ``dagster/max_runtime`` (see
  :func:`queue_run_timeout`: Dagster's run monitoring terminates a run that overruns, counting
  from the run's start).
- ``forecast_job_succeeded`` / ``forecast_job_failed`` / ``forecast_job_cancelled``: close the loop
  when a job's run ends: succeeded with duration and rows, or requeued with backoff, or failed,
  with the run's real error.
- ``forecast_job_recovery``: finds active jobs whose run never came, finished unnoticed, or went
  silent (heartbeat stopped: the process died), and requeues or fails them with an audit entry.

The queue lives in PostgreSQL (``APP_DATABASE_URL``); with any other database the sensors skip.
"""

import contextlib
import datetime as dt
import functools
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
    validate_run_config,
)

from forecast_pipeline.defs.forecasts.partitions import as_of_partitions
from forecast_pipeline.defs.forecasts.schedules import daily_forecast_job
from forecast_pipeline.forecast_queue import job_queue
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.settings import Settings, get_settings

NEEDS_POSTGRES = "the forecast job queue needs PostgreSQL: set APP_DATABASE_URL (now {url})"
QUEUE_SENSOR = "forecast_job_queue"


def today() -> dt.date:
    """Today in the partitions' time zone (``FORECAST_SCHEDULE_TIMEZONE``): the newest as-of date."""
    return dt.date.fromisoformat(as_of_partitions.get_last_partition_key())


def run_config_for(request: job_queue.JobRequest) -> dict:
    if not request.product_ids:
        return {}
    return {"ops": {"product_forecasts": {"config": {"product_ids": list(request.product_ids)}}}}


@functools.cache
def _loaded_forecast_job():
    from forecast_pipeline.definitions import defs  # the code location imports this module first

    return defs().resolve_job_def(daily_forecast_job.name)


def validate_job(parameters: object, settings: Settings | None = None, job_def=None) -> job_queue.JobRequest:
    """A job's parameters as a request whose run config Dagster accepts, or BadJobParameters
    with the reason: checked before the job is claimed, so no run is ever requested for it.
    ``job_def``: the resolved forecast job (the sensor's repository has it; else it is loaded)."""
    settings = settings or get_settings()
    request = job_queue.parse_parameters(parameters, settings.history_start, today())
    checked = validate_run_config(job_def or _loaded_forecast_job(), run_config_for(request))
    if checked is None:  # pragma: no cover - validate_run_config raises on errors
        raise job_queue.BadJobParameters("the run config was rejected")
    return request


def queue_run_limit(instance: DagsterInstance, settings: Settings) -> int:
    """How many queue jobs may be active at once: the instance's run queue limit for this
    sensor's runs (``tag_concurrency_limits`` on ``dagster/sensor_name``, within
    ``max_concurrent_runs``), so the queue claims only runs that can start. An instance without
    a run queue starts runs at once: then ``FORECAST_JOB_CLAIM_LIMIT``."""
    config = instance.get_concurrency_config().run_queue_config
    if config is None:
        return settings.job_claim_limit
    limits = [
        int(rule["limit"])
        for rule in config.tag_concurrency_limits or []
        if rule.get("key") == "dagster/sensor_name" and rule.get("value") == QUEUE_SENSOR
    ]
    if config.max_concurrent_runs is not None and config.max_concurrent_runs >= 0:
        limits.append(config.max_concurrent_runs)
    return min(limits) if limits else settings.job_claim_limit


def queue_run_timeout(instance: DagsterInstance, settings: Settings) -> int | None:
    """Seconds a queue run may execute: ``FORECAST_JOB_TIMEOUT_SECONDS`` when set, else the
    instance's ``run_monitoring.max_runtime_seconds`` (dagster.yaml), so one value governs both;
    None when neither sets a limit."""
    if settings.job_timeout_seconds:
        return settings.job_timeout_seconds
    return instance.run_monitoring_max_runtime_seconds or None


def run_request_for(
    job: job_queue.ClaimedJob, request: job_queue.JobRequest, timeout_seconds: int | None = None
) -> RunRequest:
    """One run for the whole job: a single as-of date, or a range run as one single-run backfill."""
    tags = {
        job_queue.JOB_ID_TAG: str(job.id),
        job_queue.ATTEMPT_TAG: str(job.attempts),
        # the queue retries a job itself (with backoff), so Dagster's run retries are off for it
        "dagster/max_retries": "0",
        # the queued run coordinator starts higher priorities first
        "dagster/priority": str(job.priority),
    }
    if timeout_seconds:  # run monitoring terminates the run this long after it started
        tags["dagster/max_runtime"] = str(timeout_seconds)
    if job.concurrency_key:
        tags["forecast/concurrency_key"] = job.concurrency_key
    run_config = run_config_for(request)
    run_key = job_queue.run_key_for(job.id, job.attempts)
    if request.first == request.last:
        return RunRequest(run_key=run_key, partition_key=request.first.isoformat(), tags=tags, run_config=run_config)
    tags["dagster/asset_partition_range_start"] = request.first.isoformat()
    tags["dagster/asset_partition_range_end"] = request.last.isoformat()
    return RunRequest(run_key=run_key, tags=tags, run_config=run_config)


@sensor(
    name=QUEUE_SENSOR,
    job=daily_forecast_job,
    minimum_interval_seconds=get_settings().job_sensor_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Cancels what was asked to be cancelled, then claims as many due forecast_jobs as can start "
    "(priority, then age) and launches a run per job.",
)
def forecast_job_queue(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(NEEDS_POSTGRES.format(url=app_db.redacted_url()))
    settings = get_settings()
    repository = context.repository_def
    forecast_job = repository.get_job(daily_forecast_job.name) if repository is not None else None
    carry_out_cancel_requests(context.instance, engine, context.log, settings)
    claimed = job_queue.claim_due_jobs(
        engine,
        settings.job_claim_limit,
        capacity=queue_run_limit(context.instance, settings),
        ended=jobs_whose_runs_ended(context.instance, engine, settings),
        validate=lambda parameters: validate_job(parameters, settings, forecast_job),
    )
    timeout = queue_run_timeout(context.instance, settings)
    requests = []
    for job in claimed:
        try:
            requests.append(run_request_for(job, job.request, timeout))
        except Exception as exc:  # noqa: BLE001 - one job's failure must not lose the others' runs
            job_queue.fail_bad_job(engine, job.id, f"its run could not be requested: {exc}")
            context.log.warning(f"forecast job {job.id} failed: {exc}")
            continue
        request = job.request
        context.log.info(
            f"forecast job {job.id} (attempt {job.attempts}): as-of {request.first}..{request.last}"
            + (f", products {list(request.product_ids)}" if request.product_ids else "")
        )
    return SensorResult(run_requests=requests, skip_reason=None if requests else "no due forecast jobs")


def jobs_whose_runs_ended(instance: DagsterInstance, engine: sa.Engine, settings: Settings) -> set[int]:
    """Active jobs whose run has finished and whose process has exited: they hold no run slot,
    they only wait for a status sensor to close them."""
    ended = set()
    for job in job_queue.active_jobs(engine):
        record = run_of(instance, job.id, job.attempts)
        exited = not job.has_heartbeat or job.silent_seconds > settings.job_stale_after_seconds
        if record is not None and record.dagster_run.is_finished and exited:
            ended.add(job.id)
    return ended


def run_of(instance: DagsterInstance, job_id: int, attempt: int):
    """The run record of a job attempt, or None if no run was created for it."""
    records = instance.get_run_records(
        RunsFilter(tags={job_queue.JOB_ID_TAG: str(job_id), job_queue.ATTEMPT_TAG: str(attempt)}), limit=1
    )
    return records[0] if records else None


def carry_out_cancel_requests(instance: DagsterInstance, engine: sa.Engine, log=None, settings=None) -> int:
    """Cancel the Dagster runs of jobs asked to be cancelled (``jobs cancel``): a run still in
    the queue is cancelled at once, a started one is terminated through the run launcher. The
    job closes when its run has ended. Returns how many jobs were acted on."""
    settings = settings or get_settings()
    acted = 0
    for job in job_queue.active_jobs(engine, cancel_requested=True):
        record = run_of(instance, job.id, job.attempts)
        run = record.dagster_run if record else None
        if run is None:
            if job.status == "claimed":  # its run, should it ever come, refuses to start
                reason = "cancelled before its run was created"
                acted += job_queue.mark_cancelled(engine, job.id, reason, attempt=job.attempts)
            continue
        if run.is_finished:
            acted += finish_job_for_run(instance, engine, run, settings) is not None
        elif run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
            instance.report_run_canceled(run, "cancelled from the forecast job queue")
            acted += 1
        elif run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
            terminated = instance.run_launcher.terminate(run.run_id)
            acted += 1
            if log:
                sent = "sent" if terminated else "not reachable"
                log.info(f"forecast job {job.id}: terminating run {run.run_id} ({sent})")
    return acted


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


def _error_text(error) -> str:
    """The most telling line of a serialized error: a Failure's description, else the innermost
    cause (e.g. "Redis at ... is unreachable"), without module paths."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause or error.context
    for item in chain:
        if item.cls_name == "Failure":
            return item.message.split(": ", 1)[-1].strip()
    last = chain[-1]
    text = last.message.strip()
    prefix = text.split(": ", 1)[0]
    if "." in prefix and " " not in prefix:  # "package.module.Error: ..." -> "Error: ..."
        text = f"{prefix.rsplit('.', 1)[-1]}: {text.split(': ', 1)[-1]}"
    return text


def failure_of(instance: DagsterInstance, run_id: str) -> tuple[str, bool]:
    """The run's error text, and whether retrying can help (a ``Failure`` marked permanent cannot).

    What stopped the run comes first when the run itself was failed (resources that could not
    start, a timeout that run monitoring enforced), then the steps' own errors; a step's
    "interrupted" error only when nothing else explains it."""
    run_level, steps, retryable = [], [], True
    run_events = {DagsterEventType.RESOURCE_INIT_FAILURE, DagsterEventType.RUN_FAILURE}
    for record in instance.get_records_for_run(run_id, of_type=run_events).records:
        entry = record.event_log_entry
        error = getattr(entry.dagster_event.event_specific_data, "error", None)
        if error is not None:
            run_level.append(_error_text(error))
        elif entry.message and not entry.message.startswith("Execution of run for"):  # not the summary line
            run_level.append(entry.message.strip())
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        if data.user_failure_data is not None:
            steps.append(data.user_failure_data.description or "")
            if data.user_failure_data.metadata.get("permanent") is not None:
                retryable = False
        elif data.error is not None:
            steps.append(_error_text(data.error))
    interrupted = [m for m in steps if m.startswith("DagsterExecutionInterruptedError")]
    messages = run_level + [m for m in steps if m not in interrupted]
    messages = list(dict.fromkeys(m for m in messages or interrupted if m))
    if any("is no longer current" in m for m in messages):
        retryable = False
    return ("; ".join(messages) or "run failed"), retryable


def finish_job_for_run(
    instance: DagsterInstance, engine: sa.Engine, run: DagsterRun, settings: Settings | None = None
) -> str | None:
    """Apply a finished run's outcome to its job; returns the job's new status (None: nothing to
    do, or not yet: a failed or cancelled run whose process still beats is left until it has
    exited, so a retry never overlaps it)."""
    tagged = _job_tags(run)
    if tagged is None:
        return None
    job_id, attempt = tagged
    settings = settings or get_settings()
    record = instance.get_run_record_by_id(run.run_id)
    duration = None
    if record is not None and record.start_time is not None and record.end_time is not None:
        duration = record.end_time - record.start_time
    if run.status == DagsterRunStatus.SUCCESS:
        done = job_queue.mark_succeeded(
            engine, job_id, run.run_id, rows_written(instance, run.run_id), attempt=attempt, duration=duration
        )
        return "succeeded" if done else None
    if run.status not in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE):
        return None
    if job_queue.process_alive(engine, job_id, attempt, settings.job_stale_after_seconds):
        return None
    if run.status == DagsterRunStatus.CANCELED:
        done = job_queue.mark_cancelled(engine, job_id, "the Dagster run was cancelled", run.run_id, attempt=attempt)
        return "cancelled" if done else None
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
        duration=duration,
    )


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
    """One pass of stale-job recovery; returns how many jobs each rule touched.

    Time a run waits in Dagster's run queue is never held against it, and overrunning runs are
    Dagster's to stop (``dagster/max_runtime``): this only catches runs that were never created,
    finished without their status sensor noticing, or whose process died silently."""
    settings = settings or get_settings()
    counts = {"finished_unnoticed": 0, "no_run": 0, "dead_process": 0}
    retry = {"base_seconds": settings.job_retry_base_seconds, "max_seconds": settings.job_retry_max_seconds}
    for job in job_queue.active_jobs(engine):
        record = run_of(instance, job.id, job.attempts)
        run = record.dagster_run if record else None
        reason = None
        if run is None:
            if job.status == "claimed" and job.claimed_seconds_ago > settings.job_launch_grace_seconds:
                reason, rule = f"no Dagster run was launched within {settings.job_launch_grace_seconds}s", "no_run"
        elif run.is_finished:
            if record.end_time is not None and time.time() - record.end_time < settings.job_finished_grace_seconds:
                continue  # the run status sensors close it; recovery is for what they missed
            if finish_job_for_run(instance, engine, run, settings):
                counts["finished_unnoticed"] += 1
                job_queue.write_audit(
                    engine, job.id, "recovered", {"run_id": run.run_id, "run_status": run.status.value}
                )
            continue
        elif job.status == "running" and job.has_heartbeat and job.silent_seconds > settings.job_stale_after_seconds:
            reason, rule = (
                f"run {run.run_id} stopped sending heartbeats {job.silent_seconds:.0f}s ago: its process is gone",
                "dead_process",
            )
        if reason is None:
            continue
        if run is not None:
            _end_orphaned_run(instance, run, f"forecast_job_recovery: {reason}")
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
        if log:
            log.warning(f"forecast job {job.id}: {reason} -> {status}")
    return counts


def _end_orphaned_run(instance: DagsterInstance, run: DagsterRun, reason: str) -> None:
    """A run whose process went silent: ask the launcher to terminate whatever is left of it,
    then mark it failed, or its record would say "started" for ever."""
    with contextlib.suppress(Exception):  # the process is most likely gone already
        instance.run_launcher.terminate(run.run_id)
    current = instance.get_run_by_id(run.run_id)
    if current is not None and not current.is_finished:
        instance.report_run_failed(current, reason)


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requeues or fails active forecast jobs whose run never came, ended unnoticed or went silent "
    "(audit entry each).",
)
def forecast_job_recovery(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(NEEDS_POSTGRES.format(url=app_db.redacted_url()))
    counts = recover_stale_jobs(context.instance, engine, context.log)
    return SkipReason(", ".join(f"{k}: {v}" for k, v in counts.items()))
