"""Leasing rows of a work table: claim, heartbeat, release, find expired leases.

The forecast queue (``forecast_requests``), the report tick (``report_schedules``) and the notification
outbox (``alert_notifications``) all hand rows to one worker at a time the same way, through here:

- :func:`claim`: in the caller's transaction, lock the candidate rows with ``FOR UPDATE SKIP
  LOCKED`` (a concurrent claimer passes over them instead of waiting, and never gets the same
  row), let the caller accept or pass each one, and write what marks it taken (status, lease
  expiry, attempt) before the transaction commits. Rows the caller writes one by one get a
  savepoint each, so one row's conflict or error leaves the others claimed.
- :func:`extend` / :func:`release`: the holder beats (``heartbeat_at = now()``), or gives a row
  back, only while the row is still its own (the ``where`` names the holder: status, attempt).
- :func:`lease_free` and :func:`expired`: a lease is a timestamp; a row whose lease time has
  passed is claimable again, or is listed for recovery.

The tables keep their own columns and statuses: a lease is described by the caller's
conditions and values, never by columns this module adds. On SQLite the lock clause is left
out (one writer at a time there anyway).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")


def lock_skipping_locked(candidates: sa.Select, of: Any = None) -> sa.Select:
    """``candidates`` as ``SELECT ... FOR UPDATE [OF of] SKIP LOCKED``."""
    return candidates.with_for_update(skip_locked=True, of=of)


def claim(
    conn: sa.Connection,
    candidates: sa.Select,
    *,
    table: sa.Table,
    key: str = "id",
    values: Mapping[str, Any] | None = None,
    take: Callable[[sa.Connection, sa.Row], Mapping[str, Any] | None] | None = None,
    limit: int | None = None,
    of: Any = None,
    skip_errors: tuple[type[BaseException], ...] = (sa.exc.IntegrityError,),
    on_skip: Callable[[sa.Row, BaseException], None] | None = None,
) -> list[sa.Row]:
    """Claim rows of ``table`` among ``candidates`` (a select with its own where, order and
    scan limit) inside the caller's open transaction on ``conn``; returns the rows claimed, in
    order, as they were before the claim.

    Either ``values`` marks every row taken in one ``UPDATE`` (status, lease expiry), or ``take``
    decides row by row: it may write (in a savepoint of its own) and returns the values that mark
    the row taken, or None to pass it over (it stays unclaimed). A ``take`` or update raising one
    of ``skip_errors`` (default: a unique index refusing the row) rolls that row's savepoint back;
    ``on_skip`` hears of it. At most ``limit`` rows are claimed (scan more candidates than that
    when ``take`` may pass some over).
    """
    if (values is None) == (take is None):
        raise ValueError("give either values or take")
    rows = conn.execute(lock_skipping_locked(candidates, of)).all()
    id_column = table.c[key]
    if values is not None:
        rows = rows[:limit] if limit is not None else rows
        if rows:
            conn.execute(table.update().where(id_column.in_([getattr(r, key) for r in rows])).values(**values))
        return rows
    claimed: list[sa.Row] = []
    for row in rows:
        if limit is not None and len(claimed) >= limit:
            break
        savepoint = conn.begin_nested()
        try:
            marks = take(conn, row)
            if marks:
                conn.execute(table.update().where(id_column == getattr(row, key)).values(**marks))
        except skip_errors as exc:
            savepoint.rollback()
            if on_skip is not None:
                on_skip(row, exc)
            continue
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.commit()
        if marks is not None:
            claimed.append(row)
    return claimed


def extend(conn: sa.Connection, table: sa.Table, where: Iterable[Any], **values: Any) -> bool:
    """Renew a held lease (e.g. ``heartbeat_at=sa.func.now()``) on the rows ``where`` selects
    (naming the holder, so a row that moved on is left alone); False if none matched."""
    return conn.execute(table.update().where(*where).values(**values)).rowcount > 0


def release(conn: sa.Connection, table: sa.Table, where: Iterable[Any], **values: Any) -> bool:
    """Give a held row back (restore its status or due time, clear its heartbeat); same rules as
    :func:`extend`."""
    return extend(conn, table, where, **values)


def lease_free(expires_at: sa.ColumnElement, now: dt.datetime | sa.ColumnElement) -> sa.ColumnElement[bool]:
    """True for a row with no lease, or one whose lease ended by ``now``: claimable."""
    return sa.or_(expires_at.is_(None), expires_at <= now)


def seconds_since(stamp: sa.ColumnElement, now: sa.ColumnElement | None = None) -> sa.ColumnElement:
    """Seconds from ``stamp`` (a heartbeat, a claim) to ``now`` (default: the database's clock)."""
    return sa.func.extract("epoch", (sa.func.now() if now is None else now) - stamp)


def expired(
    conn: sa.Connection,
    candidates: sa.Select,
    stamp: sa.ColumnElement,
    older_than_seconds: float,
    now: dt.datetime | None = None,
) -> list[sa.Row]:
    """Rows of ``candidates`` (held ones: a status, an attempt) whose ``stamp`` (last heartbeat,
    claim time) is more than ``older_than_seconds`` old at ``now`` (default: the database's
    clock): their holder is presumed gone and the caller recovers them."""
    if now is None:
        cutoff = sa.func.now() - dt.timedelta(seconds=older_than_seconds)
    else:
        cutoff = now - dt.timedelta(seconds=older_than_seconds)
    return conn.execute(candidates.where(stamp <= cutoff)).all()
