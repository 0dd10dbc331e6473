"""The forecast assets, partitioned by as-of date:
eligible products -> product forecasts (Redis) -> forecast predictions (application database).

Each asset handles every as-of date of its run (``BackfillPolicy.single_run()``): a backfill of a
date range, or a queued forecast request for one, is one run that reads each date's history once. Values pass
between steps as ``{partition_key: value}``.

``product_forecasts`` is a graph: ``plan_forecast_shards`` cuts each date into shards of at most
``FORECAST_SHARD_SIZE`` products, ``forecast_shard`` (one step per shard, retried alone) reads,
models and stages them in Redis, and ``publish_forecasts`` gates and publishes the dates. A process
(or pod) then holds one shard, never a whole date (see :mod:`forecast_pipeline.forecasting.shards`).
"""

import datetime as dt
import time
import warnings
from typing import NoReturn

import numpy as np
import pandas as pd
import sqlalchemy as sa
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetsDefinition,
    BackfillPolicy,
    Backoff,
    BetaWarning,
    Config,
    ConfigMapping,
    DagsterExecutionInterruptedError,
    DagsterRunStatus,
    DynamicOut,
    DynamicOutput,
    Failure,
    FreshnessPolicy,
    Jitter,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    PreviewWarning,
    RetryPolicy,
    RetryRequested,
    RunsFilter,
    TableColumn,
    TableSchema,
    apply_freshness_policy,
    asset,
    graph_asset,
    in_process_executor,
    op,
)
from dagster._core.storage.tags import ROOT_RUN_ID_TAG
from pydantic import Field

from forecast_pipeline.app_db import predictions_store, queue_tables
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.cache import forecast_cache
from forecast_pipeline.defs.forecasts import forecast_view
from forecast_pipeline.defs.forecasts.partitions import as_of_partitions
from forecast_pipeline.forecast_queue.run_heartbeat import RunHeartbeat
from forecast_pipeline.forecasting import shards as forecast_shards
from forecast_pipeline.forecasting.batch import ForecastRun, run_forecasts
from forecast_pipeline.forecasting.customers import active_customers
from forecast_pipeline.resources import (
    AppDatabase,
    ForecastParameters,
    RedisStore,
    SourceDatabase,
    raise_database_failure,
    redis_failures,
)
from forecast_pipeline.source import kept_lines, order_history

