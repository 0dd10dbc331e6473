"""Report tables (application database): ``plans``, ``accounts``, ``report_schedules``,
``schedule_runs`` and ``report_generations``.

Guarantees kept by the database:

- one ``schedule_runs`` row per schedule and slot (``uq_schedule_runs_slot``): the tick inserts
  with ``ON CONFLICT DO NOTHING``, so a repeated or racing tick never doubles a run;
- one ``report_generations`` row per schedule run (``uq_report_generations_run``): a re-executed
  run updates its generation instead of counting twice against the plan limit.

``report_schedules.cadence`` and ``timezone`` are deliberately not constrained: rows written by
other systems may hold anything, and the tick must skip (and deactivate) a malformed schedule with
a clear message rather than fail on it. ``run_time`` (local time of day) and ``anchor_day`` (day
of month for ``monthly``) are what a schedule keeps from slot to slot, so a DST-shifted or
month-end-clamped slot does not drift; when NULL they are taken from ``next_run_at`` and stored at
the first advance.
"""

import sqlalchemy as sa

from forecast_pipeline.app_db.metadata import app_metadata

RUN_STATUSES = ("queued", "running", "succeeded", "skipped_limit", "failed")
GENERATION_STATUSES = ("running", "succeeded", "skipped_limit", "failed")

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

plans = sa.Table(
    "plans",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("monthly_report_limit", sa.Integer),  # NULL: unlimited
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("monthly_report_limit IS NULL OR monthly_report_limit >= 0", name="ck_plans_limit"),
)

accounts = sa.Table(
    "accounts",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("plan_id", sa.Integer, sa.ForeignKey("plans.id")),  # NULL: no plan, unlimited
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    # {"product_ids": [int, ...], "email_to": [address, ...]}: the products the account owns (its
    # reports cover nothing else) and its report recipients
    sa.Column("parameters", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

report_schedules = sa.Table(
    "report_schedules",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("cadence", sa.String(20), nullable=False),  # daily | weekly | biweekly | monthly
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_time", sa.Time),  # local wall-clock time of every slot
    sa.Column("anchor_day", sa.SmallInteger),  # monthly: day of month, clamped to the month's end
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    # optional {"product_ids": [...], "top_products": n, "email_to": [...]}: a subset of the
    # account's products, and recipients instead of the account's
    sa.Column("parameters", sa.JSON),
    sa.Column("last_error", sa.Text),  # why the tick deactivated it
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("account_id", "name", name="uq_report_schedules_account_name"),
    sa.Index("ix_report_schedules_due", "next_run_at", postgresql_where=sa.text("active")),
)

schedule_runs = sa.Table(
    "schedule_runs",
    app_metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("schedule_id", sa.Integer, sa.ForeignKey("report_schedules.id", ondelete="CASCADE"), nullable=False),
    sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
    sa.Column("missed_slots", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(20), nullable=False, server_default="queued"),
    sa.Column("run_key", sa.String(200), nullable=False),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_schedule_runs_slot"),
    sa.CheckConstraint(f"status IN {RUN_STATUSES}", name="ck_schedule_runs_status"),
    sa.Index("ix_schedule_runs_queued", "created_at", postgresql_where=sa.text("status = 'queued'")),
)

report_generations = sa.Table(
    "report_generations",
    app_metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("schedule_run_id", sa.BigInteger, sa.ForeignKey("schedule_runs.id", ondelete="SET NULL")),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("output_location", sa.Text),  # the HTML file
    sa.Column("csv_location", sa.Text),
    sa.Column("as_of_date", sa.Date),  # forecasts the report was built from
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("schedule_run_id", name="uq_report_generations_run"),
    sa.CheckConstraint(f"status IN {GENERATION_STATUSES}", name="ck_report_generations_status"),
    sa.Index("ix_report_generations_account_month", "account_id", "created_at"),
)

REPORT_TABLES = ("plans", "accounts", "report_schedules", "schedule_runs", "report_generations")
TABLES = (plans, accounts, report_schedules, schedule_runs, report_generations)


def missing_tables(engine: sa.Engine) -> list[str]:
    """The report tables that do not exist yet (``forecast-pipeline reports init`` creates them)."""
    existing = set(sa.inspect(engine).get_table_names())
    return [t for t in REPORT_TABLES if t not in existing]
