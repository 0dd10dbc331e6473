"""The application database: the tables forecast_pipeline owns (forecast queue, report schedules,
alerts, stored predictions), apart from both the order history and Dagster's own storage.

``APP_DATABASE_URL`` (default: ``DATABASE_URL``). The forecast queue and the schedule tick claim
rows with ``FOR UPDATE SKIP LOCKED`` and therefore need PostgreSQL; the rest also runs on SQLite.
Every table registers on :data:`forecast_pipeline.app_db.metadata.app_metadata`; one module per
area defines its tables, :mod:`forecast_pipeline.app_db.schema` creates and upgrades them.
"""