GROUP = "forecasts"
ELIGIBLE_SCHEMA = TableSchema(
    columns=[
        TableColumn("product_id", "bigint"),
        TableColumn("order_count", "bigint", description="distinct orders before the as-of date"),
        TableColumn("customer_count", "bigint", description="distinct customers before the as-of date"),
    ]
)
FORECAST_SCHEMA = TableSchema(
    columns=[
        TableColumn("product_id", "bigint", description="key forecast:{product_id}"),
        TableColumn("as_of_date", "date"),
        TableColumn("forecast_weeks", "int"),
        TableColumn(
            "predictions",
            "json",
            description="week_start, week_end, predicted_quantity, "
            "confidence_lower, confidence_upper (80%), active_customers per week",
        ),
        TableColumn("summary", "json", description="total_predicted_quantity, active_customers, avg_weekly_quantity"),
        TableColumn(
            "model_metadata", "json", description="model_type, demand_class, accuracy estimate, interval level"
        ),
    ]
)
FAILURE_RATE_CHECK = "failure_rate_within_limit"
FAILURE_RATE_OUTPUT = "product_forecasts_failure_rate_within_limit"  # the graph's output of the check
# single-run backfills are "beta" in Dagster 1.13: a warning on every load that no user can act on
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`", category=BetaWarning)
with warnings.catch_warnings():  # partitioned checks are "preview": nothing a user can act on
    warnings.simplefilter("ignore", PreviewWarning)
    FAILURE_RATE_SPEC = AssetCheckSpec(
        FAILURE_RATE_CHECK,
        asset="product_forecasts",
        blocking=True,
        description="Fails the run when more than FORECAST_MAX_FAILURE_RATE of the products errored.",
        partitions_def=as_of_partitions,  # each result shows its as-of date
    )
ERRORS_LOGGED = 20


def _source_failure(source_db: SourceDatabase, exc: sa.exc.SQLAlchemyError, as_of: str) -> NoReturn:
    raise_database_failure(exc, source_db.url, "DATABASE_URL", "reading order history", "the orders", as_of_date=as_of)


# the executor of FORECAST_EXECUTOR=in_process, and the one of Dagster's `materialize()`
IN_PROCESS_EXECUTORS = {in_process_executor.name, "execute_in_process_executor"}


def as_of_dates(context: AssetExecutionContext | OpExecutionContext) -> list[str]:
    """The run's as-of dates; a Failure for a run that has none (a reversed partition range, which
    Dagster runs as an empty one: it succeeded, materializing nothing under no partition)."""
    keys = context.partition_keys
    if not keys:
        tags = context.run.tags
        start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
        raise Failure(
            description=f"the run's partition range {start}...{end} holds no as-of date"
            + (": its start is after its end (give the earlier date first)" if start and end and start > end else ""),
            allow_retries=False,
        )
    return keys


class EligibleProductsConfig(Config):
    empty_date: bool = Field(
        default=False,
        description=(
            "Publish an as-of date with no eligible product even where forecasts of it are published "
            "(they are removed). Off, such a run fails: a source with no order lines is more often an "
            "outage than a catalogue with nothing left to forecast."
        ),
    )


@asset(
    partitions_def=as_of_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="table_io_manager",
    group_name=GROUP,
    kinds={"sql"},
    metadata={"dagster/column_schema": ELIGIBLE_SCHEMA},
    description=(
        "Products with at least FORECAST_MIN_CUSTOMERS distinct customers and FORECAST_MIN_ORDERS "
        "distinct orders between FORECAST_HISTORY_START and the as-of date, most orders first."
    ),
)
def eligible_products(
    context: AssetExecutionContext,
    config: EligibleProductsConfig,
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
    redis_store: RedisStore,
    run_heartbeat: RunHeartbeat,
) -> Output[dict[str, pd.DataFrame]]:
    # the run's first step: an unreachable Redis (where every step's output goes) fails it here,
    # in one line, before any query (the resource itself does not connect when it is set up)
    redis_store.ensure_reachable()
    tables: dict[str, pd.DataFrame] = {}
    # the shard of a one-shard date runs in this process too: it can reuse the lines read here
    # (the last date's only: one date's lines at a time are held)
    in_process = context.job_def.executor_def.name in IN_PROCESS_EXECUTORS
    dates = as_of_dates(context)
    for key in dates:
        stop_if_run_is_ending(context)
        window = forecast_params.window(dt.date.fromisoformat(key))
        keep = in_process and source_db.source_query is None and key == dates[-1]
        started = time.perf_counter()
        try:
            with source_db.engine().connect() as conn:
                if keep:
                    tables[key], lines = order_history.fetch_eligible_keeping_lines(
                        conn, window, forecast_params.shard_size
                    )
                    if lines is not None:
                        kept_lines.keep(context.run.run_id, key, lines)
                else:
                    tables[key] = order_history.fetch_eligible_products(conn, window, source_db.source_query)
        except sa.exc.SQLAlchemyError as exc:
            _source_failure(source_db, exc, key)
        seconds = time.perf_counter() - started
        context.log.info(f"{len(tables[key])} eligible products for as-of {key} ({seconds:.2f}s)")
        context.add_asset_metadata(
            {
                "eligible_products": len(tables[key]),
                "dagster/row_count": len(tables[key]),
                "query_seconds": round(seconds, 3),
                "top_products": MetadataValue.md(
                    tables[key].head(10).to_markdown(index=False) if not tables[key].empty else "none"
                ),
            },
            partition_key=key,
        )
        if tables[key].empty:
            why = (
                f"No product is eligible for as-of {key} ({window.min_customers}+ customers and "
                f"{window.min_orders}+ orders between {window.history_start} and {key})"
            )
            published = forecast_cache.published_count(redis_store.client(), redis_store.key_prefix, key)
            if published and not config.empty_date:
                raise Failure(
                    description=f"{why}, yet {published} forecasts of that date are published: not erasing them. "
                    "Check the source database (DATABASE_URL, FORECAST_SOURCE_QUERY) and the thresholds; to empty "
                    "the date on purpose, run with ops: {eligible_products: {config: {empty_date: true}}}.",
                    metadata={"as_of_date": key, "published_forecasts": published},
                )
            context.log.warning(f"{why}: nothing will be forecast.")
    return Output(
        tables,
        metadata={
            "min_customers": forecast_params.min_customers,
            "min_orders": forecast_params.min_orders,
            "history_start": forecast_params.history_start,
        },
    )


class ProductForecastsConfig(Config):
    """Run options. By default every eligible product is forecast."""

    product_ids: list[int] | None = Field(
        default=None,
        description="Forecast only these products (each must be eligible). Leaves the run metadata alone.",
    )


SHARD_POOL = "forecast_shards"
# A failing shard is retried alone (RetryRequested from the op, with this policy's delays) rather
# than with `retry_policy=`: Dagster applies an op's RetryPolicy to the interrupt that terminates a
# run too, so a run past its max runtime or cancelled would retry the shard and carry on.
SHARD_RETRY = RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
# Each shard step is its own pod under k8s_job_executor. Sized for FORECAST_SHARD_SIZE=25,000
# products with room to spare (measured peaks per shard process: benchmarks/RESULTS.md).
SHARD_K8S_CONFIG = {
    "container_config": {
        "resources": {"requests": {"cpu": "1", "memory": "1536Mi"}, "limits": {"memory": "2Gi"}},
    },
}
PUBLISH_K8S_CONFIG = {
    "container_config": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}},
}


@op(
    out=DynamicOut(io_manager_key="forecast_step_io_manager"),
    tags={"dagster-k8s/config": PUBLISH_K8S_CONFIG},
    description="Cuts each as-of date's eligible products into shards of at most FORECAST_SHARD_SIZE.",
)
def plan_forecast_shards(
    context: OpExecutionContext,
    config: ProductForecastsConfig,
    eligible_products: dict[str, pd.DataFrame],
    forecast_params: ForecastParameters,
    redis_store: RedisStore,
    run_heartbeat: RunHeartbeat,
):
    for key in as_of_dates(context):
        product_ids, only = _products_to_forecast(config, eligible_products[key], key)
        with redis_failures(redis_store.url, f"cleaning up finished runs' staging of {key}"):
            _delete_dead_staging(context, redis_store, key)
        shards = forecast_shards.plan_shards(key, product_ids, forecast_params.shard_size, requested=only is not None)
        context.log.info(
            f"{key}: {len(product_ids)} products in {len(shards)} shard(s) of at most {forecast_params.shard_size}"
        )
        for spec in shards:
            yield DynamicOutput(spec, mapping_key=spec.mapping_key)


def _delete_dead_staging(context: OpExecutionContext, redis_store: RedisStore, as_of: str) -> None:
    """Free staging hashes that finished or vanished runs left for the date (a live run's are
    kept: its shards may be writing them). Their TTL would remove them within the hour."""
    client, prefix = redis_store.client(), redis_store.key_prefix
    mine = context.run.root_run_id or context.run_id
    for token in forecast_cache.staging_tokens(client, prefix, as_of):
        if token == mine:
            continue
        group = context.instance.get_runs(RunsFilter(run_ids=[token])) + context.instance.get_runs(
            RunsFilter(tags={ROOT_RUN_ID_TAG: token})
        )
        if not any(not run.is_finished for run in group):
            forecast_cache.delete_staging(client, prefix, as_of, token)
            context.log.info(f"{as_of}: deleted the staging hash of finished or unknown run {token}")


def _products_to_forecast(
    config: ProductForecastsConfig, eligible: pd.DataFrame, key: str
) -> tuple[list[int], list[int] | None]:
    product_ids = eligible["product_id"].astype("int64").tolist()
    if config.product_ids is None:
        return product_ids, None
    unknown = sorted(set(config.product_ids) - set(product_ids))
    if unknown:
        raise Failure(
            description=f"Products not eligible for as-of {key} (unknown, or too few customers/orders "
            f"before it): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}",
            metadata={"permanent": True},
            allow_retries=False,
        )
    only = sorted(set(config.product_ids))
    wanted = set(only)
    return [p for p in product_ids if p in wanted], only


@op(
    out=Out(io_manager_key="forecast_shard_io_manager"),
    # shards of every run share one pool: its limit (dagster.yaml) caps the shard steps (and their
    # memory) running at once across concurrent runs and backfills
    pool=SHARD_POOL,
    tags={"dagster-k8s/config": SHARD_K8S_CONFIG},
    description="Reads one shard's history, models it and stages its forecasts in Redis.",
)
def forecast_shard(
    context: OpExecutionContext,
    spec: forecast_shards.ShardSpec,
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
    run_heartbeat: RunHeartbeat,
) -> forecast_shards.StagedShard:
    stop_if_run_is_ending(context)
    try:
        run, history = _forecast_shard(context, spec, source_db, forecast_params)
    except Exception as exc:  # not BaseException: a run being terminated is never retried
        if (isinstance(exc, Failure) and not exc.allow_retries) or _run_is_ending(context):
            raise
        raise RetryRequested(
            max_retries=SHARD_RETRY.max_retries, seconds_to_wait=SHARD_RETRY.calculate_delay(context.retry_number + 1)
        ) from exc
    return forecast_shards.StagedShard(
        result=forecast_shards.ShardResult.of(spec, run, history), payloads=run.payloads, product_ids=spec.product_ids
    )


@op(
    out={
        "result": Out(io_manager_key="forecast_io_manager"),
        "failure_rate_check": Out(is_required=False),
    },
    tags={"dagster-k8s/config": PUBLISH_K8S_CONFIG},
    description=(
        "Adds up the shards' figures, applies the failure-rate gate over every product of the run, "
        "and publishes each date (through the forecast IO manager) or nothing."
    ),
)
def publish_forecasts(
    context: OpExecutionContext,
    shards: list[forecast_shards.ShardResult],
    forecast_params: ForecastParameters,
    redis_store: RedisStore,
    run_heartbeat: RunHeartbeat,
):
    asset_key = AssetKey("product_forecasts")
    token = context.run.root_run_id or context.run_id
    keys = as_of_dates(context)
    try:
        runs = {key: forecast_shards.merge_shards(key, shards) for key in keys}
    except forecast_shards.IncompleteShards as exc:
        raise Failure(description=str(exc)) from exc
    views = {}  # each date's table and charts of its top forecasts
    for key in keys:
        top, histories = forecast_shards.merged_top([r for r in shards if r.as_of == key])
        views[key] = forecast_view.view_metadata(top, histories, dt.date.fromisoformat(key))
    total = sum(r.total for r in runs.values())
    failed = sum(r.failed for r in runs.values())
    record = context.instance.get_run_record_by_id(context.run_id)
    started_at = record.start_time if record is not None else None
    elapsed = round(time.time() - started_at, 3) if started_at else None  # the run's wall time so far
    for key, run in runs.items():  # with the whole run's counts, which the gate and the health alerts judge
        figures = {**_run_figures(run), "run_total_products": total, "run_failed": failed}
        if elapsed is not None:
            figures["elapsed_seconds"] = elapsed
        context.log_event(AssetObservation(asset_key=asset_key, partition=key, metadata=figures))
    rate, limit = (failed / total if total else 0.0), forecast_params.max_failure_rate
    errors = [(p, m) for r in runs.values() for p, m in r.errors][:ERRORS_LOGGED]
    passed = rate <= limit
    check_key = AssetCheckKey(asset_key, FAILURE_RATE_CHECK)
    checks = _check_events(
        check_key,
        {
            key: (
                passed,  # the gate is the run's: a range run publishes all its dates or none
                {
                    "failure_rate": round(run.failure_rate, 4),
                    "max_failure_rate": limit,
                    "failed": run.failed,
                    "shards": max((r.count for r in shards if r.as_of == key), default=0),
                    **({"run_failure_rate": round(rate, 4)} if len(runs) > 1 else {}),
                    **({"first_errors": MetadataValue.json(dict(_first_errors(run)))} if run.errors else {}),
                },
            )
            for key, run in runs.items()
        },
        description=None if passed else f"{failed}/{total} products failed ({rate:.1%} > {limit:.1%})",
    )
    if rate > limit:
        # Write-audit-publish: nothing is published, so Redis and forecast_predictions keep the
        # previous forecasts of these dates and agree with each other.
        with redis_failures(redis_store.url, "deleting the unpublished staging"):
            for key in keys:
                forecast_cache.delete_staging(redis_store.client(), redis_store.key_prefix, key, token)
        yield from checks
        raise Failure(
            description=(
                f"{failed} of {total} products failed ({rate:.1%} > FORECAST_MAX_FAILURE_RATE {limit:.1%}): "
                f"nothing was published for {', '.join(runs)}. First errors: "
                + "; ".join(f"product {p}: {m}" for p, m in errors[:5])
            ),
            metadata={"failure_rate": rate, "failed": failed, "total_products": total},
        )
    for key, run in runs.items():  # each date's materialization carries that date's figures
        context.get_step_execution_context().add_asset_metadata(
            {
                **views[key],
                **_run_figures(run),
                **({"elapsed_seconds": elapsed} if elapsed is not None else {}),
                "dagster/row_count": run.successful,
                "shards": max(r.count for r in shards if r.as_of == key),
                "models": MetadataValue.json(run.model_counts),
                "demand_classes": MetadataValue.json(run.class_counts),
                **{k: round(v, 3) for k, v in run.timings.items()},
                # a run for some products: its figures and table are of them only (ids as text: exact)
                **(
                    {"requested_products": ", ".join(str(p) for p in run.requested_products)}
                    if run.requested_products is not None
                    else {}
                ),
            },
            asset_key=asset_key,
            partition_key=key,
        )
        context.log.info(
            f"{key}: {run.total} products in {max(r.count for r in shards if r.as_of == key)} shard(s): "
            f"{run.successful} succeeded, {run.no_forecast} no forecast, {run.failed} failed"
        )
    published = {
        key: forecast_shards.DatePublish(
            run=run,
            run_token=token,
            product_ids=forecast_shards.success_ids([r for r in shards if r.as_of == key]),
        )
        for key, run in runs.items()
    }
    yield Output(published, output_name="result")
    yield from checks


def _check_events(check_key: AssetCheckKey, results: dict[str, tuple[bool, dict]], description: str | None):
    """One evaluation of the check per as-of date (each shows its date in the UI), then the
    check's output of the publish step."""
    return [
        *_evaluations(check_key, results, description, blocking=True),
        Output(None, output_name="failure_rate_check"),
    ]


def _evaluations(
    check_key: AssetCheckKey,
    results: dict[str, tuple[bool, dict]],
    description: str | None,
    blocking: bool,
    notes: dict[str, tuple[AssetCheckSeverity, str]] | None = None,
) -> list[AssetCheckEvaluation]:
    return [
        AssetCheckEvaluation(
            **_check_fields(check_key, key, result, description, notes), blocking=blocking, partition=key
        )
        for key, result in results.items()
    ]


def _check_fields(
    check_key: AssetCheckKey,
    key: str,
    result: tuple[bool, dict],
    description: str | None,
    notes: dict[str, tuple[AssetCheckSeverity, str]] | None,
) -> dict:
    """What a check result of one date says, whichever of Dagster's two result types carries it."""
    passed, metadata = result
    severity, text = (notes or {}).get(key, (AssetCheckSeverity.ERROR, description))
    return {
        "asset_key": check_key.asset_key,
        "check_name": check_key.name,
        "passed": passed,
        "metadata": metadata,
        "severity": severity,
        "description": text,
    }


@graph_asset(
    name="product_forecasts",
    partitions_def=as_of_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"python", "redis"},
    metadata={"dagster/column_schema": FORECAST_SCHEMA},
    check_specs=[FAILURE_RATE_SPEC],
    config=ConfigMapping(
        config_schema=ProductForecastsConfig.to_config_schema(),
        config_fn=lambda cfg: {"plan_forecast_shards": {"config": cfg}},
    ),
    description=(
        "12-week demand forecast per eligible product with 80% intervals, active customers and "
        "model metadata, cached in Redis under forecast:{product_id}. Runs as shards of at most "
        "FORECAST_SHARD_SIZE products (one step each, retried alone), then one publish step. "
        "Figures per as-of date: mean_accuracy_estimate is the mean over forecast products of "
        "1 - WAPE on their last 12 weeks held out (0 = no better than forecasting nothing); "
        "holdout_wape pools those errors over all products; data_quality counts are the order "
        "lines each rule changed; stage seconds are summed over shards."
    ),
)
def product_forecasts(eligible_products):
    shards = plan_forecast_shards(eligible_products).map(forecast_shard)
    published = publish_forecasts(shards.collect())
    return {"result": published.result, FAILURE_RATE_OUTPUT: published.failure_rate_check}


# Dagster's freshness (the asset's health in the UI, freshness events): the daily schedule refreshes
# the cache every day, so a day and a bit without a new forecast warns and two days fail. The
# "last run older than 8 days" alert counts from the last run that published (pipeline_health_sensor).
FORECAST_FRESHNESS = FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=48), warn_window=dt.timedelta(hours=26))
product_forecasts = product_forecasts.map_asset_specs(lambda spec: apply_freshness_policy(spec, FORECAST_FRESHNESS))


def _first_errors(run: ForecastRun) -> list[tuple[str, str]]:
    return [(str(p), m) for p, m in run.errors[:ERRORS_LOGGED]]


def partition_check_results(
    assets_def: AssetsDefinition,
    check_key: AssetCheckKey,
    results: dict[str, tuple[bool, dict]],
    description: str | None = None,
    notes: dict[str, tuple[AssetCheckSeverity, str]] | None = None,
) -> list:
    """One result of the check per as-of date, each showing its date in the UI; ``notes`` gives
    a date its own severity and description instead of ERROR and ``description``.

    Dagster gives an ``AssetCheckResult`` the step's partition, which a range run's step does not
    have (the result would be stored without one and each date's check left "planned"). A range
    run therefore yields one ``AssetCheckEvaluation`` per date, then the check's output.
    """
    if len(results) == 1:
        [(key, result)] = results.items()
        return [AssetCheckResult(**_check_fields(check_key, key, result, description, notes))]
    blocking = assets_def.get_spec_for_check_key(check_key).blocking
    events: list = _evaluations(check_key, results, description, blocking, notes)
    return [*events, Output(None, output_name=assets_def.get_output_name_for_asset_check_key(check_key))]


# A run being terminated (cancelled, past its max runtime) or already given up by run monitoring.
RUN_ENDING_STATUSES = (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE)


def stop_if_run_is_ending(context: OpExecutionContext) -> None:
    """Stop here if the run is being cancelled or timed out but its interrupt never arrived.

    Dagster terminates a run with a signal, and one that lands while Python runs a weakref
    callback or finalizer is dropped ("Exception ignored in ..."): a cancelled run then went on
    computing for minutes. Checked before each date's read and each shard, it stops within one."""
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is not None and run.status in RUN_ENDING_STATUSES:
        context.log.info(f"the run is {run.status.value.lower()}: stopping before the next date or shard")
        raise DagsterExecutionInterruptedError()


def _run_is_ending(context: OpExecutionContext) -> bool:
    """Whether the run is being terminated (cancelled, past its max runtime): an interrupt can
    surface as an ordinary error (the database driver cancels its query), which must not be retried."""
    run = context.instance.get_run_by_id(context.run_id)
    return run is None or run.status in RUN_ENDING_STATUSES


def _forecast_shard(
    context: OpExecutionContext,
    spec: forecast_shards.ShardSpec,
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
) -> tuple[ForecastRun, np.ndarray]:
    """One shard's forecasts, and its weekly history (rows align with the shard's products) for
    the charts of its top forecasts."""
    key = spec.as_of
    where = f"{key} shard {spec.index + 1}/{spec.count}"
    window = forecast_params.window(dt.date.fromisoformat(key))
    product_ids = spec.product_ids.tolist()
    timings: dict[str, float] = {}
    context.log.info(f"{where}: reading the weekly history and customers of {len(product_ids)} products")
    started = time.perf_counter()
    kept = kept_lines.take(context.run_id, key) if product_ids and spec.count == 1 else None
    if kept is not None:
        context.log.info(f"{where}: using the order lines the eligible_products step read")
        weekly, activity = order_history.history_from_lines(kept, window, product_ids)
        del kept
    else:
        try:
            with source_db.engine().connect() as conn:
                weekly, activity = order_history.fetch_history(conn, window, product_ids, source_db.source_query)
        except sa.exc.SQLAlchemyError as exc:
            _source_failure(source_db, exc, key)
    timings["read_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    active_count, weekly_buyers = active_customers(activity, product_ids)
    del activity
    timings["aggregate_seconds"] = time.perf_counter() - started
    context.log.info(
        f"{where}: read {window.weeks} weeks of history for {len(product_ids)} products in "
        f"{timings['read_seconds']:.2f}s"
    )

    model_started = time.perf_counter()
    context.log.info(
        f"{where}: fitting models for {len(product_ids)} products (FORECAST_WORKERS={forecast_params.workers})"
    )

    def progress(done: int, total: int) -> None:
        context.log.info(
            f"{where}: forecast progress {done}/{total} products ({done / total:.0%}), "
            f"{time.perf_counter() - model_started:.1f}s"
        )

    run = run_forecasts(
        weekly.matrix,
        product_ids,
        active_count,
        weekly_buyers,
        as_of=window.as_of,
        horizon=forecast_params.forecast_weeks,
        workers=forecast_params.workers,
        progress=progress,
    )
    run.timings = {**timings, **run.timings}
    context.log.info(
        f"{where}: models fitted in {run.timings['model_seconds']:.2f}s, "
        f"forecast documents built in {run.timings['payload_seconds']:.2f}s"
    )
    run.data_quality = weekly.quality.summary()
    for kind, products in weekly.quality.examples(product_ids).items():
        context.log.warning(
            f"{where}: {kind}: {run.data_quality[kind]} (most in "
            + ", ".join(f"product {p}" for p in products)
            + "); see 'Bad order lines' in the README for the rule"
        )
    for product_id, message in run.errors[:ERRORS_LOGGED]:
        context.log.error(f"Product {product_id} failed: {message}")
    if len(run.errors) > ERRORS_LOGGED:
        context.log.error(f"... and {len(run.errors) - ERRORS_LOGGED} more failed products")
    context.log.info(
        f"{where}: forecast {run.total} products: {run.successful} succeeded, {run.no_forecast} no forecast, "
        f"{run.failed} failed"
    )
    return run, weekly.matrix


@asset(
    partitions_def=as_of_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"sql"},
    metadata={
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(c.name, str(c.type).lower()) for c in queue_tables.forecast_predictions.columns]
        )
    },
    description=(
        "Every weekly prediction of product_forecasts as rows of forecast_predictions in the "
        "application database. A run replaces its as-of dates' rows wholly; a run for some "
        "products replaces only theirs. With FORECAST_PREDICTIONS_KEEP_DAYS, a run also deletes "
        "the as-of dates more than that many days before its newest date."
    ),
)
def forecast_predictions(
    context: AssetExecutionContext,
    product_forecasts: dict[str, forecast_cache.CachedForecasts],  # each date streamed from Redis
    app_db: AppDatabase,
    redis_store: RedisStore,
    forecast_params: ForecastParameters,
    run_heartbeat: RunHeartbeat,
) -> MaterializeResult:
    started = time.perf_counter()
    engine = app_db.engine()
    requested = requested_products(context.run.run_config)
    if requested is None:  # a run for some products that forecast none of them publishes no hash
        _require_published(product_forecasts, redis_store)
    rows = {}
    try:
        upgrade_app_schema(engine)
    except sa.exc.SQLAlchemyError as exc:
        _app_db_failure(app_db, exc, "creating forecast_predictions")
    for key, docs in product_forecasts.items():
        started_date = time.perf_counter()

        def replace(docs=docs, key=key) -> int:
            chosen = docs.values() if requested is None else (d for p, d in docs.items() if p in requested)
            return predictions_store.replace(engine, dt.date.fromisoformat(key), chosen, requested)

        try:
            # another run of the date may publish while this one reads it back: then write the newest
            with redis_failures(redis_store.url, f"reading the forecasts of {key} back"):
                rows[key] = forecast_cache.read_consistently(replace, context.log.info)
        except sa.exc.SQLAlchemyError as exc:
            _app_db_failure(app_db, exc, f"writing forecast_predictions of {key}", as_of_date=key)
        # a run for some products rewrote only theirs: the date's row count is the table's
        total = rows[key] if requested is None else predictions_store.count(engine, dt.date.fromisoformat(key))
        context.add_asset_metadata(
            {"rows": rows[key], "dagster/row_count": total, "write_seconds": time.perf_counter() - started_date},
            partition_key=key,
        )
    seconds = time.perf_counter() - started
    context.log.info(
        f"Wrote {sum(rows.values())} prediction rows in {seconds:.2f}s into {app_db.redacted_url()}"
        + ("" if requested is None else f" (products {sorted(requested)[:20]} only)")
    )
    if forecast_params.predictions_keep_days > 0 and rows:
        _remove_old_dates(context, app_db, max(rows), forecast_params.predictions_keep_days)
    return MaterializeResult()


def _require_published(product_forecasts: dict[str, forecast_cache.CachedForecasts], redis_store: RedisStore) -> None:
    """Fail, before any row is touched, when a date's forecasts have left Redis: replacing its
    rows with what is (not) there would delete them all and report success."""
    missing = {}
    for key, docs in product_forecasts.items():
        with redis_failures(redis_store.url, f"reading the forecasts of {key} back"):
            if not docs.published():
                missing[key] = docs.key
    if missing:
        dates = ", ".join(missing)
        raise Failure(
            description=f"{', '.join(missing.values())} {'is' if len(missing) == 1 else 'are'} not in Redis "
            "as a full run published it (expired after FORECAST_HISTORY_TTL, deleted, or written since "
            "by a run for some products only): forecast_predictions left the rows of "
            f"{dates} as they are. To rewrite them, materialize product_forecasts for {dates} "
            "together with forecast_predictions",
            metadata={"missing_as_of_dates": list(missing)},
            allow_retries=False,
        )


def _remove_old_dates(context: AssetExecutionContext, app_db: AppDatabase, newest: str, keep_days: int) -> None:
    """Retention: the as-of dates more than ``keep_days`` before the run's newest date go. Relative
    to the run, not today, so a backfill of an old date keeps what it wrote. A failure here is a
    warning, not the run's: its own rows are written, and the next run removes the old dates."""
    kept_since = dt.date.fromisoformat(newest) - dt.timedelta(days=keep_days)
    try:
        removed = predictions_store.delete_before(app_db.engine(), kept_since)
    except sa.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        context.log.warning(
            f"Could not remove forecast_predictions before {kept_since} (the next run retries): {reason}"
        )
        context.add_asset_metadata({"retention_error": reason}, partition_key=newest)
        return
    context.log.info(
        f"Removed {removed} prediction rows of as-of dates before {kept_since} "
        f"(FORECAST_PREDICTIONS_KEEP_DAYS={keep_days})"
    )
    context.add_asset_metadata({"rows_removed": removed, "kept_since": kept_since.isoformat()}, partition_key=newest)


def _app_db_failure(app_db: AppDatabase, exc: sa.exc.SQLAlchemyError, doing: str, **metadata) -> NoReturn:
    raise_database_failure(exc, app_db.url, "APP_DATABASE_URL", doing, "the application tables", **metadata)


def requested_products(run_config: dict | None) -> set[int] | None:
    """The ``product_ids`` a run's product_forecasts step was given (None: every product)."""
    ops = (run_config or {}).get("ops") or {}
    ids = ((ops.get("product_forecasts") or {}).get("config") or {}).get("product_ids")
    return None if ids is None else {int(i) for i in ids}


def _run_figures(run: ForecastRun) -> dict:
    """The run figures recorded both as materialization metadata and as an observation."""
    figures = {
        "total_products": run.total,
        "successful": run.successful,
        "failed": run.failed,
        "no_forecast": run.no_forecast,
        "failure_rate": round(run.failure_rate, 4),
        "compute_seconds": round(run.compute_seconds, 3),
        "outliers_capped": run.outliers_capped,
    }
    if run.mean_accuracy is not None:
        figures["mean_accuracy_estimate"] = round(run.mean_accuracy, 4)
    if run.holdout_wape is not None:
        figures["holdout_wape"] = round(run.holdout_wape, 4)
    figures.update(run.data_quality)
    return figures
