"""The forecast request queue: enqueue, claim, start, close, retry, cancel and recover ``forecast_requests``.

Life of a request: ``queued`` -> ``claimed`` (the queue sensor requested its attempt's Dagster run,
which may wait in Dagster's run queue) -> ``running`` (that run's process started and sends
heartbeats) -> ``succeeded``; on a failed run back to ``queued`` after an exponential backoff with
jitter until ``max_attempts``, then ``failed``. Bad parameters fail a request before it is claimed.
A failed or cancelled run closes its request only once the run's process has exited (its heartbeat
stopped), so an attempt never overlaps the next one. Every transition writes an audit row and a
structured JSON log line (``job_id, job_type, from, to, duration, rows, error``: the legacy plan
worker's field names and messages, kept as they were because log consumers parse them).

Claimers take a transaction-scoped advisory lock, so the count of active requests (the capacity) and
the concurrency keys in use are exact however many claimers run; ``FOR UPDATE SKIP LOCKED`` lets
them pass rows that another transaction (a cancel, a close) is holding.
"""

import datetime as dt
import json
import logging
import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.app_db import leases
from forecast_pipeline.app_db.queue_tables import (
    ACTIVE_STATUSES,
    REQUEST_TYPE,
    forecast_request_audit,
    forecast_requests,
)
from forecast_pipeline.json_logging import FIELDS

log = logging.getLogger(__name__)

REQUEST_ID_TAG = "forecast/request_id"
ATTEMPT_TAG = "forecast/request_attempt"
LEGACY_TAGS = ("forecast/job_id", "forecast/job_attempt")
"""The tags of runs launched before the rename: read (never written) so that runs in flight during
an upgrade are still started, beaten and closed."""
_CLAIM_LOCK = 7_412_002  # pg_advisory_xact_lock id held by a claim transaction


def tagged_attempt(tags: dict[str, str], default_attempt: str = "0") -> tuple[int, int] | None:
    """``(request id, attempt)`` from a run's tags, new or legacy; None for other runs."""
    for id_tag, attempt_tag in ((REQUEST_ID_TAG, ATTEMPT_TAG), LEGACY_TAGS):
        if id_tag in tags:
            return int(tags[id_tag]), int(tags.get(attempt_tag, default_attempt))
    return None


class BadRequestParameters(ValueError):
    """A request row that can never run: its error says why."""


@dataclass(frozen=True)
class RequestSpec:
    """A validated request: the as-of dates to materialize and, optionally, some products."""

    first: dt.date
    last: dt.date
    product_ids: tuple[int, ...] | None = None

    @property
    def partition_keys(self) -> list[str]:
        days = (self.last - self.first).days
        return [(self.first + dt.timedelta(days=i)).isoformat() for i in range(days + 1)]


