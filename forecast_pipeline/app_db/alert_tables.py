"""Alert tables, named as the legacy alert worker's: ``devices``, ``readings``, ``alerts``,
``alert_events`` (the legacy DDL, column for column), plus ``alert_notifications``, the webhook
outbox.

Guarantees kept by the database rather than by the evaluator:

- at most one unresolved event per alert: the partial unique index ``uq_alert_events_open``
  (``WHERE NOT is_resolved``; PostgreSQL and SQLite both support it). Evaluators insert with
  ``ON CONFLICT DO NOTHING``, so two of them racing create exactly one event;
- a notification is queued in the same transaction as the event it reports, whatever the
  configuration, so an event is never stored without its notification, nor a notification lost
  when the webhook is down (``sent_at`` stays NULL until the webhook accepts it);
- a threshold is a finite number (``ck_alerts_threshold_finite``): a NaN would make every
  comparison false and the alert silent for ever.

The migrations (:mod:`forecast_pipeline.app_db.schema`) create these tables, and bring tables
of an older release or of the legacy worker up to date in place.
"""

import sqlalchemy as sa

from forecast_pipeline.app_db.metadata import app_metadata

OPERATORS = (">", "<", "==", ">=", "<=", "!=")
LARGEST_DOUBLE = "1.7976931348623157e308"
FINITE_THRESHOLD = f"threshold_value >= -{LARGEST_DOUBLE} AND threshold_value <= {LARGEST_DOUBLE}"
"""False for NaN (PostgreSQL orders NaN above every number; SQLite stores it as NULL, which NOT NULL
refuses) and for +-infinity."""

devices = sa.Table(
    "devices",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("kind", sa.String(50), nullable=False, server_default="sensor"),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    # Polling devices report continuously: a reading older than ALERT_FRESHNESS_SECONDS is stale.
    # Others (e.g. the forecast_pipeline source, one reading set per run) are judged on their latest.
    sa.Column("poll_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

readings = sa.Table(
    "readings",
    app_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    sa.Column("metric", sa.String(50), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("json_value", sa.JSON),
    sa.Column("metadata", sa.JSON),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_readings_latest", "device_id", "metric", "timestamp"),
)

alerts = sa.Table(
    "alerts",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), unique=True),  # optional; the defaults are seeded by name
    # Deliberately no foreign key: an alert whose device was removed is reported as an error
    # ("source 7 does not exist") instead of blocking the device's removal.
    sa.Column("device_id", sa.Integer, nullable=False),
    sa.Column("metric", sa.String(50), nullable=False),
    sa.Column("operator", sa.String(10), nullable=False),
    sa.Column("threshold_value", sa.Float, nullable=False),
    sa.Column("is_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    # Where the number is: NULL -> `value`; "a.b.0" or "json_value.a.b.0" -> into json_value;
    # "metadata.a" -> into metadata; "$age" -> seconds since the reading was taken.
    sa.Column("value_path", sa.String(255)),
    sa.Column("description", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("operator IN ('>', '<', '==', '>=', '<=', '!=')", name="ck_alerts_operator"),
    sa.CheckConstraint(FINITE_THRESHOLD, name="ck_alerts_threshold_finite"),
    sa.Index("ix_alerts_enabled", "is_enabled"),
)

alert_events = sa.Table(
    "alert_events",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False),
    sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
    sa.Column("triggered_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("current_value", sa.Float),
    sa.Column("threshold_value", sa.Float, nullable=False),
    sa.Column("operator", sa.String(10), nullable=False),
    sa.Column("metric", sa.String(50), nullable=False),
    sa.Column("is_resolved", sa.Boolean, server_default=sa.false()),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolution_value", sa.Float),
    sa.Column("metadata", sa.JSON),
    sa.Index(
        "uq_alert_events_open",
        "alert_id",
        unique=True,
        postgresql_where=sa.text("NOT is_resolved"),
        sqlite_where=sa.text("NOT is_resolved"),
    ),
    sa.Index("ix_alert_events_alert", "alert_id"),  # a notification waits for its alert's earlier ones
)

alert_notifications = sa.Table(
    "alert_notifications",
    app_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("event_id", sa.Integer, sa.ForeignKey("alert_events.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # "triggered" or "resolved"
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    # dead-lettered: an answer a retry cannot change (see notify.py); kept until an operator resends it
    sa.Column("rejected_at", sa.DateTime(timezone=True)),
    # not tried before this: backoff, Retry-After, or the lease of a pass that is sending it
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("last_status", sa.Integer),  # HTTP status of the last answer; NULL: no answer
    # first of a run of refusals a config change can fix (3xx, 401, 403, 404, 407): retried for a grace period
    sa.Column("refused_since", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("event_id", "kind", name="uq_alert_notifications_event_kind"),
    sa.Index(
        "ix_alert_notifications_pending",
        "id",
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    ),
)

ALERT_TABLES = ("devices", "readings", "alerts", "alert_events", "alert_notifications")


def missing_tables(engine: sa.Engine) -> list[str]:
    """The alert tables that do not exist yet (``forecast-pipeline alerts init`` creates them)."""
    existing = set(sa.inspect(engine).get_table_names())
    return [t for t in ALERT_TABLES if t not in existing]
