"""The forecast job queue: enqueue, claim, close, retry and recover jobs in ``forecast_jobs``.

Life of a job: ``queued`` -> (claimed by the queue sensor) ``running`` -> ``succeeded``, or on a
failed run back to ``queued`` after an exponential backoff with jitter until ``max_attempts``,
then ``failed``. Bad parameters fail a job at once. Every transition writes an audit row and a
structured JSON log line (``job_id, job_type, from, to, duration, rows, error``).

Claims use ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL), so any number of claimers each
take distinct jobs; a partial unique index keeps two jobs with one concurrency key from running
at once.
"""

import datetime as dt
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.jobs_schema import JOB_TYPE, forecast_job_audit, forecast_jobs
from forecast_pipeline.json_logging import JsonFormatter


def _jobs_logger() -> logging.Logger:
    """JSON lines on stderr: the sensors run in the daemon, where no Dagster run captures logs."""
    logger = logging.getLogger("forecast_pipeline.jobs")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger


log = _jobs_logger()

JOB_ID_TAG = "forecast/job_id"
ATTEMPT_TAG = "forecast/job_attempt"


class BadJobParameters(ValueError):
    """A job row that can never run: its error says why."""


@dataclass(frozen=True)
class JobRequest:
    """A validated job: the as-of dates to materialize and, optionally, some products."""

    first: dt.date
    last: dt.date
    product_ids: tuple[int, ...] | None = None

    @property
    def partition_keys(self) -> list[str]:
        days = (self.last - self.first).days
        return [(self.first + dt.timedelta(days=i)).isoformat() for i in range(days + 1)]


def parse_parameters(parameters: object, history_start: dt.date, today: dt.date) -> JobRequest:
    """Validate a job's ``parameters``; raise :class:`BadJobParameters` naming the problem."""
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters)
        except json.JSONDecodeError as exc:
            raise BadJobParameters(f"parameters are not JSON: {exc}") from exc
    if not isinstance(parameters, dict):
        raise BadJobParameters(f"parameters must be a JSON object, got {type(parameters).__name__}")
    unknown = set(parameters) - {"as_of_date", "from", "to", "product_ids"}
    if unknown:
        raise BadJobParameters(f"unknown parameter(s) {sorted(unknown)}; expected as_of_date or from/to, product_ids")

    def date(name: str) -> dt.date:
        value = parameters.get(name)
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError as exc:
            raise BadJobParameters(f"{name}={value!r} is not a YYYY-MM-DD date") from exc

    if "as_of_date" in parameters:
        if "from" in parameters or "to" in parameters:
            raise BadJobParameters("give either as_of_date or from/to, not both")
        first = last = date("as_of_date")
    elif "from" in parameters and "to" in parameters:
        first, last = date("from"), date("to")
        if first > last:
            raise BadJobParameters(f"from {first} is after to {last}")
    else:
        raise BadJobParameters("parameters need as_of_date, or from and to")
    if first < history_start:
        raise BadJobParameters(f"as-of date {first} is before the history start {history_start}")
    if last > today:
        raise BadJobParameters(f"as-of date {last} is in the future (today is {today})")

    products = parameters.get("product_ids")
    if products is not None:
        if not isinstance(products, list) or not products or not all(isinstance(p, int) for p in products):
            raise BadJobParameters(f"product_ids must be a non-empty list of integers, got {products!r}")
        products = tuple(sorted(set(products)))
    return JobRequest(first, last, products)


def enqueue(
    engine: sa.Engine,
    *,
    as_of_date: dt.date | str | None = None,
    date_range: tuple[dt.date | str, dt.date | str] | None = None,
    product_ids: Sequence[int] | None = None,
    priority: int = 0,
    max_attempts: int = 3,
    concurrency_key: str | None = None,
    not_before: dt.datetime | None = None,
) -> int:
    """Queue a forecast job; returns its id. The same as inserting a ``forecast_jobs`` row."""
    parameters: dict = {}
    if as_of_date is not None:
        parameters["as_of_date"] = str(as_of_date)
    if date_range is not None:
        parameters["from"], parameters["to"] = str(date_range[0]), str(date_range[1])
    if product_ids is not None:
        parameters["product_ids"] = [int(p) for p in product_ids]
    values = {
        "job_type": JOB_TYPE,
        "parameters": parameters,
        "priority": priority,
        "max_attempts": max_attempts,
        "concurrency_key": concurrency_key,
    }
    if not_before is not None:
        values["not_before"] = not_before
    with engine.begin() as conn:
        job_id = conn.execute(forecast_jobs.insert().values(**values).returning(forecast_jobs.c.id)).scalar_one()
        _audit(conn, job_id, "queued", {"parameters": parameters, "priority": priority})
    return int(job_id)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    job_type: str
    parameters: dict
    attempts: int
    concurrency_key: str | None


