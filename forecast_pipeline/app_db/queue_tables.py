"""Tables of the forecast request queue and the stored predictions (application database).

Other systems ask for forecasts by inserting a ``forecast_requests`` row (see
:func:`forecast_pipeline.forecast_queue.request_queue.enqueue` or the SQL in the README); Dagster sensors claim, run
and close them. Every state change of a request also lands in ``forecast_request_audit`` (on PostgreSQL a
trigger writes the ``queued`` entry, so rows inserted by plain SQL have one too; the migrations
create it).
"""

import sqlalchemy as sa

from forecast_pipeline.app_db.metadata import app_metadata

# queued -> claimed (a run was requested; it may wait in Dagster's run queue) -> running (the
# run's process started) -> succeeded | failed | cancelled, or back to queued for a retry
REQUEST_STATUSES = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
# a claimed or running request owns its attempt's Dagster run and its concurrency key
ACTIVE_STATUSES = ("claimed", "running")
# The only request type the queue sensor runs; rows of other types are left for their own consumers.
REQUEST_TYPE = "forecast"

forecast_requests = sa.Table(
    "forecast_requests",
    app_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_type", sa.String(40), nullable=False, server_default=REQUEST_TYPE),
    # {"as_of_date": "YYYY-MM-DD"} or {"from": ..., "to": ...}; optional "product_ids": [int, ...]
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("concurrency_key", sa.String(200)),
    # optional: enqueueing work under a key that already has a request returns that request instead
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
    sa.CheckConstraint(f"status IN {REQUEST_STATUSES}", name="ck_forecast_requests_status"),
    sa.CheckConstraint("max_attempts >= 1", name="ck_forecast_requests_max_attempts"),
    sa.Index("ix_forecast_requests_due", "status", sa.text("priority DESC"), "created_at"),
    # two requests sharing a concurrency key are never active at once: the database enforces it
    sa.Index(
        "ux_forecast_requests_active_key",
        "concurrency_key",
        unique=True,
        postgresql_where=sa.text(f"status IN {ACTIVE_STATUSES} AND concurrency_key IS NOT NULL"),
        sqlite_where=sa.text(f"status IN {ACTIVE_STATUSES} AND concurrency_key IS NOT NULL"),
    ),
    sa.Index(
        "ux_forecast_requests_idempotency_key",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    ),
)

forecast_request_audit = sa.Table(
    "forecast_request_audit",
    app_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.BigInteger, nullable=False, index=True),
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

QUEUED_AUDIT_TRIGGER = """
CREATE OR REPLACE FUNCTION forecast_requests_audit_queued() RETURNS trigger AS $$
BEGIN
  INSERT INTO forecast_request_audit (request_id, at, event, detail)
  VALUES (NEW.id, now(), 'queued', json_build_object('parameters', NEW.parameters, 'priority', NEW.priority));
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS forecast_requests_queued_audit ON forecast_requests;
CREATE TRIGGER forecast_requests_queued_audit AFTER INSERT ON forecast_requests
  FOR EACH ROW EXECUTE FUNCTION forecast_requests_audit_queued();
"""
"""The audit trigger as of head (the migrations that create or change it hold their own copies)."""

sa.event.listen(forecast_requests, "after_create", sa.DDL(QUEUED_AUDIT_TRIGGER).execute_if(dialect="postgresql"))
