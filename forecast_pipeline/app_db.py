"""The application database: the tables forecast_pipeline owns (job queue, report schedules,
alerts, stored predictions), apart from both the order history and Dagster's own storage.

``APP_DATABASE_URL`` (default: ``DATABASE_URL``). The job queue and the schedule tick claim rows
with ``FOR UPDATE SKIP LOCKED`` and therefore need PostgreSQL; the rest also runs on SQLite.
"""

import importlib

import sqlalchemy as sa
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from forecast_pipeline.settings import normalize_database_url, redact_url

app_metadata = sa.MetaData()
"""Every application table registers here."""

APP_SCHEMA_MODULES = (
    "forecast_pipeline.jobs_schema",
    "forecast_pipeline.alerts.schema",
    "forecast_pipeline.reports.schema",
)
"""Modules that define tables on ``app_metadata``; imported before creating the schema."""


_schema_created_for: set[str] = set()


class AppDatabase(ConfigurableResource):
    """Engine for the application tables."""

    url: str

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(normalize_database_url(self.url), pool_pre_ping=True)
        return self._engine

    @property
    def is_postgres(self) -> bool:
        return self.engine().dialect.name == "postgresql"

    def locking_engine(self) -> sa.Engine | None:
        """The engine with every application table in place (created once per process), or None
        when the database is not PostgreSQL: the job queue and the schedule tick claim rows with
        ``FOR UPDATE SKIP LOCKED``."""
        if not self.is_postgres:
            return None
        engine = self.engine()
        if self.url not in _schema_created_for:
            create_app_schema(engine)
            _schema_created_for.add(self.url)
        return engine

    def redacted_url(self) -> str:
        return redact_url(normalize_database_url(self.url))

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()


def create_app_schema(engine: sa.Engine) -> None:
    """Create every application table and index that is missing (safe to repeat).

    Indexes are checked one by one too: a table that already existed (e.g. a legacy
    ``alert_events``) still gets the unique indexes the code relies on. A module's
    ``upgrade_schema(engine)``, if it has one, then adds what ``create_all`` cannot to existing tables."""
    modules = [importlib.import_module(module) for module in APP_SCHEMA_MODULES]
    app_metadata.create_all(engine, checkfirst=True)
    for module in modules:
        upgrade = getattr(module, "upgrade_schema", None)
        if upgrade is not None:
            upgrade(engine)
    for table in app_metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)


def missing_app_tables(engine: sa.Engine) -> list[str]:
    """The application tables not in the database (``forecast-pipeline init-db`` creates them)."""
    for module in APP_SCHEMA_MODULES:
        importlib.import_module(module)
    existing = set(sa.inspect(engine).get_table_names())
    return [name for name in app_metadata.tables if name not in existing]
