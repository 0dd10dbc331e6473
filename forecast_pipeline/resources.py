"""Dagster resources: the order database, Redis, and the forecast parameters.

:func:`forecast_pipeline.defs.resources.build_resources` builds them from the validated settings.
"""

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any, NoReturn

import redis
import sqlalchemy as sa
from dagster import ConfigurableResource, Failure, InitResourceContext
from pydantic import Field, PrivateAttr

from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.connections import RedisUnreachable, make_engine, ping_redis, redis_client
from forecast_pipeline.settings import normalize_database_url, redact_url
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


def raise_database_failure(
    exc: sa.exc.SQLAlchemyError, url: str, variable: str, doing: str, holds: str, **metadata: Any
) -> NoReturn:
    """Raise a :class:`dagster.Failure` whose one-line description says what is wrong with the
    database and what to do: it does not exist, does not answer, or lacks a table (``holds``: what
    the right database holds, for the hint). The driver's
    message goes to the metadata, and for these known cases the exception chain is dropped
    (Dagster would print the driver's stack under the line, twice); an unknown error keeps it."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    reason = reason.split("FATAL:", 1)[-1].strip()  # libpq: "connection to server at ... failed: FATAL: ..."
    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    where = redact_url(normalize_database_url(url))
    lowered = reason.lower()
    known = True
    if code == "3D000" or (lowered.startswith("database") and "does not exist" in lowered):
        line = f"{where} does not exist: create it, or point {variable} at the database that holds {holds}"
    elif (
        code in ("42P01", "42703")
        or any(h in lowered for h in ("no such table", "no such column"))
        or ("relation" in lowered and "does not exist" in lowered)
    ):
        line = f"a table or column is missing in {where} ({reason}): " + (
            "create the default tables with `forecast-pipeline init-db` or set FORECAST_SOURCE_QUERY for another schema"
            if variable == "DATABASE_URL"
            else "run `forecast-pipeline init-db`"
        )
    elif isinstance(exc, sa.exc.OperationalError) and any(
        hint in lowered for hint in ("could not connect", "connection refused", "timeout expired", "unable to open")
    ):
        line = f"{where} does not answer ({reason}): is the server running and {variable} right? "
        line += "`forecast-pipeline check` tests it"
    else:
        known = False
        line = f"{where}: {type(exc).__name__}: {reason} (`forecast-pipeline check` tests the database)"
    line = f"{doing.capitalize()} failed: {line}"
    failure = Failure(
        description=line,
        metadata={"database": where, "variable": variable, "error": f"{type(exc).__name__}: {reason}", **metadata},
    )
    if known:
        raise failure from None
    raise failure from exc


_schema_created_for: set[str] = set()


class AppDatabase(ConfigurableResource):
    """Engine for the application tables."""

    url: str

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    @property
    def is_postgres(self) -> bool:
        return self.engine().dialect.name == "postgresql"

    def locking_engine(self) -> sa.Engine | None:
        """The engine with every application table in place (created once per process), or None
        when the database is not PostgreSQL: the request queue and the schedule tick claim rows with
        ``FOR UPDATE SKIP LOCKED``."""
        if not self.is_postgres:
            return None
        engine = self.engine()
        if self.url not in _schema_created_for:
            upgrade_app_schema(engine)
            _schema_created_for.add(self.url)
        return engine

    def redacted_url(self) -> str:
        return redact_url(normalize_database_url(self.url))

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()


class RedisStore(ConfigurableResource):
    """The Redis that serves forecasts. Not contacted when the resource is set up: Dagster would
    report an unreachable Redis as a resource-initialisation failure, its line twice in ~140 lines.
    The run's first step calls :meth:`ensure_reachable` instead, which fails that step in one line
    naming the URL (password hidden), before any work."""

    url: str
    password: str | None = None
    key_prefix: str = "forecast"

    _client: redis.Redis | None = PrivateAttr(default=None)
    _binary: redis.Redis | None = PrivateAttr(default=None)

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis_client(self.url, self.password)
        return self._client

    def ensure_reachable(self) -> None:
        """PING; raises :class:`dagster.Failure` (one line, URL and what to do) if Redis does not answer."""
        try:
            ping_redis(self.client(), self.url)
        except RedisUnreachable as exc:
            raise Failure(
                description=exc.line, metadata={"redis": exc.url, "error": exc.error}, allow_retries=True
            ) from None

    def binary_client(self) -> redis.Redis:
        """A client that returns bytes, for pickled step values."""
        if self._binary is None:
            self._binary = redis_client(self.url, self.password, decode_responses=False)
        return self._binary

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
        if self._binary is not None:
            self._binary.close()


@contextlib.contextmanager
def redis_failures(url: str, doing: str) -> Iterator[None]:
    """Turn Redis going away in the middle of a step into a :class:`dagster.Failure` with one line
    saying so and what to do, instead of redis-py's exception chain (printed twice by Dagster).
    Other Redis errors (out of memory, a publish lease) keep their own messages."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        reason = " ".join(str(exc).split())
        raise Failure(
            description=f"Redis at {redact_url(url)} stopped answering while {doing} ({reason}): "
            "start it or check REDIS_URL, then rerun the partition (a rerun replaces the date's forecasts)",
            metadata={"redis": redact_url(url), "error": f"{type(exc).__name__}: {reason}"},
            allow_retries=True,
        ) from None


class ForecastParameters(ConfigurableResource):
    """What to forecast and how: eligibility thresholds, horizon, parallelism, failure limit."""

    history_start: str = "2019-01-01"
    min_customers: int = 2
    min_orders: int = 3
    forecast_weeks: int = 12
    workers: int = 10
    shard_size: int = 25000
    max_failure_rate: float = 0.05
    cache_ttl: int = 604800
    history_ttl: int = 7776000
    # 0: forecast_predictions keeps every as-of date; bounded here too, as run config can set it
    predictions_keep_days: int = Field(default=0, ge=0, le=36500)

    def window(self, as_of: dt.date) -> HistoryWindow:
        return HistoryWindow(
            as_of=as_of,
            history_start=dt.date.fromisoformat(self.history_start),
            min_customers=self.min_customers,
            min_orders=self.min_orders,
        )
