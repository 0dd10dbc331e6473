"""IO managers that keep every asset's value in Redis.

Redis is the only store between steps, so a run needs no shared filesystem: the same code works
in one process, with one process per step, and with one Kubernetes pod per step.
"""

import datetime as dt
import json
import time

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from forecast_pipeline import forecast_cache
from forecast_pipeline.forecasting.batch import ForecastRun
from forecast_pipeline.resources import RedisStore


class RedisForecastIOManager(ConfigurableIOManager):
    """Writes a :class:`ForecastRun` to the keys the forecast API reads (see
    :mod:`forecast_pipeline.forecast_cache`), then the run's metadata; loads an as-of date's
    forecasts back as ``{product_id: forecast}``."""

    redis_store: ResourceDependency[RedisStore]
    cache_ttl: int = 604800
    history_ttl: int = 7776000

    def handle_output(self, context: OutputContext, obj: ForecastRun) -> None:
        client, prefix = self.redis_store.client(), self.redis_store.key_prefix
        as_of = context.partition_key
        started = time.perf_counter()
        full_run = obj.requested_products is None
        written = forecast_cache.write_forecasts(
            client, prefix, as_of, obj.payloads, self.cache_ttl, self.history_ttl, replace_history=full_run
        )
        write_seconds = time.perf_counter() - started
        obj.timings["write_seconds"] = write_seconds
        metadata = obj.redis_metadata()
        last_run_updated = False
        if full_run:
            last_run_updated = forecast_cache.write_run_metadata(
                client, prefix, metadata, self.cache_ttl, self.history_ttl
            )
        context.log.info(
            f"Cached {len(obj.payloads)} forecasts for {as_of} in {write_seconds:.2f}s "
            f"({written['latest_kept_newer']} latest keys kept: a newer as-of date is cached)"
        )
        context.add_output_metadata(
            {
                "redis_history_key": forecast_cache.history_key(prefix, as_of),
                "latest_keys_written": written["latest_written"],
                "latest_keys_kept_newer": written["latest_kept_newer"],
                "last_run_updated": last_run_updated,
                "write_seconds": round(write_seconds, 3),
            }
        )

    def load_input(self, context: InputContext) -> dict[int, dict]:
        return forecast_cache.read_forecasts_for(
            self.redis_store.client(), self.redis_store.key_prefix, context.partition_key
        )


class RedisTableIOManager(ConfigurableIOManager):
    """Stores a small DataFrame (the eligible products) as JSON records for one as-of date."""

    redis_store: ResourceDependency[RedisStore]
    history_ttl: int = 7776000

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        key = forecast_cache.eligible_key(self.redis_store.key_prefix, context.partition_key)
        doc = json.dumps({"columns": list(obj.columns), "rows": obj.to_numpy().tolist(), "stored_at": _now()})
        self.redis_store.client().set(key, doc, ex=self.history_ttl)
        context.add_output_metadata({"redis_key": key})

    def load_input(self, context: InputContext) -> pd.DataFrame:
        key = forecast_cache.eligible_key(self.redis_store.key_prefix, context.partition_key)
        raw = self.redis_store.client().get(key)
        if raw is None:
            raise FileNotFoundError(
                f"{key} is not in Redis (expired or never written): materialize eligible_products "
                f"for {context.partition_key} first"
            )
        doc = json.loads(raw)
        return pd.DataFrame(doc["rows"], columns=doc["columns"])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
