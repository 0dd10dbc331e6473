"""Sensors that run the forecast request queue (replacing the legacy plan worker's polling loop).

- ``forecast_request_queue``: carries out cancel requests, then claims as many due requests as the run
  queue can start (validated against the run config first) and requests one run per request attempt
  (``run_key``), tagged with the request's ``dagster/priority`` and ``dagster/max_runtime`` (see
  :func:`queue_run_timeout`: Dagster's run monitoring terminates a run that overruns, counting
  from the run's start).
- ``forecast_request_succeeded`` / ``forecast_request_failed`` / ``forecast_request_cancelled``: close the loop
  when a request's run ends: succeeded with duration and rows, or requeued with backoff, or failed,
  with the run's real error.
- ``forecast_request_recovery``: finds active requests whose run never came, finished unnoticed, or went
  silent (heartbeat stopped: the process died), and requeues or fails them with an audit entry.

Runs launched before the queue's rename carry ``forecast/job_id`` and ``forecast/job_attempt``
instead of ``forecast/request_*``: the status and recovery sensors read both, so runs in flight
during an upgrade are closed.

The queue lives in PostgreSQL (``APP_DATABASE_URL``); with any other database (the embedded SQLite
default) the sensors are off by default, their description says why, and started anyway they skip.
"""

import contextlib
import dataclasses
import datetime as dt
import functools
import re
import time

import sqlalchemy as sa
from dagster import (
    AssetKey,
    DagsterEventType,
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
    validate_run_config,
)

from forecast_pipeline.app_db.postgres_only import postgres_only_reason
from forecast_pipeline.defs.forecasts.partitions import as_of_partitions
from forecast_pipeline.defs.forecasts.schedules import daily_forecast_job
from forecast_pipeline.defs.postgres_only import postgres_only_sensor
from forecast_pipeline.forecast_queue import request_queue
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.settings import Settings, get_settings

FEATURE = "the forecast request queue"
QUEUE_SENSOR = "forecast_request_queue"


def _postgres_only(description: str) -> dict:
    """Off by default, with the reason in the UI, when the application database is not PostgreSQL."""
    return postgres_only_sensor(get_settings().app_database_url, FEATURE, description)


def today() -> dt.date:
    """Today in the partitions' time zone (``FORECAST_SCHEDULE_TIMEZONE``): the newest as-of date."""
    return dt.date.fromisoformat(as_of_partitions.get_last_partition_key())


def run_config_for(spec: request_queue.RequestSpec) -> dict:
    if not spec.product_ids:
        return {}
    return {"ops": {"product_forecasts": {"config": {"product_ids": list(spec.product_ids)}}}}


@functools.cache
def _loaded_forecast_job():
    from forecast_pipeline.definitions import defs  # the code location imports this module first

    return defs().resolve_job_def(daily_forecast_job.name)


def validate_request(parameters: object, settings: Settings | None = None, job_def=None) -> request_queue.RequestSpec:
    """A request's parameters as a spec whose run config Dagster accepts, or BadRequestParameters
    with the reason: checked before the request is claimed, so no run is ever requested for it.
    ``job_def``: the resolved Dagster forecast job (the sensor's repository has it; else it is loaded)."""
    settings = settings or get_settings()
    spec = request_queue.parse_parameters(parameters, settings.history_start, today())
    checked = validate_run_config(job_def or _loaded_forecast_job(), run_config_for(spec))
    if checked is None:  # pragma: no cover - validate_run_config raises on errors
        raise request_queue.BadRequestParameters("the run config was rejected")
    return spec