def parse_parameters(parameters: object, history_start: dt.date, today: dt.date) -> RequestSpec:
    """Validate a request's ``parameters``; raise :class:`BadRequestParameters` naming the problem."""
    if isinstance(parameters, str):
        # the column is JSON: a str here is a JSON string, not text to decode again
        hint = ""
        try:
            if isinstance(json.loads(parameters), dict):
                hint = " (it holds an encoded object: store the object itself, not a string of it)"
        except json.JSONDecodeError:
            pass
        raise BadRequestParameters(f"parameters must be a JSON object, got a JSON string {parameters[:80]!r}{hint}")
    if not isinstance(parameters, dict):
        kind = {list: "an array", bool: "a boolean", int: "a number", float: "a number"}.get(type(parameters), "null")
        raise BadRequestParameters(f"parameters must be a JSON object, got {kind}")
    unknown = set(parameters) - {"as_of_date", "from", "to", "product_ids"}
    if unknown:
        raise BadRequestParameters(
            f"unknown parameter(s) {sorted(unknown)}; expected as_of_date or from/to, product_ids"
        )

    def date(name: str) -> dt.date:
        value = parameters.get(name)
        try:
            # the form the CLI takes: fromisoformat alone also reads 20251110 and week dates (2025W01)
            if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(value)
            return dt.date.fromisoformat(value)
        except ValueError as exc:
            raise BadRequestParameters(f"{name}={value!r} is not a YYYY-MM-DD date") from exc

    if "as_of_date" in parameters:
        if "from" in parameters or "to" in parameters:
            raise BadRequestParameters("give either as_of_date or from/to, not both")
        first = last = date("as_of_date")
    elif "from" in parameters and "to" in parameters:
        first, last = date("from"), date("to")
        if first > last:
            raise BadRequestParameters(f"from {first} is after to {last}")
    else:
        raise BadRequestParameters("parameters need as_of_date, or from and to")
    if first < history_start:
        raise BadRequestParameters(f"as-of date {first} is before the history start {history_start}")
    if last > today:
        raise BadRequestParameters(f"as-of date {last} is in the future (today is {today})")

    products = parameters.get("product_ids")
    if products is not None:
        # bool is an int in Python, but true is no product id
        if not isinstance(products, list) or not products or not all(_is_id(p) for p in products):
            raise BadRequestParameters(f"product_ids must be a non-empty list of integers, got {products!r}")
        products = tuple(sorted(set(products)))
    return RequestSpec(first, last, products)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63  # BIGINT


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
    idempotency_key: str | None = None,
) -> int:
    """Queue a forecast request; returns its id. The same as inserting a ``forecast_requests`` row.

    With an ``idempotency_key`` that some request already has, nothing is queued and that request's id is
    returned: a caller that retries its request never doubles the work."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    for name, key in (("idempotency_key", idempotency_key), ("concurrency_key", concurrency_key)):
        if key is not None and not key.strip():  # '' from an unset variable would be shared by all
            raise ValueError(f"{name} must not be blank (leave it out for none), got {key!r}")
    parameters: dict = {}
    if as_of_date is not None:
        parameters["as_of_date"] = str(as_of_date)
    if date_range is not None:
        parameters["from"], parameters["to"] = str(date_range[0]), str(date_range[1])
    if product_ids is not None:
        parameters["product_ids"] = [int(p) for p in product_ids]
    values = {
        "request_type": REQUEST_TYPE,
        "parameters": parameters,
        "priority": priority,
        "max_attempts": max_attempts,
        "concurrency_key": concurrency_key,
        "idempotency_key": idempotency_key,
    }
    if not_before is not None:
        values["not_before"] = not_before
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        insert = forecast_requests.insert().values(**values)
        if idempotency_key is not None and postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            insert = (
                pg_insert(forecast_requests)
                .values(**values)
                .on_conflict_do_nothing(
                    index_elements=["idempotency_key"], index_where=forecast_requests.c.idempotency_key.is_not(None)
                )
            )
        request_id = conn.execute(insert.returning(forecast_requests.c.id)).scalar()
        if request_id is None:  # the key already names a request
            return int(existing_request_for_key(conn, idempotency_key))
        if not postgres:  # on PostgreSQL a trigger writes it, for SQL inserts as well
            _audit(conn, request_id, "queued", {"parameters": parameters, "priority": priority})
    return int(request_id)


def existing_request_for_key(conn: sa.Connection, idempotency_key: str) -> int:
    return conn.execute(
        sa.select(forecast_requests.c.id).where(forecast_requests.c.idempotency_key == idempotency_key)
    ).scalar_one()


@dataclass(frozen=True)
class ClaimedRequest:
    id: int
    request_type: str
    parameters: dict
    attempts: int
    concurrency_key: str | None
    priority: int = 0
    spec: "RequestSpec | None" = None  # what ``validate`` made of the parameters


def claim_due_requests(
    engine: sa.Engine,
    limit: int,
    *,
    capacity: int | None = None,
    ended: Collection[int] = (),
    validate: Callable[[object], RequestSpec] | None = None,
) -> list[ClaimedRequest]:
    """Claim due requests (priority first, then oldest) and return them.

    At most ``limit`` requests, and no more than ``capacity`` requests active at once (claimed or running,
    counting those claimed earlier, except the ``ended`` ones: active requests whose run has finished
    and whose process has exited, which only wait to be closed): a request is only claimed when its
    run can start. ``validate``
    turns a request's parameters into a :class:`RequestSpec` or raises :class:`BadRequestParameters`; a
    request it rejects is failed here with that reason, takes no capacity and stops nobody else.
    No request is claimed while another request with its concurrency key is active. Only
    ``request_type = 'forecast'`` rows are claimed.
    """
    cols = forecast_requests.c
    claimed: list[ClaimedRequest] = []
    rejected: list[tuple[sa.Row, str]] = []
    with engine.begin() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CLAIM_LOCK)))
        room = limit
        if capacity is not None:
            active = conn.execute(
                sa.select(sa.func.count()).where(
                    cols.status.in_(ACTIVE_STATUSES), cols.request_type == REQUEST_TYPE, cols.id.not_in(list(ended))
                )
            ).scalar_one()
            room = min(limit, capacity - active)
        if room <= 0:
            return []
        taken_keys = set(
            conn.execute(
                sa.select(cols.concurrency_key).where(
                    cols.status.in_(ACTIVE_STATUSES), cols.concurrency_key.is_not(None)
                )
            ).scalars()
        )
        # Only requests that could start: none whose key is taken, and only the first of each key (one
        # key's backlog filled the scan and kept free slots from every other request).
        order = (cols.priority.desc(), cols.created_at, cols.id)
        due = sa.and_(cols.status == "queued", cols.request_type == REQUEST_TYPE, cols.not_before <= sa.func.now())
        free_key = sa.or_(cols.concurrency_key.is_(None), cols.concurrency_key.not_in(sorted(taken_keys)))
        ranked = (
            sa.select(
                cols.id,
                cols.concurrency_key,
                sa.func.row_number().over(partition_by=cols.concurrency_key, order_by=order).label("rank"),
                sa.func.row_number().over(order_by=order).label("ordinal"),
            )
            .where(due, free_key)
            .subquery()
        )
        # picked first, then locked by id: as one statement the planner, its row estimates stale after
        # a burst of requests, re-ran the window for every queued row (0.8 s for 2,000)
        startable = (
            conn.execute(
                sa.select(ranked.c.id)
                .where(sa.or_(ranked.c.concurrency_key.is_(None), ranked.c.rank == 1))
                .order_by(ranked.c.ordinal)
                .limit(room * 4 + 20)
            )
            .scalars()
            .all()
        )
        candidates = sa.select(forecast_requests).where(due, cols.id.in_(startable)).order_by(*order)
        specs: dict[int, RequestSpec | None] = {}

        def take(conn: sa.Connection, row: sa.Row) -> dict | None:
            if row.concurrency_key is not None and row.concurrency_key in taken_keys:
                return None
            spec = None
            if validate is not None:
                try:
                    spec = validate(row.parameters)
                except BadRequestParameters as exc:
                    _fail_unclaimed(conn, row, str(exc))
                    rejected.append((row, str(exc)))
                    return None
            specs[row.id] = spec
            if row.concurrency_key is not None:
                taken_keys.add(row.concurrency_key)
            attempt = row.attempts + 1
            return {
                "status": "claimed",
                "attempts": attempt,
                "claimed_at": sa.func.now(),
                "started_at": None,
                "heartbeat_at": None,
                "cancel_requested_at": None,
                "updated_at": sa.func.now(),
                "run_key": run_key_for(row.id, attempt),
                "dagster_run_id": None,
            }

        # a key taken by a writer outside the queue makes the unique index refuse the row: skipped
        for row in leases.claim(conn, candidates, table=forecast_requests, take=take, limit=room):
            request = ClaimedRequest(
                row.id,
                row.request_type,
                row.parameters,
                row.attempts + 1,
                row.concurrency_key,
                row.priority,
                specs[row.id],
            )
            _audit(conn, request.id, "claimed", {"attempt": request.attempts})
            claimed.append(request)
    for row, error in rejected:
        _log("Job failed", row.id, row.request_type, row.parameters, "failed", error=error)
    for request in claimed:
        _log("Job claimed", request.id, request.request_type, request.parameters, "claimed")
    return claimed


def claimed_requests(engine: sa.Engine, claimed_before_seconds: float = 0) -> list[ClaimedRequest]:
    """Forecast requests claimed at least ``claimed_before_seconds`` ago whose run has not started
    and that nobody asked to cancel: the queue sensor requests their run again when Dagster has
    none (a tick that died between its claim's commit and handing its run requests over)."""
    cols = forecast_requests.c
    query = (
        sa.select(forecast_requests)
        .where(
            cols.status == "claimed",
            cols.request_type == REQUEST_TYPE,
            cols.cancel_requested_at.is_(None),
            cols.claimed_at <= sa.func.now() - dt.timedelta(seconds=claimed_before_seconds),
        )
        .order_by(cols.priority.desc(), cols.created_at, cols.id)
    )
    with engine.connect() as conn:
        return [
            ClaimedRequest(r.id, r.request_type, r.parameters, r.attempts, r.concurrency_key, r.priority)
            for r in conn.execute(query)
        ]


def _fail_unclaimed(conn: sa.Connection, row: sa.Row, error: str) -> None:
    conn.execute(
        forecast_requests.update()
        .where(forecast_requests.c.id == row.id)
        .values(status="failed", error=error, finished_at=sa.func.now(), updated_at=sa.func.now())
    )
    _audit(conn, row.id, "bad_parameters", {"error": error})


def run_key_for(request_id: int, attempt: int) -> str:
    """One Dagster run per request attempt: the sensor's run_key makes a relaunch impossible."""
    return f"forecast-request-{request_id}-attempt-{attempt}"


def retry_delay(attempt: int, base_seconds: float, max_seconds: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half of ``base * 2**(attempt-1)`` (capped) is fixed and
    the other half random, so retries spread out but never come sooner than half the backoff."""
    ceiling = min(max_seconds, base_seconds * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def mark_succeeded(
    engine: sa.Engine,
    request_id: int,
    run_id: str,
    rows: int | None,
    attempt: int | None = None,
    duration: float | None = None,
) -> bool:
    """Close an active request as succeeded; False if it was not active at that attempt (already
    closed). ``duration``: the run's own start-to-end time (default: since its start)."""
    with engine.begin() as conn:
        row = _lock_active(conn, request_id, attempt, run_id)
        if row is None:
            return False
        duration = _duration(conn, row) if duration is None else duration
        conn.execute(
            forecast_requests.update()
            .where(forecast_requests.c.id == request_id)
            .values(
                status="succeeded",
                finished_at=sa.func.now(),
                updated_at=sa.func.now(),
                heartbeat_at=None,
                dagster_run_id=run_id,
                rows_written=rows,
                duration_seconds=duration,
                error=None,
            )
        )
        _audit(conn, request_id, "succeeded", {"run_id": run_id, "rows": rows, "duration": duration})
    _log("Job completed", request_id, row.request_type, row.parameters, "succeeded", duration=duration, rows=rows)
    return True


def mark_failed(
    engine: sa.Engine,
    request_id: int,
    error: str,
    *,
    run_id: str | None = None,
    retryable: bool = True,
    attempt: int | None = None,
    base_seconds: float = 60,
    max_seconds: float = 3600,
    event: str = "run_failed",
    duration: float | None = None,
) -> str | None:
    """A request's run failed: requeue it after a backoff while attempts remain, else fail it (or
    cancel it, when a cancel was requested meanwhile).

    Returns the new status, or None if the request was not active at that ``attempt`` (already
    handled, or claimed again since).
    """
    with engine.begin() as conn:
        row = _lock_active(conn, request_id, attempt, run_id)
        if row is None:
            return None
        duration = _duration(conn, row) if duration is None else duration
        detail = {"run_id": run_id, "error": error, "attempt": row.attempts}
        if row.cancel_requested_at is not None:
            status, values, event = "cancelled", {"finished_at": sa.func.now()}, "cancelled"
        elif retryable and row.attempts < row.max_attempts:
            delay = retry_delay(row.attempts, base_seconds, max_seconds)
            status = "queued"
            values = {"not_before": sa.func.now() + dt.timedelta(seconds=delay), "finished_at": None}
            detail["retry_in_seconds"] = round(delay, 1)
        else:  # the specific event (stale_no_run, bad_parameters...) says why; a run's failure is "failed"
            status, values = "failed", {"finished_at": sa.func.now()}
            event = "failed" if event == "run_failed" else event
        detail["status"] = status
        conn.execute(
            forecast_requests.update()
            .where(forecast_requests.c.id == request_id)
            .values(
                status=status,
                error=error,
                updated_at=sa.func.now(),
                heartbeat_at=None,
                dagster_run_id=run_id,
                duration_seconds=duration,
                **values,
            )
        )
        _audit(conn, request_id, event, detail)
    message = {"queued": "Job requeued", "failed": "Job failed", "cancelled": "Job cancelled"}[status]
    _log(message, request_id, row.request_type, row.parameters, status, duration=duration, error=error)
    return status


def mark_cancelled(
    engine: sa.Engine, request_id: int, reason: str, run_id: str | None = None, attempt: int | None = None
) -> bool:
    """Close an active request as cancelled; False if it was not active at that attempt."""
    with engine.begin() as conn:
        row = _lock_active(conn, request_id, attempt, run_id)
        if row is None:
            return False
        _cancel(conn, row, reason, run_id)
    _log("Job cancelled", request_id, row.request_type, row.parameters, "cancelled", error=reason)
    return True


def _cancel(conn: sa.Connection, row: sa.Row, reason: str, run_id: str | None = None) -> None:
    conn.execute(
        forecast_requests.update()
        .where(forecast_requests.c.id == row.id)
        .values(
            status="cancelled",
            error=reason,
            finished_at=sa.func.now(),
            updated_at=sa.func.now(),
            heartbeat_at=None,
            dagster_run_id=run_id or row.dagster_run_id,
        )
    )
    _audit(conn, row.id, "cancelled", {"run_id": run_id, "reason": reason})


class UnknownRequest(LookupError):
    """No forecast request has this id."""


def cancel_request(engine: sa.Engine, request_id: int, reason: str = "cancelled on request") -> str:
    """Cancel a request: a queued one at once (``"cancelled"``); an active one is marked and its
    Dagster run cancelled or terminated by the queue sensor, the request closing when the run has
    ended (``"cancel requested"``). ``"already <status>"`` for a finished request; another request
    type's row is no forecast request (:class:`UnknownRequest`)."""
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(forecast_requests)
            .where(forecast_requests.c.id == request_id, forecast_requests.c.request_type == REQUEST_TYPE)
            .with_for_update()
        ).first()
        if row is None:
            raise UnknownRequest(f"no forecast request {request_id}")
        if row.status == "queued":
            _cancel(conn, row, reason)
            outcome = "cancelled"
        elif row.status in ACTIVE_STATUSES:
            if row.cancel_requested_at is None:
                conn.execute(
                    forecast_requests.update()
                    .where(forecast_requests.c.id == request_id)
                    .values(cancel_requested_at=sa.func.now(), updated_at=sa.func.now())
                )
                _audit(conn, request_id, "cancel_requested", {"attempt": row.attempts, "reason": reason})
            return "cancel requested"
        else:
            return f"already {row.status}"
    _log("Job cancelled", request_id, row.request_type, row.parameters, "cancelled", error=reason)
    return outcome


def fail_bad_request(engine: sa.Engine, request_id: int, error: str) -> None:
    """A claimed request whose run cannot even be requested: fail it at once, no retry."""
    mark_failed(engine, request_id, error, retryable=False, event="bad_parameters")


class StaleAttempt(RuntimeError):
    """A run started for a request attempt that is no longer the request's current one."""


def mark_run_started(engine: sa.Engine, request_id: int, attempt: int, run_id: str) -> None:
    """The run of this attempt has started executing: the request is ``running`` from now.

    Raises :class:`StaleAttempt` when the request has moved on (requeued, cancelled, closed): that
    run must not execute the request a second time. Repeatable for the same run (a step process
    per step)."""
    cols = forecast_requests.c
    with engine.begin() as conn:
        started = conn.execute(
            forecast_requests.update()
            .where(
                cols.id == request_id,
                cols.attempts == attempt,
                cols.cancel_requested_at.is_(None),
                sa.or_(cols.status == "claimed", sa.and_(cols.status == "running", cols.dagster_run_id == run_id)),
            )
            .values(
                status="running",
                started_at=sa.func.coalesce(cols.started_at, sa.func.now()),
                heartbeat_at=sa.func.now(),
                dagster_run_id=run_id,
                updated_at=sa.func.now(),
            )
            # started_at is the transaction's now() only where this call set it: the first step process
            .returning(cols.id, (cols.started_at == sa.func.now()).label("first"))
        ).first()
        if started is None:
            row = conn.execute(sa.select(cols.status, cols.attempts).where(cols.id == request_id)).first()
            now = "gone" if row is None else f"{row.status}, attempt {row.attempts}"
            raise StaleAttempt(
                f"forecast request {request_id} attempt {attempt} is no longer current (now {now}): "
                f"run {run_id} does not execute it"
            )
        if started.first:  # one audit entry per attempt, not one per step process
            _audit(conn, request_id, "started", {"attempt": attempt, "run_id": run_id})


def heartbeat(engine: sa.Engine, request_id: int, attempt: int) -> None:
    """The run of this request attempt is alive (called by the run every few seconds)."""
    cols = forecast_requests.c
    with engine.begin() as conn:
        leases.extend(
            conn,
            forecast_requests,
            (cols.id == request_id, cols.attempts == attempt, cols.status == "running"),
            heartbeat_at=sa.func.now(),
        )


def mark_process_exited(engine: sa.Engine, request_id: int, attempt: int) -> None:
    """The run's process is done with the request (its resources are torn down): nothing of this
    attempt executes any more, so a failed run may be retried at once."""
    cols = forecast_requests.c
    with engine.begin() as conn:
        leases.release(conn, forecast_requests, (cols.id == request_id, cols.attempts == attempt), heartbeat_at=None)


def process_alive(engine: sa.Engine, request_id: int, attempt: int, stale_after_seconds: float) -> bool:
    """Whether a process of this request attempt may still be executing: it beat recently and has
    not reported its exit."""
    cols = forecast_requests.c
    with engine.connect() as conn:
        silent = conn.execute(
            sa.select(leases.seconds_since(cols.heartbeat_at)).where(
                cols.id == request_id,
                cols.attempts == attempt,
                cols.status == "running",
                cols.heartbeat_at.is_not(None),
            )
        ).scalar()
    return silent is not None and silent < stale_after_seconds


def active_requests(engine: sa.Engine, *, cancel_requested: bool = False) -> list[sa.Row]:
    """Claimed and running forecast requests (other types' rows are their consumers' own), with how
    long ago they were claimed and last heard from (s)."""
    cols = forecast_requests.c
    now = sa.func.now()
    query = sa.select(
        cols.id,
        cols.request_type,
        cols.status,
        cols.attempts,
        cols.run_key,
        cols.dagster_run_id,
        cols.cancel_requested_at,
        leases.seconds_since(sa.func.coalesce(cols.claimed_at, cols.started_at), now).label("claimed_seconds_ago"),
        leases.seconds_since(cols.heartbeat_at, now).label("silent_seconds"),
        cols.heartbeat_at.is_not(None).label("has_heartbeat"),
    ).where(cols.status.in_(ACTIVE_STATUSES), cols.request_type == REQUEST_TYPE)
    if cancel_requested:
        query = query.where(cols.cancel_requested_at.is_not(None))
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(cols.id)))


