"""Pipeline health readings: a ``product_forecasts`` materialization's figures become readings of
the ``forecast_pipeline`` source, which the default alerts watch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from forecast_pipeline.alerts import store
from forecast_pipeline.alerts.defaults import (
    ELAPSED_SECONDS,
    FAILURE_RATE,
    LAST_RUN_AGE,
    NO_FORECAST_RATE,
    ensure_defaults,
    ensure_pipeline_source,
)
from forecast_pipeline.app_db.alert_tables import readings


def health_values(figures: Mapping[str, Any], run_elapsed_seconds: float | None) -> dict[str, float]:
    """Readings from the run figures (``total_products``, ``failed``, ``no_forecast``, ``failure_rate``,
    ``compute_seconds``, and the whole run's ``run_total_products`` and ``run_failed``). Elapsed is
    the run's wall time up to the materialization when known, else the compute time. The last-run
    age is 0 when written; the alert computes it from the reading's time at each evaluation."""
    total = int(figures.get("total_products") or 0)
    failed = int(figures.get("failed") or 0)
    no_forecast = int(figures.get("no_forecast") or 0)
    # the rate the quality gate judged: the whole run's (a range run's dates publish together), from
    # the counts (the figures' failure_rate is rounded: 5.0049% read 0.05, not above an alert's 0.05)
    run_total, run_failed = figures.get("run_total_products"), figures.get("run_failed")
    if run_total:
        failure_rate = int(run_failed or 0) / int(run_total)
    elif total:
        failure_rate = failed / total
    else:
        failure_rate = figures.get("failure_rate") or 0.0
    elapsed = run_elapsed_seconds if run_elapsed_seconds is not None else figures.get("compute_seconds")
    return {
        FAILURE_RATE: float(failure_rate),
        ELAPSED_SECONDS: float(elapsed or 0.0),
        NO_FORECAST_RATE: no_forecast / total if total else 0.0,
        LAST_RUN_AGE: 0.0,
    }


def record_pipeline_health(
    conn: sa.Connection, values: Mapping[str, float], finished_at: dt.datetime, metadata: Mapping[str, Any]
) -> int:
    """Write one reading per health metric at ``finished_at`` (seeding the source and default
    alerts if missing). Idempotent: a second call for the same time writes nothing. Returns rows written."""
    ensure_defaults(conn)
    source_id = ensure_pipeline_source(conn)
    finished_at = store.utc(finished_at)
    existing = set(
        conn.execute(
            sa.select(readings.c.metric).where(
                readings.c.device_id == source_id,
                readings.c.timestamp == finished_at,
                readings.c.metric.in_(list(values)),
            )
        ).scalars()
    )
    todo = {metric: value for metric, value in values.items() if metric not in existing}
    return store.add_readings(conn, source_id, todo, finished_at, metadata)
