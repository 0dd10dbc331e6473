"""IO managers that keep every asset's value in Redis.

Redis is the only store between steps, so a run needs no shared filesystem: the same code works
in one process, with one process per step, and with one Kubernetes pod per step.
"""

import datetime as dt
import json
import time

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from forecast_pipeline.cache import forecast_cache
from forecast_pipeline.forecasting.batch import ForecastRun
from forecast_pipeline.resources import RedisStore, redis_failures


class RedisForecastIOManager(ConfigurableIOManager):
    """Writes each as-of date's :class:`ForecastRun` to the keys the forecast API reads (see
    :mod:`forecast_pipeline.cache.forecast_cache`), then that run's metadata; loads them back as
    ``{as_of_date: {product_id: forecast}}``."""

    redis_store: ResourceDependency[RedisStore]
    cache_ttl: int = 604800
    history_ttl: int = 7776000

    def handle_output(self, context: OutputContext, obj: dict[str, ForecastRun]) -> None:
        for as_of in context.asset_partition_keys:
            with redis_failures(self.redis_store.url, f"caching the forecasts of {as_of}"):
                self._write(context, as_of, obj[as_of])

    def _write(self, context: OutputContext, as_of: str, obj: ForecastRun) -> None:
        client, prefix = self.redis_store.client(), self.redis_store.key_prefix
        started = time.perf_counter()
        full_run = obj.requested_products is None
        written = forecast_cache.write_forecasts(
            client,
            prefix,
            as_of,
            obj.payloads,
            self.cache_ttl,
            self.history_ttl,
            replace_history=full_run,
            drop_products=obj.requested_products or (),
            on_wait=context.log.info,
        )
        write_seconds = time.perf_counter() - started
        obj.timings["write_seconds"] = write_seconds
        metadata = obj.redis_metadata()
        last_run_updated = False
        if full_run:
            last_run_updated = forecast_cache.write_run_metadata(
                client, prefix, metadata, self.cache_ttl, self.history_ttl
            )
        kept, removed = written["latest_kept_newer"], written["latest_removed"]
        context.log.info(
            f"Cached {len(obj.payloads)} forecasts for {as_of} in {write_seconds:.2f}s"
            + (f"; {kept} products keep their newer forecast:{{id}} (a later as-of date is cached)" if kept else "")
            + (f"; removed {removed} forecast:{{id}} of products no longer forecast for {as_of}" if removed else "")
        )
        # per date: in a range run each partition's materialization gets its own write figures
        context.step_context.add_asset_metadata(
            {
                "redis_history_key": forecast_cache.history_key(prefix, as_of),
                "latest_keys_written": written["latest_written"],
                "latest_keys_kept_newer": written["latest_kept_newer"],
                "latest_keys_removed": removed,
                "last_run_updated": last_run_updated,
                "write_seconds": round(write_seconds, 3),
            },
            asset_key=context.asset_key,
            partition_key=as_of,
        )

    def load_input(self, context: InputContext) -> dict[str, dict[int, dict]]:
        client, prefix = self.redis_store.client(), self.redis_store.key_prefix
        with redis_failures(self.redis_store.url, "reading the cached forecasts back"):
            return {key: forecast_cache.read_forecasts_for(client, prefix, key) for key in context.asset_partition_keys}


class RedisTableIOManager(ConfigurableIOManager):
    """Stores small DataFrames (the eligible products), one JSON document per as-of date."""

    redis_store: ResourceDependency[RedisStore]
    history_ttl: int = 7776000

    def handle_output(self, context: OutputContext, obj: dict[str, pd.DataFrame]) -> None:
        with redis_failures(self.redis_store.url, "storing the eligible products"):
            self._write(context, obj)

    def _write(self, context: OutputContext, obj: dict[str, pd.DataFrame]) -> None:
        pipe = self.redis_store.client().pipeline(transaction=False)
        for as_of in context.asset_partition_keys:
            frame = obj[as_of]
            # column by column: a frame's to_numpy() of mixed int/float columns is float64, which
            # is exact for ids only up to 2**53
            doc = {"columns": {c: frame[c].tolist() for c in frame.columns}, "stored_at": _now()}
            pipe.set(
                forecast_cache.eligible_key(self.redis_store.key_prefix, as_of), json.dumps(doc), ex=self.history_ttl
            )
        pipe.execute()

    def load_input(self, context: InputContext) -> dict[str, pd.DataFrame]:
        with redis_failures(self.redis_store.url, "reading the eligible products"):
            return self._read(context)

    def _read(self, context: InputContext) -> dict[str, pd.DataFrame]:
        tables = {}
        for as_of in context.asset_partition_keys:
            key = forecast_cache.eligible_key(self.redis_store.key_prefix, as_of)
            raw = self.redis_store.client().get(key)
            if raw is None:
                raise FileNotFoundError(
                    f"{key} is not in Redis (expired or never written): materialize eligible_products for {as_of} first"
                )
            doc = json.loads(raw)
            tables[as_of] = pd.DataFrame(doc["columns"])
        return tables


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