def queue_run_limit(instance: DagsterInstance, settings: Settings) -> int:
    """How many queue requests may be active at once: the instance's run queue limit for this
    sensor's runs (``tag_concurrency_limits`` on ``dagster/sensor_name``, within
    ``max_concurrent_runs``), so the queue claims only runs that can start. An instance without
    a run queue starts runs at once: then ``FORECAST_REQUEST_CLAIM_LIMIT``."""
    config = instance.get_concurrency_config().run_queue_config
    if config is None:
        return settings.request_claim_limit
    limits = [
        int(rule["limit"])
        for rule in config.tag_concurrency_limits or []
        if rule.get("key") == "dagster/sensor_name" and rule.get("value") == QUEUE_SENSOR
    ]
    if config.max_concurrent_runs is not None and config.max_concurrent_runs >= 0:
        limits.append(config.max_concurrent_runs)
    return min(limits) if limits else settings.request_claim_limit


def queue_run_timeout(instance: DagsterInstance, settings: Settings) -> int | None:
    """Seconds a queue run may execute: ``FORECAST_REQUEST_TIMEOUT_SECONDS`` when set, else the
    instance's ``run_monitoring.max_runtime_seconds`` (dagster.yaml), so one value governs both;
    None when neither sets a limit."""
    if settings.request_timeout_seconds:
        return settings.request_timeout_seconds
    return instance.run_monitoring_max_runtime_seconds or None


def run_request_for(
    request: request_queue.ClaimedRequest, spec: request_queue.RequestSpec, timeout_seconds: int | None = None
) -> RunRequest:
    """One run for the whole request: a single as-of date, or a range run as one single-run backfill."""
    tags = {
        request_queue.REQUEST_ID_TAG: str(request.id),
        request_queue.ATTEMPT_TAG: str(request.attempts),
        # the queue retries a request itself (with backoff), so Dagster's run retries are off for it
        "dagster/max_retries": "0",
        # the queued run coordinator starts higher priorities first
        "dagster/priority": str(request.priority),
    }
    if timeout_seconds:  # run monitoring terminates the run this long after it started
        tags["dagster/max_runtime"] = str(timeout_seconds)
    if request.concurrency_key:
        tags["forecast/concurrency_key"] = request.concurrency_key
    run_config = run_config_for(spec)
    run_key = request_queue.run_key_for(request.id, request.attempts)
    if spec.first == spec.last:
        return RunRequest(run_key=run_key, partition_key=spec.first.isoformat(), tags=tags, run_config=run_config)
    tags["dagster/asset_partition_range_start"] = spec.first.isoformat()
    tags["dagster/asset_partition_range_end"] = spec.last.isoformat()
    return RunRequest(run_key=run_key, tags=tags, run_config=run_config)


