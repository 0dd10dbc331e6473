"""Baseline: the application tables as the last release before migrations made them.

A database without a version table is either empty or was made by that release's
``create_app_schema`` (``create_all``, then each area's ``upgrade_schema``), possibly from an
older release or around the legacy alert worker's tables. So this revision creates each missing
table and brings each existing one up to the baseline in place, keeping every row: missing
columns and indexes, the ``claimed`` queue status, the queue's audit trigger and the alerts'
finite-threshold constraint (PostgreSQL; SQLite cannot add a constraint to an existing table).

The tables are written out here, not imported: later revisions change the live definitions,
the baseline must not move with them.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
JOB_STATUSES = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("claimed", "running")
FINITE_THRESHOLD = "threshold_value >= -1.7976931348623157e308 AND threshold_value <= 1.7976931348623157e308"
RUN_STATUSES = ("queued", "running", "succeeded", "skipped_limit", "failed")
GENERATION_STATUSES = ("running", "succeeded", "skipped_limit", "failed")


def _partial(condition: str) -> dict:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def baseline_metadata() -> sa.MetaData:
    """The baseline's tables on a metadata of their own."""
    m = sa.MetaData()
    now = sa.func.now
    sa.Table(
        "forecast_jobs",
        m,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("job_type", sa.String(40), nullable=False, server_default="forecast"),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("concurrency_key", sa.String(200)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("run_key", sa.String(200)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("rows_written", sa.Integer),
        sa.CheckConstraint(f"status IN {JOB_STATUSES}", name="ck_forecast_jobs_status"),
        sa.CheckConstraint("max_attempts >= 1", name="ck_forecast_jobs_max_attempts"),
        sa.Index("ix_forecast_jobs_due", "status", sa.text("priority DESC"), "created_at"),
        sa.Index(
            "ux_forecast_jobs_active_key",
            "concurrency_key",
            unique=True,
            **_partial(f"status IN {ACTIVE_STATUSES} AND concurrency_key IS NOT NULL"),
        ),
        sa.Index(
            "ux_forecast_jobs_idempotency_key",
            "idempotency_key",
            unique=True,
            **_partial("idempotency_key IS NOT NULL"),
        ),
    )
    sa.Table(
        "forecast_job_audit",
        m,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.BigInteger, nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("detail", sa.JSON),
    )
    sa.Table(
        "forecast_predictions",
        m,
        sa.Column("as_of_date", sa.Date, primary_key=True),
        sa.Column("product_id", sa.BigInteger, primary_key=True),
        sa.Column("week_start", sa.Date, primary_key=True),
        sa.Column("week_end", sa.Date, nullable=False),
        sa.Column("predicted_quantity", sa.Float, nullable=False),
        sa.Column("confidence_lower", sa.Float, nullable=False),
        sa.Column("confidence_upper", sa.Float, nullable=False),
        sa.Column("active_customers", sa.Integer, nullable=False),
        sa.Column("model_type", sa.String(40)),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "devices",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("kind", sa.String(50), nullable=False, server_default="sensor"),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("poll_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
    )
    sa.Table(
        "readings",
        m,
        sa.Column("id", _ID, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("metric", sa.String(50), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("json_value", sa.JSON),
        sa.Column("metadata", sa.JSON),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Index("ix_readings_latest", "device_id", "metric", "timestamp"),
    )
    sa.Table(
        "alerts",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), unique=True),
        sa.Column("device_id", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(50), nullable=False),
        sa.Column("operator", sa.String(10), nullable=False),
        sa.Column("threshold_value", sa.Float, nullable=False),
        sa.Column("is_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("value_path", sa.String(255)),
        sa.Column("description", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.CheckConstraint("operator IN ('>', '<', '==', '>=', '<=', '!=')", name="ck_alerts_operator"),
        sa.CheckConstraint(FINITE_THRESHOLD, name="ck_alerts_threshold_finite"),
        sa.Index("ix_alerts_enabled", "is_enabled"),
    )
    sa.Table(
        "alert_events",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("triggered_at", sa.DateTime(timezone=True), server_default=now()),
        sa.Column("current_value", sa.Float),
        sa.Column("threshold_value", sa.Float, nullable=False),
        sa.Column("operator", sa.String(10), nullable=False),
        sa.Column("metric", sa.String(50), nullable=False),
        sa.Column("is_resolved", sa.Boolean, server_default=sa.false()),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolution_value", sa.Float),
        sa.Column("metadata", sa.JSON),
        sa.Index("uq_alert_events_open", "alert_id", unique=True, **_partial("NOT is_resolved")),
        sa.Index("ix_alert_events_alert", "alert_id"),
    )
    sa.Table(
        "alert_notifications",
        m,
        sa.Column("id", _ID, primary_key=True),
        sa.Column("event_id", sa.Integer, sa.ForeignKey("alert_events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("rejected_at", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("last_status", sa.Integer),
        sa.Column("refused_since", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("event_id", "kind", name="uq_alert_notifications_event_kind"),
        sa.Index("ix_alert_notifications_pending", "id", **_partial("sent_at IS NULL")),
    )
    sa.Table(
        "plans",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("monthly_report_limit", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.CheckConstraint("monthly_report_limit IS NULL OR monthly_report_limit >= 0", name="ck_plans_limit"),
    )
    sa.Table(
        "accounts",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("plan_id", sa.Integer, sa.ForeignKey("plans.id")),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("parameters", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
    )
    sa.Table(
        "report_schedules",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cadence", sa.String(20), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_time", sa.Time),
        sa.Column("anchor_day", sa.SmallInteger),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("parameters", sa.JSON),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.UniqueConstraint("account_id", "name", name="uq_report_schedules_account_name"),
        sa.Index("ix_report_schedules_due", "next_run_at", postgresql_where=sa.text("active")),
    )
    sa.Table(
        "schedule_runs",
        m,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("schedule_id", sa.Integer, sa.ForeignKey("report_schedules.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("missed_slots", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(20), nullable=False, server_default="queued"),
        sa.Column("run_key", sa.String(200), nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_schedule_runs_slot"),
        sa.CheckConstraint(f"status IN {RUN_STATUSES}", name="ck_schedule_runs_status"),
        sa.Index("ix_schedule_runs_queued", "created_at", postgresql_where=sa.text("status = 'queued'")),
    )
    sa.Table(
        "report_generations",
        m,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("schedule_run_id", sa.BigInteger, sa.ForeignKey("schedule_runs.id", ondelete="SET NULL")),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("output_location", sa.Text),
        sa.Column("csv_location", sa.Text),
        sa.Column("as_of_date", sa.Date),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("schedule_run_id", name="uq_report_generations_run"),
        sa.CheckConstraint(f"status IN {GENERATION_STATUSES}", name="ck_report_generations_status"),
        sa.Index("ix_report_generations_account_month", "account_id", "created_at"),
    )
    return m


QUEUED_AUDIT_TRIGGER = """
CREATE OR REPLACE FUNCTION forecast_jobs_audit_queued() RETURNS trigger AS $$
BEGIN
  INSERT INTO forecast_job_audit (job_id, at, event, detail)
  VALUES (NEW.id, now(), 'queued', json_build_object('parameters', NEW.parameters, 'priority', NEW.priority));
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS forecast_jobs_queued_audit ON forecast_jobs;
CREATE TRIGGER forecast_jobs_queued_audit AFTER INSERT ON forecast_jobs
  FOR EACH ROW EXECUTE FUNCTION forecast_jobs_audit_queued();
"""


def upgrade() -> None:
    conn = op.get_bind()
    existing = set(sa.inspect(conn).get_table_names())
    for table in baseline_metadata().sorted_tables:
        if table.name not in existing:
            table.create(conn)
            continue
        _add_missing_columns(conn, table)
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    if conn.dialect.name != "postgresql":
        return
    if "forecast_jobs" in existing:
        _upgrade_forecast_jobs(conn)
    conn.exec_driver_sql(QUEUED_AUDIT_TRIGGER)
    if "alerts" in existing:
        _add_threshold_constraint(conn)


def _add_missing_columns(conn: sa.Connection, table: sa.Table) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for column in table.columns:
        if column.name not in present:
            spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {spec}")


def _upgrade_forecast_jobs(conn: sa.Connection) -> None:
    """The ``claimed`` status, and no index over running jobs only (the active-key index covers it)."""
    check = conn.execute(
        sa.text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ck_forecast_jobs_status' AND conrelid = 'forecast_jobs'::regclass"
        )
    ).scalar()
    if check is None or "claimed" not in check:
        conn.exec_driver_sql("ALTER TABLE forecast_jobs DROP CONSTRAINT IF EXISTS ck_forecast_jobs_status")
        conn.exec_driver_sql(
            f"ALTER TABLE forecast_jobs ADD CONSTRAINT ck_forecast_jobs_status CHECK (status IN {JOB_STATUSES})"
        )
    conn.exec_driver_sql("DROP INDEX IF EXISTS ux_forecast_jobs_running_key")


def _add_threshold_constraint(conn: sa.Connection) -> None:
    """Added ``NOT VALID`` (new and updated rows are checked at once), then validated; if old rows
    hold a NaN or infinite threshold it stays unvalidated and the evaluator reports those alerts
    as errors until they are fixed."""
    name = "ck_alerts_threshold_finite"
    present = conn.execute(
        sa.text("SELECT 1 FROM pg_constraint WHERE conname = :name AND conrelid = 'alerts'::regclass"), {"name": name}
    ).first()
    if present:
        return
    conn.exec_driver_sql(f"ALTER TABLE alerts ADD CONSTRAINT {name} CHECK ({FINITE_THRESHOLD}) NOT VALID")
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(f"ALTER TABLE alerts VALIDATE CONSTRAINT {name}")
    except sa.exc.IntegrityError:
        log.warning(
            "alerts holds NaN or infinite thresholds: %s checks new rows only until they are fixed "
            "(those alerts are reported as errors)",
            name,
        )


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: drop the tables by hand if that is really meant")
