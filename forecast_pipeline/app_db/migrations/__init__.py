"""Alembic migrations of the application tables (run by :func:`forecast_pipeline.app_db.schema.upgrade_app_schema`)."""