@sensor(
    name=QUEUE_SENSOR,
    job=daily_forecast_job,
    minimum_interval_seconds=get_settings().request_sensor_seconds,
    **_postgres_only(
        "Cancels what was asked to be cancelled, then claims as many due forecast_requests as can start "
        "(priority, then age) and launches a run per request."
    ),
)
def forecast_request_queue(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(postgres_only_reason(app_db.url, FEATURE))
    settings = get_settings()
    repository = context.repository_def
    forecast_job = repository.get_job(daily_forecast_job.name) if repository is not None else None
    carry_out_cancel_requests(context.instance, engine, context.log, settings)
    validate = functools.partial(validate_request, settings=settings, job_def=forecast_job)
    # first the claims of an earlier tick that never reached Dagster (same run_key: never run twice)
    unlaunched = claims_without_a_run(context.instance, engine, settings, validate)
    claimed = request_queue.claim_due_requests(
        engine,
        settings.request_claim_limit,
        capacity=queue_run_limit(context.instance, settings),
        ended=requests_whose_runs_ended(context.instance, engine, settings),
        validate=validate,
    )
    timeout = queue_run_timeout(context.instance, settings)
    run_requests = []
    for request in unlaunched + claimed:
        try:
            run_requests.append(run_request_for(request, request.spec, timeout))
        except Exception as exc:  # noqa: BLE001 - one request's failure must not lose the others' runs
            request_queue.fail_bad_request(engine, request.id, f"its run could not be requested: {exc}")
            context.log.warning(f"forecast request {request.id} failed: {exc}")
            continue
        spec = request.spec
        context.log.info(
            f"forecast request {request.id} (attempt {request.attempts}): as-of {spec.first}..{spec.last}"
            + (f", products {list(spec.product_ids)}" if spec.product_ids else "")
        )
    return SensorResult(run_requests=run_requests, skip_reason=None if run_requests else "no due forecast requests")


def claims_without_a_run(instance: DagsterInstance, engine: sa.Engine, settings: Settings, validate) -> list:
    """Requests claimed by an earlier tick (a sensor interval ago) whose attempt has no launched Dagster run:
    the tick died after its claim committed and before Dagster received its run requests (code
    server restarted, evaluation timed out). Their run is requested again under the same run_key,
    which Dagster launches at most once, instead of the request waiting for recovery to count the
    attempt as failed."""
    lost = []
    for request in request_queue.claimed_requests(engine, claimed_before_seconds=settings.request_sensor_seconds):
        record = run_of(instance, request.id, request.attempts)
        # NOT_STARTED: created, but the daemon failed to submit it; the same run_key submits it
        if record is not None and record.dagster_run.status != DagsterRunStatus.NOT_STARTED:
            continue
        try:
            spec = validate(request.parameters)
        except request_queue.BadRequestParameters as exc:
            request_queue.fail_bad_request(engine, request.id, str(exc))
            continue
        lost.append(dataclasses.replace(request, spec=spec))
    return lost


def requests_whose_runs_ended(instance: DagsterInstance, engine: sa.Engine, settings: Settings) -> set[int]:
    """Active requests whose run has finished and whose process has exited: they hold no run slot,
    they only wait for a status sensor to close them."""
    ended = set()
    for request in request_queue.active_requests(engine):
        record = run_of(instance, request.id, request.attempts, request.dagster_run_id)
        exited = not request.has_heartbeat or request.silent_seconds > settings.request_stale_after_seconds
        if record is not None and record.dagster_run.is_finished and exited:
            ended.add(request.id)
    return ended


def run_of(instance: DagsterInstance, request_id: int, attempt: int, run_id: str | None = None):
    """The run record of a request attempt, or None if no run was created for it (tagged the
    legacy way if it was launched before the rename). ``run_id``: the run that started the attempt
    (the request's ``dagster_run_id``), which a later run with its tags (a re-execution) never
    replaces; None when that run was deleted."""
    if run_id is not None:
        return instance.get_run_record_by_id(run_id)
    for id_tag, attempt_tag in ((request_queue.REQUEST_ID_TAG, request_queue.ATTEMPT_TAG), request_queue.LEGACY_TAGS):
        records = instance.get_run_records(
            RunsFilter(tags={id_tag: str(request_id), attempt_tag: str(attempt)}), limit=1
        )
        if records:
            return records[0]
    return None


def carry_out_cancel_requests(instance: DagsterInstance, engine: sa.Engine, log=None, settings=None) -> int:
    """Cancel the Dagster runs of requests asked to be cancelled (``requests cancel``): a run still in
    the queue is cancelled at once, a started one is terminated through the run launcher. The
    request closes when its run has ended. Returns how many requests were acted on."""
    settings = settings or get_settings()
    acted = 0
    for request in request_queue.active_requests(engine, cancel_requested=True):
        record = run_of(instance, request.id, request.attempts, request.dagster_run_id)
        run = record.dagster_run if record else None
        if run is None:
            if request.status == "claimed":  # its run, should it ever come, refuses to start
                reason = "cancelled before its run was created"
                acted += request_queue.mark_cancelled(engine, request.id, reason, attempt=request.attempts)
            continue
        if run.is_finished:
            acted += finish_request_for_run(instance, engine, run, settings) is not None
        elif run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
            instance.report_run_canceled(run, "cancelled from the forecast request queue")
            acted += 1
        elif run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
            terminated = instance.run_launcher.terminate(run.run_id)
            acted += 1
            if log:
                sent = "sent" if terminated else "not reachable"
                log.info(f"forecast request {request.id}: terminating run {run.run_id} ({sent})")
    return acted


def _request_tags(run: DagsterRun) -> tuple[int, int] | None:
    return request_queue.tagged_attempt(run.tags)


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


_RUNTIME_CANCELING = re.compile(r"exceeding maximum runtime of (\d+) seconds")


def _runtime_exceeded(instance: DagsterInstance, run_id: str) -> str | None:
    """ "Exceeded maximum runtime of N seconds." where run monitoring stopped the run for its max
    runtime. It reports the run canceling (saying why), terminates it, then fails it; the run's
    own process may record it CANCELED last, so the final status alone reads as a cancel."""
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_CANCELING).records:
        found = _RUNTIME_CANCELING.search(record.event_log_entry.dagster_event.message or "")
        if found:
            return f"Exceeded maximum runtime of {found.group(1)} seconds."
    return None


