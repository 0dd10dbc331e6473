"""Create and upgrade the application tables: Alembic migrations in ``app_db/migrations``.

:func:`upgrade_app_schema` brings any application database to head: an empty one, one made by
the releases before migrations (the baseline revision adopts it in place, rows kept), or one a
revision behind. ``forecast-pipeline init-db``, the sensors and the CLI all go through it.
"""

import functools
import time

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from forecast_pipeline.app_db import alert_tables, queue_tables, report_tables
from forecast_pipeline.app_db.metadata import app_metadata

TABLE_MODULES = (queue_tables, alert_tables, report_tables)

VERSION_TABLE = "app_schema_version"
"""Alembic's version table for these tables: not ``alembic_version``, which Dagster's own
PostgreSQL storage uses, in case both share a database."""

UPGRADE_LOCK_ID = 7_412_001
"""``pg_advisory_xact_lock`` id held while migrating (the id the hand-written upgrade took)."""

SCRIPT_LOCATION = "forecast_pipeline.app_db:migrations"  # found in the installed package too


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config for the migrations; with ``connection``, migrations run on it."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    """The database's revision; None before any migration (empty, or made by an older release)."""
    with engine.connect() as conn:
        return _revision(conn)


def _revision(conn: sa.Connection, tables: set[str] | None = None) -> str | None:
    """Read directly, not through Alembic's MigrationContext: a run pays this on every start."""
    if VERSION_TABLE not in (tables if tables is not None else set(sa.inspect(conn).get_table_names())):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade_app_schema(engine: sa.Engine) -> None:
    """Upgrade the application tables to head (safe to repeat; two queries when already there).

    On PostgreSQL the migrations run in one transaction under an advisory lock, so two processes
    upgrading at once migrate once. SQLite has no such lock: a process that loses the race (the
    database is locked, or a table it was about to create appeared) looks again and retries,
    for up to :data:`SQLITE_UPGRADE_WAIT` seconds, so a slow winner on a loaded machine is waited
    for. A table dropped by hand from a database at head is created again from the table modules,
    which describe head exactly (``test_migrations`` compares them)."""
    if engine.dialect.name == "postgresql":
        _upgrade(engine)
        return
    deadline = time.monotonic() + SQLITE_UPGRADE_WAIT
    while True:
        try:
            _upgrade(engine)
            return
        except (sa.exc.OperationalError, sa.exc.IntegrityError) as exc:
            if not _lost_race(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


SQLITE_UPGRADE_WAIT = 60.0
"""Seconds a SQLite upgrade keeps retrying while another process holds the database."""


def _lost_race(exc: sa.exc.DBAPIError) -> bool:
    """Whether another process upgrading at the same time explains the error: the database is
    locked, or a table or the version stamp it was about to write appeared (a missing directory
    or a read-only file fails at once)."""
    if isinstance(exc, sa.exc.IntegrityError):
        return True
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message or "already exists" in message


def _upgrade(engine: sa.Engine) -> None:
    with engine.connect() as conn:  # one catalogue query and one read in the usual case
        tables = set(sa.inspect(conn).get_table_names())
        revision = _revision(conn, tables)
        missing = [name for name in app_metadata.tables if name not in tables]
    if revision != head_revision():
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        missing = missing_app_tables(engine)
    if missing:
        with engine.begin() as conn:
            lock(conn)
            app_metadata.create_all(conn, tables=[app_metadata.tables[name] for name in missing], checkfirst=True)


def lock(conn: sa.Connection) -> None:
    """One process changes the schema at a time, held until the transaction ends: PostgreSQL's
    advisory lock; on SQLite the write lock, taken by beginning the transaction explicitly. The
    driver would otherwise run each CREATE outside any transaction, so a process that loses the
    race could see half of another's migration and re-run it (measured: "views may not be
    indexed"). Called first in its transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": UPGRADE_LOCK_ID})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def missing_app_tables(engine: sa.Engine) -> list[str]:
    """The application tables not in the database (``forecast-pipeline init-db`` creates them)."""
    with engine.connect() as conn:
        return _missing(conn)


def _missing(conn: sa.Connection) -> list[str]:
    existing = set(sa.inspect(conn).get_table_names())
    return [name for name in app_metadata.tables if name not in existing]
