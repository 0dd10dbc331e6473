"""Resources and the executor every area's definitions share, built from the validated settings.

A variable that is set in the environment is passed as ``EnvVar`` so that the UI shows where a
value comes from and never displays a secret; an unset one passes its default. A value the
settings normalise (``FORECAST_KEY_PREFIX``) is passed as validated, so that the runs use the
same value as every other reader.

Loading this module validates every area's variables at once (see
:func:`forecast_pipeline.settings.load_all_settings`, which ``forecast-pipeline`` runs too): a bad
variable stops the code location from loading with a message that names it. Defaults are passed
revealed: a secret only ever reaches a resource through ``EnvVar``, as no secret has a default.
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import EnvVar

from forecast_pipeline.forecast_queue.run_heartbeat import RunHeartbeat
from forecast_pipeline.io_managers import (
    RedisForecastIOManager,
    RedisShardIOManager,
    RedisStepIOManager,
    RedisTableIOManager,
)
from forecast_pipeline.resources import AppDatabase, ForecastParameters, RedisStore, SourceDatabase
from forecast_pipeline.settings import Settings, load_all_settings, reveal


def _env_or(environ: Mapping[str, str], name: str, default: Any, kind: str = "str") -> Any:
    """``EnvVar(name)`` when the variable is set (validated already), else the default value."""
    if environ.get(name, "").strip() == "":
        return default
    if kind == "int":
        return EnvVar.int(name)
    return EnvVar(name)


def build_resources(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every resource and IO manager, keyed by the names assets ask for.

    ``environ`` (default ``os.environ``) decides which values are passed as ``EnvVar``.
    """

    env = os.environ if environ is None else environ

    def pick(name: str, default: Any, kind: str = "str") -> Any:
        return _env_or(env, name, default, kind)

    store = RedisStore(
        url=pick("REDIS_URL", reveal(settings.redis_url)),
        password=pick("REDIS_PASSWORD", reveal(settings.redis_password)),
        # the validated prefix, not EnvVar: the settings trim `forecast:` to `forecast`, which the
        # CLI and the reports read under; the raw variable would write `forecast::{id}`
        key_prefix=settings.key_prefix,
    )
    cache_ttl = pick("FORECAST_CACHE_TTL", settings.cache_ttl, "int")
    history_ttl = pick("FORECAST_HISTORY_TTL", settings.history_ttl, "int")
    app_db = AppDatabase(url=pick("APP_DATABASE_URL", pick("DATABASE_URL", reveal(settings.app_database_url))))
    return {
        "app_db": app_db,
        "run_heartbeat": RunHeartbeat(app_db=app_db, interval_seconds=settings.request_heartbeat_seconds),
        "source_db": SourceDatabase(
            url=pick("DATABASE_URL", reveal(settings.database_url)),
            source_query=pick("FORECAST_SOURCE_QUERY", settings.source_query),
        ),
        "redis_store": store,
        "forecast_params": ForecastParameters(
            history_start=pick("FORECAST_HISTORY_START", settings.history_start.isoformat()),
            min_customers=pick("FORECAST_MIN_CUSTOMERS", settings.min_customers, "int"),
            min_orders=pick("FORECAST_MIN_ORDERS", settings.min_orders, "int"),
            forecast_weeks=pick("FORECAST_WEEKS", settings.forecast_weeks, "int"),
            workers=pick("FORECAST_WORKERS", settings.workers, "int"),
            shard_size=pick("FORECAST_SHARD_SIZE", settings.shard_size, "int"),
            max_failure_rate=settings.max_failure_rate,
            cache_ttl=cache_ttl,
            history_ttl=history_ttl,
            predictions_keep_days=pick("FORECAST_PREDICTIONS_KEEP_DAYS", settings.predictions_keep_days or 0, "int"),
        ),
        "forecast_io_manager": RedisForecastIOManager(redis_store=store, cache_ttl=cache_ttl, history_ttl=history_ttl),
        "table_io_manager": RedisTableIOManager(redis_store=store, history_ttl=history_ttl),
        "forecast_step_io_manager": RedisStepIOManager(redis_store=store),
        "forecast_shard_io_manager": RedisShardIOManager(redis_store=store),
    }


def executor_for(name: str) -> dg.ExecutorDefinition:
    """in_process by default: a run's steps are I/O and one vectorised batch, and a process per
    step costs more than it saves on one machine (see the benchmark). The forecast step still uses
    FORECAST_WORKERS processes. ``k8s`` runs each step in its own pod."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return MULTIPROCESS_EXECUTOR if name == "multiprocess" else dg.in_process_executor


# A step process forked from a server that has built the code location already, instead of a
# new interpreter importing Dagster, pandas and every area for every step (Dagster's default,
# `spawn`): a date of many shards starts one process per shard.
MULTIPROCESS_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["forecast_pipeline.forkserver_preload"]}}}
)


@dg.definitions
def resources() -> dg.Definitions:
    settings = load_all_settings().forecasts
    return dg.Definitions(resources=build_resources(settings), executor=executor_for(settings.executor))