def claim_due_jobs(engine: sa.Engine, limit: int) -> list[ClaimedJob]:
    """Mark up to ``limit`` due jobs ``running`` (priority first, then oldest) and return them.

    Concurrent claimers never take the same job (``SKIP LOCKED``), and no job is claimed while
    another job with its concurrency key runs. Only ``job_type = 'forecast'`` rows are claimed.
    """
    jobs = forecast_jobs.c
    running_keys = (
        sa.select(jobs.concurrency_key)
        .where(jobs.status == "running", jobs.concurrency_key.is_not(None))
        .scalar_subquery()
    )
    candidates = (
        sa.select(jobs.id, jobs.job_type, jobs.parameters, jobs.attempts, jobs.concurrency_key)
        .where(
            jobs.status == "queued",
            jobs.job_type == JOB_TYPE,
            jobs.not_before <= sa.func.now(),
            sa.or_(jobs.concurrency_key.is_(None), jobs.concurrency_key.not_in(running_keys)),
        )
        .order_by(jobs.priority.desc(), jobs.created_at, jobs.id)
        .limit(limit * 4)
        .with_for_update(skip_locked=True)
    )
    claimed: list[ClaimedJob] = []
    with engine.begin() as conn:
        taken_keys: set[str] = set()
        for row in conn.execute(candidates):
            if len(claimed) == limit:
                break
            if row.concurrency_key is not None:
                if row.concurrency_key in taken_keys:
                    continue
                taken_keys.add(row.concurrency_key)
            claimed.append(ClaimedJob(row.id, row.job_type, row.parameters, row.attempts + 1, row.concurrency_key))
        for job in claimed:
            conn.execute(
                forecast_jobs.update()
                .where(jobs.id == job.id)
                .values(
                    status="running",
                    attempts=job.attempts,
                    started_at=sa.func.now(),
                    heartbeat_at=None,
                    updated_at=sa.func.now(),
                    run_key=run_key_for(job.id, job.attempts),
                    dagster_run_id=None,
                    error=None,
                )
            )
            _audit(conn, job.id, "claimed", {"attempt": job.attempts})
    for job in claimed:
        _log("Job claimed", job.id, job.job_type, job.parameters, "running")
    return claimed


def run_key_for(job_id: int, attempt: int) -> str:
    """One Dagster run per job attempt: the sensor's run_key makes a relaunch impossible."""
    return f"forecast-job-{job_id}-attempt-{attempt}"


