"""Dagster resources: the order database, Redis, and the forecast parameters.

:func:`forecast_pipeline.defs.resources.build_resources` builds them from the validated settings.
"""

import datetime as dt
from typing import Any

import redis
import sqlalchemy as sa
from dagster import ConfigurableResource, Failure, InitResourceContext
from pydantic import PrivateAttr, SecretStr

from forecast_pipeline.app_db.schema import create_app_schema
from forecast_pipeline.settings import normalize_database_url, redact_url, reveal
from forecast_pipeline.source.order_history import HistoryWindow


class SourceDatabase(ConfigurableResource):
    """The order history, read through SQLAlchemy (any URL; SQLite by default)."""

    url: str
    source_query: str | None = None

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def redacted_url(self) -> str:
        return redact_url(normalize_database_url(self.url))


def make_engine(url: str | SecretStr) -> sa.Engine:
    """An engine for the source database (plain postgresql:// URLs use psycopg2)."""
    return sa.create_engine(normalize_database_url(url), pool_pre_ping=True)


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


class RedisStore(ConfigurableResource):
    """The Redis that serves forecasts. Pinged when a step starts, so an unreachable Redis fails
    the run before any forecasting work, with the URL (password hidden) in the error."""

    url: str
    password: str | None = None
    key_prefix: str = "forecast"

    _client: redis.Redis | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._client = connect_redis(self.url, self.password)

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect_redis(self.url, self.password)
        return self._client

    def key(self, *parts: Any) -> str:
        return ":".join([self.key_prefix, *(str(p) for p in parts)])

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()


def connect_redis(url: str | SecretStr, password: str | SecretStr | None = None) -> redis.Redis:
    """A connected client; raises :class:`dagster.Failure` naming the (redacted) URL if Redis
    does not answer a PING within a few seconds."""
    url, password = reveal(url), reveal(password)
    extra = {"password": password} if password else {}
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, decode_responses=True, **extra)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise Failure(
            description=f"Redis at {redact_url(url)} is unreachable: {exc}",
            allow_retries=True,
        ) from exc
    return client


class ForecastParameters(ConfigurableResource):
    """What to forecast and how: eligibility thresholds, horizon, parallelism, failure limit."""

    history_start: str = "2019-01-01"
    min_customers: int = 2
    min_orders: int = 3
    forecast_weeks: int = 12
    workers: int = 10
    max_failure_rate: float = 0.05
    cache_ttl: int = 604800
    history_ttl: int = 7776000

    def window(self, as_of: dt.date) -> HistoryWindow:
        return HistoryWindow(
            as_of=as_of,
            history_start=dt.date.fromisoformat(self.history_start),
            min_customers=self.min_customers,
            min_orders=self.min_orders,
        )
