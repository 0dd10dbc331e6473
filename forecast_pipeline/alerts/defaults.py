"""The ``forecast_pipeline`` source and the legacy worker's three pipeline alerts, seeded
idempotently: existing rows (and any threshold you changed) are left alone. To silence a default
alert, set ``is_enabled = false`` rather than deleting it: seeding recreates a missing one."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.alerts import store
from forecast_pipeline.alerts.evaluate import AGE_PATH
from forecast_pipeline.app_db.alert_tables import alerts

PIPELINE_SOURCE = "forecast_pipeline"
PIPELINE_KIND = "pipeline"

FAILURE_RATE = "failure_rate"
ELAPSED_SECONDS = "elapsed_seconds"
NO_FORECAST_RATE = "no_forecast_rate"
LAST_RUN_AGE = "last_run_age_seconds"


@dataclass(frozen=True)
class DefaultAlert:
    name: str
    metric: str
    operator: str
    threshold_value: float
    value_path: str | None
    description: str


DEFAULT_ALERTS = (
    DefaultAlert(
        "forecast_pipeline: failure rate above 5%",
        FAILURE_RATE,
        ">",
        0.05,
        None,
        "More than 5% of the products in the last forecast run failed.",
    ),
    DefaultAlert(
        "forecast_pipeline: runtime over 20 minutes",
        ELAPSED_SECONDS,
        ">",
        20 * 60,
        None,
        "The last forecast run took more than 20 minutes to produce its forecasts.",
    ),
    DefaultAlert(
        "forecast_pipeline: last run older than 8 days",
        LAST_RUN_AGE,
        ">",
        8 * 86400,
        AGE_PATH,
        "No forecast run has finished for more than 8 days (the age is computed at each evaluation).",
    ),
)


def ensure_pipeline_source(conn: sa.Connection) -> int:
    """The ``forecast_pipeline`` source's id: a non-polling source judged on its latest readings."""
    return store.ensure_source(conn, PIPELINE_SOURCE, kind=PIPELINE_KIND, poll_enabled=False)


def ensure_defaults(conn: sa.Connection) -> list[str]:
    """Create the pipeline source and any missing default alert; return the names created."""
    source_id = ensure_pipeline_source(conn)
    present = set(
        conn.execute(sa.select(alerts.c.name).where(alerts.c.name.in_([d.name for d in DEFAULT_ALERTS]))).scalars()
    )
    created = []
    for default in (d for d in DEFAULT_ALERTS if d.name not in present):
        inserted = conn.execute(
            store._insert(conn, alerts)
            .values(
                name=default.name,
                device_id=source_id,
                metric=default.metric,
                operator=default.operator,
                threshold_value=default.threshold_value,
                value_path=default.value_path,
                description=default.description,
                is_enabled=True,
            )
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(alerts.c.id)
        ).scalar_one_or_none()
        if inserted is not None:
            created.append(default.name)
    return created