def audit_entries(engine: sa.Engine, request_id: int) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(forecast_request_audit)
                .where(forecast_request_audit.c.request_id == request_id)
                .order_by(forecast_request_audit.c.id)
            )
        )


def write_audit(engine: sa.Engine, request_id: int, event: str, detail: dict) -> None:
    with engine.begin() as conn:
        _audit(conn, request_id, event, detail)


def _lock_active(conn: sa.Connection, request_id: int, attempt: int | None = None, run_id: str | None = None):
    """The request, locked, if active (at ``attempt``; and, for news of run ``run_id``, unless
    another run started the attempt: a re-execution carries its parent's tags, is refused at start
    and says nothing about the request)."""
    cols = forecast_requests.c
    query = sa.select(forecast_requests).where(cols.id == request_id, cols.status.in_(ACTIVE_STATUSES))
    if attempt is not None:
        query = query.where(cols.attempts == attempt)
    if run_id is not None:
        query = query.where(sa.or_(cols.dagster_run_id.is_(None), cols.dagster_run_id == run_id))
    return conn.execute(query.with_for_update()).first()


def _duration(conn: sa.Connection, row) -> float | None:
    """Seconds since the attempt's run started (None if it never did)."""
    if row.started_at is None:
        return None
    return float(conn.execute(sa.select(leases.seconds_since(sa.literal(row.started_at)))).scalar_one())


def _audit(conn: sa.Connection, request_id: int, event: str, detail: dict) -> None:
    conn.execute(forecast_request_audit.insert().values(request_id=request_id, event=event, detail=detail))


def _log(
    message: str,
    request_id: int,
    request_type: str,
    parameters: object,
    status: str,
    *,
    duration: float | None = None,
    rows: int | None = None,
    error: str | None = None,
) -> None:
    """One log record per transition, with the legacy plan worker's fields (``from``/``to``: the
    request's as-of date range) as structured fields: one JSON line where JSON logging is configured
    (see :mod:`forecast_pipeline.json_logging`). The field names and messages stay the legacy
    ones (``job_id``, ``job_type``, "Job claimed", ...) although the concept is now a request:
    the legacy log format is a contract with whatever parses these lines."""
    params = parameters if isinstance(parameters, dict) else {}
    fields = {
        "job_id": request_id,  # legacy field names: see the docstring
        "job_type": request_type,
        "status": status,
        "from": params.get("as_of_date", params.get("from")),
        "to": params.get("as_of_date", params.get("to")),
        "duration": None if duration is None else round(duration, 3),
        "rows": rows,
        "error": error,
    }
    log.info(message, extra={FIELDS: fields})