def finish_request_for_run(
    instance: DagsterInstance, engine: sa.Engine, run: DagsterRun, settings: Settings | None = None
) -> str | None:
    """Apply a finished run's outcome to its request; returns the request's new status (None: nothing to
    do, or not yet: a failed or cancelled run whose process still beats is left until it has
    exited, so a retry never overlaps it)."""
    tagged = _request_tags(run)
    if tagged is None:
        return None
    request_id, attempt = tagged
    settings = settings or get_settings()
    record = instance.get_run_record_by_id(run.run_id)
    duration = None
    if record is not None and record.start_time is not None and record.end_time is not None:
        duration = record.end_time - record.start_time
    if run.status == DagsterRunStatus.SUCCESS:
        done = request_queue.mark_succeeded(
            engine, request_id, run.run_id, rows_written(instance, run.run_id), attempt=attempt, duration=duration
        )
        return "succeeded" if done else None
    if run.status not in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE):
        return None
    if request_queue.process_alive(engine, request_id, attempt, settings.request_stale_after_seconds):
        return None
    timed_out = _runtime_exceeded(instance, run.run_id) if run.status == DagsterRunStatus.CANCELED else None
    if run.status == DagsterRunStatus.CANCELED and timed_out is None:
        done = request_queue.mark_cancelled(
            engine, request_id, "the Dagster run was cancelled", run.run_id, attempt=attempt
        )
        return "cancelled" if done else None
    error, retryable = failure_of(instance, run.run_id)
    if timed_out is not None and timed_out not in error:
        error = f"{timed_out}; {error}" if error != "run failed" else timed_out
    return request_queue.mark_failed(
        engine,
        request_id,
        error,
        run_id=run.run_id,
        retryable=retryable,
        attempt=attempt,
        base_seconds=settings.request_retry_base_seconds,
        max_seconds=settings.request_retry_max_seconds,
        duration=duration,
    )


def _close(context: RunStatusSensorContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    tagged = _request_tags(context.dagster_run)
    if engine is None or tagged is None:
        return SkipReason("not a queued forecast request")
    status = finish_request_for_run(context.instance, engine, context.dagster_run)
    request_id, attempt = tagged
    if status is None:
        settings = get_settings()
        alive = request_queue.process_alive(engine, request_id, attempt, settings.request_stale_after_seconds)
        status = (
            "its run's process still beats: forecast_request_recovery closes it once it has exited"
            if (alive and context.dagster_run.status != DagsterRunStatus.SUCCESS)
            else "already closed"
        )
    context.log.info(f"forecast request {request_id}: {status} (run {context.dagster_run.run_id})")
    return SkipReason(f"forecast request {request_id}: {status}")


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[daily_forecast_job],
    minimum_interval_seconds=get_settings().request_sensor_seconds,
    **_postgres_only("Marks a forecast request succeeded (duration, rows) when its run succeeds."),
)
def forecast_request_succeeded(context: RunStatusSensorContext, app_db: AppDatabase):
    return _close(context, app_db)


