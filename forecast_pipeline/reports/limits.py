"""Plan limits (the legacy ``limit_checker``): checked before a report does any heavy work.

An account may generate ``plans.monthly_report_limit`` reports per calendar month, the month taken
in the **account's** time zone (a report at 23:30 on Jan 31 in New York counts for January even
though it is February in UTC). ``NULL`` (or no plan) means unlimited. Counted: this month's
``report_generations`` that are ``succeeded`` (delivered), plus ``running`` ones holding their
place while they run; ``skipped_limit`` rows are not reports, and ``failed`` ones (refused as
stale, not written, not delivered) are not charged to the customer.

:func:`check_report_limit` locks the account row (``FOR UPDATE``) so two report runs of one account
at the same moment cannot both take its last report; the caller records its generation in the same
transaction.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.app_db.report_tables import accounts, plans, report_generations
from forecast_pipeline.reports.cadence import load_timezone

COUNTED_STATUSES = ("running", "succeeded")


def month_start(now: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """Midnight of the first day of ``now``'s calendar month in ``tz``, as a UTC instant."""
    local = now.astimezone(tz)
    return dt.datetime(local.year, local.month, 1, tzinfo=tz).astimezone(dt.UTC)


def next_month_start(now: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    local = now.astimezone(tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return dt.datetime(year, month, 1, tzinfo=tz).astimezone(dt.UTC)


@dataclass(frozen=True)
class LimitDecision:
    allowed: bool
    limit: int | None
    used: int
    since: dt.datetime

    def describe(self) -> str:
        if self.limit is None:
            return f"unlimited plan ({self.used} this month)"
        verdict = "allowed" if self.allowed else "limit reached"
        return f"{verdict}: {self.used} of {self.limit} reports used since {self.since.isoformat()}"


def check_report_limit(
    conn: sa.Connection,
    account_id: int,
    now: dt.datetime | None = None,
    exclude_schedule_run_id: int | None = None,
) -> LimitDecision:
    """Whether the account may generate one more report now; locks the account row.

    ``exclude_schedule_run_id``: the run asking (a re-execution does not count its own earlier
    generation against itself)."""
    now = now or dt.datetime.now(dt.UTC)
    account = conn.execute(
        sa.select(accounts.c.timezone, plans.c.monthly_report_limit)
        .select_from(accounts.outerjoin(plans, plans.c.id == accounts.c.plan_id))
        .where(accounts.c.id == account_id)
        .with_for_update(of=accounts)
    ).one_or_none()
    if account is None:
        raise LookupError(f"account {account_id} does not exist")
    tz = load_timezone(account.timezone)
    since = month_start(now, tz)
    g = report_generations.c
    query = sa.select(sa.func.count()).where(
        g.account_id == account_id,
        g.created_at >= since,
        g.created_at < next_month_start(now, tz),
        g.status.in_(COUNTED_STATUSES),
    )
    if exclude_schedule_run_id is not None:
        query = query.where(sa.or_(g.schedule_run_id.is_(None), g.schedule_run_id != exclude_schedule_run_id))
    used = int(conn.execute(query).scalar_one())
    limit = account.monthly_report_limit
    return LimitDecision(allowed=limit is None or used < limit, limit=limit, used=used, since=since)
