"""IO managers that keep every asset's value in Redis.

Redis is the only store between steps, so a run needs no shared filesystem: the same code works
in one process, with one process per step, and with one Kubernetes pod per step.
"""

import datetime as dt
import json
import pickle
import time

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.forecasting.shards import DatePublish, StagedShard
from forecast_pipeline.resources import RedisStore, redis_failures


class RedisForecastIOManager(ConfigurableIOManager):
    """Publishes each as-of date the run's shards staged (a :class:`DatePublish`) to the keys the
    forecast API reads (see :mod:`forecast_pipeline.cache.forecast_cache`), then that date's run
    figures; loads them back as ``{as_of_date: {product_id: forecast}}``."""

    redis_store: ResourceDependency[RedisStore]
    cache_ttl: int = 604800
    history_ttl: int = 7776000

    def handle_output(self, context: OutputContext, obj: dict[str, DatePublish]) -> None:
        record = context.step_context.instance.get_run_record_by_id(context.run_id)
        started_at = record.start_time if record is not None else None  # as the health sensor times a run
        for as_of in context.asset_partition_keys:
            with redis_failures(self.redis_store.url, f"caching the forecasts of {as_of}"):
                self._write(context, as_of, obj[as_of], started_at)

    def _write(self, context: OutputContext, as_of: str, published: DatePublish, started_at: float | None) -> None:
        client, prefix = self.redis_store.client(), self.redis_store.key_prefix
        obj = published.run
        started = time.perf_counter()
        staged_seconds = obj.timings.get("write_seconds", 0.0)
        full_run = obj.requested_products is None

        def run_figures() -> dict:  # under the date's lease, once its forecasts are published
            obj.timings["write_seconds"] = staged_seconds + time.perf_counter() - started
            return obj.redis_metadata(time.time() - started_at if started_at else None)

        written = forecast_cache.publish_staged(
            client,
            prefix,
            as_of,
            published.run_token,
            published.product_ids,
            self.cache_ttl,
            self.history_ttl,
            replace_history=full_run,
            drop_products=obj.requested_products or (),
            on_wait=context.log.info,
            run_metadata=run_figures if full_run else None,  # a run for some products keeps last_run
        )
        write_seconds = time.perf_counter() - started
        obj.timings["write_seconds"] = staged_seconds + write_seconds
        last_run_updated = bool(written.get("last_run_updated", 0))
        kept, removed = written["latest_kept_newer"], written["latest_removed"]
        context.log.info(
            f"Published {len(published.product_ids)} forecasts for {as_of} in {write_seconds:.2f}s"
            + (f"; {kept} products keep their newer forecast:{{id}} (a later as-of date is cached)" if kept else "")
            + (f"; removed {removed} forecast:{{id}} of products no longer forecast for {as_of}" if removed else "")
        )
        # per date: in a range run each partition's materialization gets its own write figures
        context.step_context.add_asset_metadata(
            {
                "redis_history_key": keys.history_key(prefix, as_of),
                "latest_keys_written": written["latest_written"],
                "latest_keys_kept_newer": written["latest_kept_newer"],
                "latest_keys_removed": removed,
                "last_run_updated": last_run_updated,
                "write_seconds": round(obj.timings["write_seconds"], 3),  # staging (all shards) + publish
                "publish_seconds": round(write_seconds, 3),
                # a run for some products merged them into the date's hash: count what it holds
                **({} if full_run else {"dagster/row_count": client.hlen(keys.history_key(prefix, as_of))}),
            },
            asset_key=context.asset_key,
            partition_key=as_of,
        )

    def load_input(self, context: InputContext) -> dict[str, forecast_cache.CachedForecasts]:
        client, prefix = self.redis_store.client(), self.redis_store.key_prefix
        # streamed in batches: a date of a million forecasts never sits in one process whole
        return {key: forecast_cache.CachedForecasts(client, prefix, key) for key in context.asset_partition_keys}


class RedisStepIOManager(ConfigurableIOManager):
    """Values handed between the forecast's own steps (shard plans, shard summaries), pickled
    into Redis under the run and step that produced them: no shared filesystem is needed between
    processes or pods. Kept ``ttl`` seconds so a re-execution of a failed run can still load them."""

    redis_store: ResourceDependency[RedisStore]
    ttl: int = 604800

    def _location(self, run_id: str, identifier: list[str]) -> tuple[str, str]:
        """One hash per run (``{prefix}:steps:{run_id}``, one TTL), a field per step output."""
        return keys.steps_key(self.redis_store.key_prefix, run_id), ":".join(identifier)

    def handle_output(self, context: OutputContext, obj) -> None:
        key, field = self._location(context.run_id, context.get_identifier())
        with redis_failures(self.redis_store.url, f"storing {field}"):
            pipe = self.redis_store.binary_client().pipeline(transaction=True)
            pipe.hset(key, field, pickle.dumps(obj))
            pipe.expire(key, self.ttl)
            pipe.execute()

    def load_input(self, context: InputContext):
        upstream = context.upstream_output
        key, field = self._location(upstream.run_id, upstream.get_identifier())
        with redis_failures(self.redis_store.url, f"reading {field}"):
            raw = self.redis_store.binary_client().hget(key, field)
        if raw is None:
            raise FileNotFoundError(
                f"{field} is not in {key} (expired after {self.ttl}s, or Redis was flushed): rerun the date"
            )
        return pickle.loads(raw)  # noqa: S301 - written by this run's own steps


class RedisShardIOManager(RedisStepIOManager):
    """A shard step's output: its forecasts go into the run's staging hash of the date
    (:func:`forecast_cache.stage_forecasts`: a retried shard replaces its own products' entries),
    and only its summary is kept for the publish step."""

    def handle_output(self, context: OutputContext, obj: StagedShard) -> None:
        started = time.perf_counter()
        result = obj.result
        token = _run_token(context)
        store = self.redis_store
        with redis_failures(store.url, f"staging shard {result.index + 1}/{result.count} of {result.as_of}"):
            staged = forecast_cache.stage_forecasts(
                store.client(), store.key_prefix, result.as_of, token, obj.payloads, obj.product_ids
            )
        result.timings["write_seconds"] = result.timings.get("write_seconds", 0.0) + time.perf_counter() - started
        context.log.info(
            f"{result.as_of} shard {result.index + 1}/{result.count}: staged {staged} forecasts "
            f"in {keys.staging_key(self.redis_store.key_prefix, result.as_of, token)}"
        )
        super().handle_output(context, result)


def _run_token(context: OutputContext) -> str:
    """The run group's root run id: a re-execution of a failed run stages where the run did."""
    run = context.step_context.dagster_run
    return run.root_run_id or run.run_id


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
            pipe.set(keys.eligible_key(self.redis_store.key_prefix, as_of), json.dumps(doc), ex=self.history_ttl)
        pipe.execute()

    def load_input(self, context: InputContext) -> dict[str, pd.DataFrame]:
        with redis_failures(self.redis_store.url, "reading the eligible products"):
            return self._read(context)

    def _read(self, context: InputContext) -> dict[str, pd.DataFrame]:
        tables = {}
        for as_of in context.asset_partition_keys:
            key = keys.eligible_key(self.redis_store.key_prefix, as_of)
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