@run_failure_sensor(
    monitored_jobs=[daily_forecast_job],
    minimum_interval_seconds=get_settings().request_sensor_seconds,
    **_postgres_only("Requeues a forecast request with backoff when its run fails, or fails it after max_attempts."),
)
def forecast_request_failed(context: RunFailureSensorContext, app_db: AppDatabase):
    return _close(context, app_db)


@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    monitored_jobs=[daily_forecast_job],
    minimum_interval_seconds=get_settings().request_sensor_seconds,
    **_postgres_only("Marks a forecast request cancelled when its run is cancelled."),
)
def forecast_request_cancelled(context: RunStatusSensorContext, app_db: AppDatabase):
    return _close(context, app_db)


def recover_stale_requests(
    instance: DagsterInstance, engine: sa.Engine, log=None, settings: Settings | None = None
) -> dict[str, int]:
    """One pass of stale-request recovery; returns how many requests each rule touched.

    Time a run waits in Dagster's run queue is never held against it, and overrunning runs are
    Dagster's to stop (``dagster/max_runtime``): this only catches runs that were never created,
    finished without their status sensor noticing, or whose process died silently."""
    settings = settings or get_settings()
    counts = {"finished_unnoticed": 0, "no_run": 0, "dead_process": 0}
    retry = {"base_seconds": settings.request_retry_base_seconds, "max_seconds": settings.request_retry_max_seconds}
    for request in request_queue.active_requests(engine):
        record = run_of(instance, request.id, request.attempts, request.dagster_run_id)
        run = record.dagster_run if record else None
        reason = None
        if run is None:
            if request.status == "claimed" and request.claimed_seconds_ago > settings.request_launch_grace_seconds:
                reason, rule = f"no Dagster run was launched within {settings.request_launch_grace_seconds}s", "no_run"
            elif request.status == "running" and (
                not request.has_heartbeat or request.silent_seconds > settings.request_stale_after_seconds
            ):  # its run was deleted from the instance, and its process has ended
                reason, rule = f"its Dagster run {request.dagster_run_id} is gone from the instance", "no_run"
        elif run.is_finished:
            if record.end_time is not None and time.time() - record.end_time < settings.request_finished_grace_seconds:
                continue  # the run status sensors close it; recovery is for what they missed
            if finish_request_for_run(instance, engine, run, settings):
                counts["finished_unnoticed"] += 1
                request_queue.write_audit(
                    engine, request.id, "recovered", {"run_id": run.run_id, "run_status": run.status.value}
                )
            continue
        elif (
            request.status == "running"
            and request.has_heartbeat
            and request.silent_seconds > settings.request_stale_after_seconds
        ):
            reason, rule = (
                f"run {run.run_id} stopped sending heartbeats {request.silent_seconds:.0f}s ago: its process is gone",
                "dead_process",
            )
        if reason is None:
            continue
        if run is not None:
            _end_orphaned_run(instance, run, f"forecast_request_recovery: {reason}")
        status = request_queue.mark_failed(
            engine,
            request.id,
            reason,
            run_id=run.run_id if run else None,
            attempt=request.attempts,
            event=f"stale_{rule}",
            **retry,
        )
        if status is None:
            continue
        counts[rule] += 1
        if log:
            log.warning(f"forecast request {request.id}: {reason} -> {status}")
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
    **_postgres_only(
        "Requeues or fails active forecast requests whose run never came, ended unnoticed or went silent "
        "(audit entry each)."
    ),
)
def forecast_request_recovery(context: SensorEvaluationContext, app_db: AppDatabase):
    engine = app_db.locking_engine()
    if engine is None:
        return SkipReason(postgres_only_reason(app_db.url, FEATURE))
    counts = recover_stale_requests(context.instance, engine, context.log)
    return SkipReason(", ".join(f"{k}: {v}" for k, v in counts.items()))
