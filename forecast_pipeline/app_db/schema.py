"""Create and upgrade the application tables."""

import sqlalchemy as sa

from forecast_pipeline.app_db import alert_tables, queue_tables, report_tables
from forecast_pipeline.app_db.metadata import app_metadata

TABLE_MODULES = (queue_tables, alert_tables, report_tables)


def create_app_schema(engine: sa.Engine) -> None:
    """Create every application table and index that is missing (safe to repeat).

    Indexes are checked one by one too: a table that already existed (e.g. a legacy
    ``alert_events``) still gets the unique indexes the code relies on. A module's
    ``upgrade_schema(engine)``, if it has one, then adds what ``create_all`` cannot to existing tables."""
    app_metadata.create_all(engine, checkfirst=True)
    for module in TABLE_MODULES:
        upgrade = getattr(module, "upgrade_schema", None)
        if upgrade is not None:
            upgrade(engine)
    for table in app_metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)


def missing_app_tables(engine: sa.Engine) -> list[str]:
    """The application tables not in the database (``forecast-pipeline init-db`` creates them)."""
    existing = set(sa.inspect(engine).get_table_names())
    return [name for name in app_metadata.tables if name not in existing]
