"""Sensor defaults for features that need PostgreSQL (see :mod:`forecast_pipeline.app_db.postgres_only`)."""

from dagster import DefaultSensorStatus

from forecast_pipeline.app_db.postgres_only import postgres_only_reason


def postgres_only_sensor(url: str, feature: str, description: str) -> dict:
    """``default_status`` and ``description`` for a sensor that needs PostgreSQL: on by default
    there; elsewhere (the embedded SQLite default) off, with the reason first in its description,
    so the UI says why instead of the sensor skipping every tick forever."""
    reason = postgres_only_reason(url, feature)
    if reason is None:
        return {"default_status": DefaultSensorStatus.RUNNING, "description": description}
    return {"default_status": DefaultSensorStatus.STOPPED, "description": f"Off by default: {reason}. {description}"}
