"""Tables of the forecast job queue and the stored predictions (application database).

Other systems ask for forecasts by inserting a ``forecast_jobs`` row (see
:func:`forecast_pipeline.forecast_queue.job_queue.enqueue` or the SQL in the README); Dagster sensors claim, run
and close them. Every state change of a job also lands in ``forecast_job_audit`` (on PostgreSQL a
trigger writes the ``queued`` entry, so rows inserted by plain SQL have one too).
"""

import sqlalchemy as sa

from forecast_pipeline.app_db.metadata import app_metadata

# queued -> claimed (a run was requested; it may wait in Dagster's run queue) -> running (the
# run's process started) -> succeeded | failed | cancelled, or back to queued for a retry
JOB_STATUSES = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
# a claimed or running job owns its attempt's Dagster run and its concurrency key
ACTIVE_STATUSES = ("claimed", "running")
# The only job type the queue sensor runs; rows of other types are left for their own consumers.
JOB_TYPE = "forecast"

forecast_jobs = sa.Table(
    "forecast_jobs",
    app_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_type", sa.String(40), nullable=False, server_default=JOB_TYPE),
    # {"as_of_date": "YYYY-MM-DD"} or {"from": ..., "to": ...}; optional "product_ids": [int, ...]
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("concurrency_key", sa.String(200)),
    # optional: enqueueing work under a key that already has a job returns that job instead
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("run_key", sa.String(200)),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),  # this attempt's run was requested
    sa.Column("started_at", sa.DateTime(timezone=True)),  # this attempt's run process started
    # the run process's last beat; NULL again once the process has exited
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("cancel_requested_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("rows_written", sa.Integer),
    sa.CheckConstraint(f"status IN {JOB_STATUSES}", name="ck_forecast_jobs_status"),
    sa.CheckConstraint("max_attempts >= 1", name="ck_forecast_jobs_max_attempts"),
    sa.Index("ix_forecast_jobs_due", "status", sa.text("priority DESC"), "created_at"),
    # two jobs sharing a concurrency key are never active at once: the database enforces it
    sa.Index(
        "ux_forecast_jobs_active_key",
        "concurrency_key",
        unique=True,
        postgresql_where=sa.text(f"status IN {ACTIVE_STATUSES} AND concurrency_key IS NOT NULL"),
        sqlite_where=sa.text(f"status IN {ACTIVE_STATUSES} AND concurrency_key IS NOT NULL"),
    ),
    sa.Index(
        "ux_forecast_jobs_idempotency_key",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    ),
)

forecast_job_audit = sa.Table(
    "forecast_job_audit",
    app_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("detail", sa.JSON),
)

forecast_predictions = sa.Table(
    "forecast_predictions",
    app_metadata,
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


_UPGRADE_LOCK = 7_412_001  # pg_advisory_xact_lock id: one process upgrades at a time

_QUEUED_AUDIT_TRIGGER = """
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


def upgrade_schema(engine: sa.Engine) -> None:
    """Bring a ``forecast_jobs`` table made by an earlier version up to date (PostgreSQL; safe to
    repeat): new columns, the ``claimed`` status, the index over claimed and running jobs, and
    the trigger that audits every insert."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _UPGRADE_LOCK})
        for column, kind in (
            ("idempotency_key", "VARCHAR(200)"),
            ("claimed_at", "TIMESTAMP WITH TIME ZONE"),
            ("cancel_requested_at", "TIMESTAMP WITH TIME ZONE"),
        ):
            conn.execute(sa.text(f"ALTER TABLE forecast_jobs ADD COLUMN IF NOT EXISTS {column} {kind}"))
        check = conn.execute(
            sa.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_forecast_jobs_status'")
        ).scalar()
        if check is None or "claimed" not in check:
            conn.execute(sa.text("ALTER TABLE forecast_jobs DROP CONSTRAINT IF EXISTS ck_forecast_jobs_status"))
            check = f"CHECK (status IN {JOB_STATUSES})"
            conn.execute(sa.text(f"ALTER TABLE forecast_jobs ADD CONSTRAINT ck_forecast_jobs_status {check}"))
        conn.execute(sa.text("DROP INDEX IF EXISTS ux_forecast_jobs_running_key"))  # covered running jobs only
        has_trigger = conn.execute(
            sa.text("SELECT 1 FROM pg_trigger WHERE tgname = 'forecast_jobs_queued_audit'")
        ).first()
        if not has_trigger:
            conn.execute(sa.text(_QUEUED_AUDIT_TRIGGER))