def retry_delay(attempt: int, base_seconds: float, max_seconds: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half of ``base * 2**(attempt-1)`` (capped) is fixed and
    the other half random, so retries spread out but never come sooner than half the backoff."""
    ceiling = min(max_seconds, base_seconds * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def mark_succeeded(engine: sa.Engine, job_id: int, run_id: str, rows: int | None, attempt: int | None = None) -> bool:
    """Close a running job as succeeded; False if it was not running that attempt (already closed)."""
    with engine.begin() as conn:
        row = _lock_running(conn, job_id, attempt)
        if row is None:
            return False
        duration = _duration(conn, row)
        conn.execute(
            forecast_jobs.update()
            .where(forecast_jobs.c.id == job_id)
            .values(
                status="succeeded",
                finished_at=sa.func.now(),
                updated_at=sa.func.now(),
                dagster_run_id=run_id,
                rows_written=rows,
                duration_seconds=duration,
                error=None,
            )
        )
        _audit(conn, job_id, "succeeded", {"run_id": run_id, "rows": rows, "duration": duration})
    _log("Job completed", job_id, row.job_type, row.parameters, "succeeded", duration=duration, rows=rows)
    return True


def mark_failed(
    engine: sa.Engine,
    job_id: int,
    error: str,
    *,
    run_id: str | None = None,
    retryable: bool = True,
    attempt: int | None = None,
    base_seconds: float = 60,
    max_seconds: float = 3600,
    event: str = "run_failed",
    from_status: str = "running",
) -> str | None:
    """A job's run failed: requeue it after a backoff while attempts remain, else fail it.

    Returns the new status, or None if the job was not in ``from_status`` at that ``attempt``
    (already handled, or claimed again since).
    """
    with engine.begin() as conn:
        query = sa.select(forecast_jobs).where(forecast_jobs.c.id == job_id, forecast_jobs.c.status == from_status)
        if attempt is not None:
            query = query.where(forecast_jobs.c.attempts == attempt)
        row = conn.execute(query.with_for_update()).first()
        if row is None:
            return None
        duration = _duration(conn, row)
        if retryable and row.attempts < row.max_attempts:
            delay = retry_delay(row.attempts, base_seconds, max_seconds)
            status = "queued"
            values = {"not_before": sa.func.now() + dt.timedelta(seconds=delay), "finished_at": None}
            detail = {"run_id": run_id, "error": error, "attempt": row.attempts, "retry_in_seconds": round(delay, 1)}
        else:
            status = "failed"
            values = {"finished_at": sa.func.now()}
            detail = {"run_id": run_id, "error": error, "attempt": row.attempts}
        conn.execute(
            forecast_jobs.update()
            .where(forecast_jobs.c.id == job_id)
            .values(
                status=status,
                error=error,
                updated_at=sa.func.now(),
                dagster_run_id=run_id,
                duration_seconds=duration,
                **values,
            )
        )
        _audit(conn, job_id, event if status == "queued" else "failed", detail)
    message = "Job requeued" if status == "queued" else "Job failed"
    _log(message, job_id, row.job_type, row.parameters, status, duration=duration, error=error)
    return status


def mark_cancelled(
    engine: sa.Engine, job_id: int, reason: str, run_id: str | None = None, attempt: int | None = None
) -> bool:
    with engine.begin() as conn:
        row = _lock_running(conn, job_id, attempt)
        if row is None:
            return False
        conn.execute(
            forecast_jobs.update()
            .where(forecast_jobs.c.id == job_id)
            .values(
                status="cancelled",
                error=reason,
                finished_at=sa.func.now(),
                updated_at=sa.func.now(),
                dagster_run_id=run_id,
            )
        )
        _audit(conn, job_id, "cancelled", {"run_id": run_id, "reason": reason})
    _log("Job cancelled", job_id, row.job_type, row.parameters, "cancelled", error=reason)
    return True


def fail_bad_job(engine: sa.Engine, job_id: int, error: str) -> None:
    """A job whose parameters can never work: fail it at once, no retry."""
    mark_failed(engine, job_id, error, retryable=False, event="bad_parameters")


def record_run(engine: sa.Engine, job_id: int, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            forecast_jobs.update()
            .where(forecast_jobs.c.id == job_id, forecast_jobs.c.dagster_run_id.is_(None))
            .values(dagster_run_id=run_id, updated_at=sa.func.now())
        )


def heartbeat(engine: sa.Engine, job_id: int, attempt: int) -> None:
    """The run of this job attempt is alive (called by the run every few seconds)."""
    with engine.begin() as conn:
        conn.execute(
            forecast_jobs.update()
            .where(
                forecast_jobs.c.id == job_id, forecast_jobs.c.attempts == attempt, forecast_jobs.c.status == "running"
            )
            .values(heartbeat_at=sa.func.now())
        )


def running_jobs(engine: sa.Engine) -> list[sa.Row]:
    """Running jobs with how long ago they were claimed and last heard from (seconds)."""
    jobs = forecast_jobs.c
    now = sa.func.now()
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    jobs.id,
                    jobs.job_type,
                    jobs.attempts,
                    jobs.run_key,
                    jobs.dagster_run_id,
                    _seconds_between(jobs.started_at, now).label("claimed_seconds_ago"),
                    _seconds_between(sa.func.coalesce(jobs.heartbeat_at, jobs.started_at), now).label("silent_seconds"),
                    jobs.heartbeat_at.is_not(None).label("has_heartbeat"),
                ).where(jobs.status == "running")
            )
        )


def audit_entries(engine: sa.Engine, job_id: int) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(forecast_job_audit)
                .where(forecast_job_audit.c.job_id == job_id)
                .order_by(forecast_job_audit.c.id)
            )
        )


def write_audit(engine: sa.Engine, job_id: int, event: str, detail: dict) -> None:
    with engine.begin() as conn:
        _audit(conn, job_id, event, detail)


def _seconds_between(start, end):
    return sa.func.extract("epoch", end - start)


def _lock_running(conn: sa.Connection, job_id: int, attempt: int | None = None):
    query = sa.select(forecast_jobs).where(forecast_jobs.c.id == job_id, forecast_jobs.c.status == "running")
    if attempt is not None:
        query = query.where(forecast_jobs.c.attempts == attempt)
    return conn.execute(query.with_for_update()).first()


def _duration(conn: sa.Connection, row) -> float | None:
    if row.started_at is None:
        return None
    return float(conn.execute(sa.select(_seconds_between(sa.literal(row.started_at), sa.func.now()))).scalar_one())


def _audit(conn: sa.Connection, job_id: int, event: str, detail: dict) -> None:
    conn.execute(forecast_job_audit.insert().values(job_id=job_id, event=event, detail=detail))


def _log(
    message: str,
    job_id: int,
    job_type: str,
    parameters: object,
    status: str,
    *,
    duration: float | None = None,
    rows: int | None = None,
    error: str | None = None,
) -> None:
    """One JSON line per transition, with the legacy plan worker's fields (``from``/``to``: the
    job's as-of date range)."""
    params = parameters if isinstance(parameters, dict) else {}
    record = {
        "message": message,
        "job_id": job_id,
        "job_type": job_type,
        "status": status,
        "from": params.get("as_of_date", params.get("from")),
        "to": params.get("as_of_date", params.get("to")),
        "duration": None if duration is None else round(duration, 3),
        "rows": rows,
        "error": error,
    }
    log.info(json.dumps(record))
