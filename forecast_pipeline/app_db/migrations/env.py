"""Alembic environment of the application tables.

Run by :func:`forecast_pipeline.app_db.schema.upgrade_app_schema` with its own connection, or by the
``alembic`` command (``alembic.ini`` at the repository root) against ``APP_DATABASE_URL``
(default ``DATABASE_URL``). Either way every migration runs in one transaction that first takes
a lock (PostgreSQL's advisory lock, SQLite's write lock), so two processes upgrading at once (the
daemon's sensors and a run) upgrade once: the second waits, then finds the database at head.
"""

import os

import sqlalchemy as sa
from alembic import context

from forecast_pipeline.app_db.schema import VERSION_TABLE, app_metadata, lock
from forecast_pipeline.settings import normalize_database_url

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=app_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    )
    with context.begin_transaction():
        lock(connection)
        context.run_migrations()


def _url() -> str:
    url = os.environ.get("APP_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("APP_DATABASE_URL (or DATABASE_URL) must name the application database")
    return normalize_database_url(url)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: the baseline inspects the database")
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        engine = sa.create_engine(_url())
        try:
            with engine.begin() as conn:
                _run(conn)
        finally:
            engine.dispose()
