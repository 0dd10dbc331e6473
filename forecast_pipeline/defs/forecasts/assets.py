"""The forecast assets, partitioned by as-of date:
eligible products -> product forecasts (Redis) -> forecast predictions (application database).

Each asset handles every as-of date of its run (``BackfillPolicy.single_run()``): a backfill of a
date range, or a queue job for one, is one run that reads each date's history once. Values pass
between steps as ``{partition_key: value}``.
"""

import datetime as dt
import time
import warnings
from typing import NoReturn

import pandas as pd
import sqlalchemy as sa
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetObservation,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    PreviewWarning,
    TableColumn,
    TableSchema,
    asset,
)
from pydantic import Field

from forecast_pipeline.app_db import predictions_store, queue_tables
from forecast_pipeline.defs.forecasts import forecast_view
from forecast_pipeline.defs.forecasts.partitions import as_of_partitions
from forecast_pipeline.forecast_queue.run_heartbeat import RunHeartbeat
from forecast_pipeline.forecasting.batch import ForecastRun, run_forecasts
from forecast_pipeline.forecasting.customers import active_customers
from forecast_pipeline.resources import AppDatabase, ForecastParameters, SourceDatabase, raise_database_failure
from forecast_pipeline.source import order_history

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
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
    run_heartbeat: RunHeartbeat,
) -> Output[dict[str, pd.DataFrame]]:
    tables: dict[str, pd.DataFrame] = {}
    for key in context.partition_keys:
        window = forecast_params.window(dt.date.fromisoformat(key))
        started = time.perf_counter()
        try:
            with source_db.engine().connect() as conn:
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
            context.log.warning(
                f"No product has {window.min_customers}+ customers and {window.min_orders}+ orders between "
                f"{window.history_start} and {key}: nothing will be forecast."
            )
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


@asset(
    partitions_def=as_of_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="forecast_io_manager",
    group_name=GROUP,
    kinds={"python", "redis"},
    metadata={"dagster/column_schema": FORECAST_SCHEMA},
    check_specs=[FAILURE_RATE_SPEC],
    description=(
        "12-week demand forecast per eligible product with 80% intervals, active customers and "
        "model metadata, cached in Redis under forecast:{product_id}. Figures per as-of date: "
        "mean_accuracy_estimate is the mean over forecast products of 1 - WAPE on their last "
        "12 weeks held out (0 = no better than forecasting nothing); holdout_wape pools those "
        "errors over all products; data_quality counts are the order lines each rule changed."
    ),
)
def product_forecasts(
    context: AssetExecutionContext,
    config: ProductForecastsConfig,
    eligible_products: dict[str, pd.DataFrame],
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
    run_heartbeat: RunHeartbeat,
):
    dated = {
        key: _forecast_one_date(context, config, eligible_products[key], key, source_db, forecast_params)
        for key in context.partition_keys
    }
    runs = {key: run for key, (run, _) in dated.items()}
    views = {key: view for key, (_, view) in dated.items()}  # each date's table and charts of its top forecasts
    for key, run in runs.items():
        context.log_event(AssetObservation(asset_key=context.asset_key, partition=key, metadata=_run_figures(run)))
    total = sum(r.total for r in runs.values())
    failed = sum(r.failed for r in runs.values())
    rate, limit = (failed / total if total else 0.0), forecast_params.max_failure_rate
    errors = [(p, m) for r in runs.values() for p, m in r.errors][:ERRORS_LOGGED]
    passed = rate <= limit
    checks = partition_check_results(
        context.assets_def,
        AssetCheckKey(context.asset_key, FAILURE_RATE_CHECK),
        {
            key: (
                passed,  # the gate is the run's: a range run publishes all its dates or none
                {
                    "failure_rate": round(run.failure_rate, 4),
                    "max_failure_rate": limit,
                    "failed": run.failed,
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
        context.add_asset_metadata(
            {
                **views[key],
                **_run_figures(run),
                "dagster/row_count": run.successful,
                "models": MetadataValue.json(run.model_counts),
                "demand_classes": MetadataValue.json(run.class_counts),
                **{k: round(v, 3) for k, v in run.timings.items()},
            },
            partition_key=key,
        )
    yield Output(runs)
    yield from checks


def _first_errors(run: ForecastRun) -> list[tuple[str, str]]:
    return [(str(p), m) for p, m in run.errors[:ERRORS_LOGGED]]


def partition_check_results(
    assets_def: AssetsDefinition,
    check_key: AssetCheckKey,
    results: dict[str, tuple[bool, dict]],
    description: str | None = None,
) -> list:
    """One result of the check per as-of date, each showing its date in the UI.

    Dagster gives an ``AssetCheckResult`` the step's partition, which a range run's step does not
    have (the result would be stored without one and each date's check left "planned"). A range
    run therefore yields one ``AssetCheckEvaluation`` per date, then the check's output.
    """
    if len(results) == 1:
        [(passed, metadata)] = results.values()
        return [
            AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=check_key.name,
                passed=passed,
                metadata=metadata,
                description=description,
            )
        ]
    events: list = [
        AssetCheckEvaluation(
            asset_key=check_key.asset_key,
            check_name=check_key.name,
            passed=passed,
            metadata=metadata,
            severity=AssetCheckSeverity.ERROR,
            description=description,
            blocking=assets_def.get_spec_for_check_key(check_key).blocking,
            partition=key,
        )
        for key, (passed, metadata) in results.items()
    ]
    return [*events, Output(None, output_name=assets_def.get_output_name_for_asset_check_key(check_key))]


def _forecast_one_date(
    context: AssetExecutionContext,
    config: ProductForecastsConfig,
    eligible: pd.DataFrame,
    key: str,
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
) -> tuple[ForecastRun, dict]:
    """The date's forecasts, and the UI's table and charts of them (they need the history, which
    the run does not keep; attached only if the date is published)."""
    window = forecast_params.window(dt.date.fromisoformat(key))
    product_ids = eligible["product_id"].astype("int64").tolist()
    only = None
    if config.product_ids is not None:
        unknown = sorted(set(config.product_ids) - set(product_ids))
        if unknown:
            raise Failure(
                description=f"Products not eligible for as-of {key} (unknown, or too few customers/orders "
                f"before it): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}",
                metadata={"permanent": True},
                allow_retries=False,
            )
        only = sorted(set(config.product_ids))
        product_ids = [p for p in product_ids if p in set(only)]

    timings: dict[str, float] = {}
    context.log.info(f"{key}: reading the weekly history and customers of {len(product_ids)} products")
    started = time.perf_counter()
    try:
        with source_db.engine().connect() as conn:
            weekly = order_history.fetch_weekly_history(conn, window, product_ids, source_db.source_query)
            activity = order_history.fetch_customer_activity(conn, window, product_ids, source_db.source_query)
    except sa.exc.SQLAlchemyError as exc:
        _source_failure(source_db, exc, key)
    timings["read_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    active_count, weekly_buyers = active_customers(activity, product_ids)
    timings["aggregate_seconds"] = time.perf_counter() - started
    context.log.info(
        f"{key}: read {window.weeks} weeks of history for {len(product_ids)} products "
        f"({len(activity)} product-customer pairs) in {timings['read_seconds']:.2f}s"
    )

    model_started = time.perf_counter()
    context.log.info(
        f"{key}: fitting models for {len(product_ids)} products (FORECAST_WORKERS={forecast_params.workers})"
    )

    def progress(done: int, total: int) -> None:
        context.log.info(
            f"{key}: forecast progress {done}/{total} products ({done / total:.0%}), "
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
        f"{key}: models fitted in {run.timings['model_seconds']:.2f}s, "
        f"forecast documents built in {run.timings['payload_seconds']:.2f}s"
    )
    view = forecast_view.forecast_view_metadata(run.payloads, product_ids, weekly.matrix, window.as_of)
    run.requested_products = only
    run.data_quality = weekly.quality.summary()
    for kind, products in weekly.quality.examples(product_ids).items():
        context.log.warning(
            f"{key}: {kind}: {run.data_quality[kind]} (most in "
            + ", ".join(f"product {p}" for p in products)
            + "); see 'Bad order lines' in the README for the rule"
        )
    for product_id, message in run.errors[:ERRORS_LOGGED]:
        context.log.error(f"Product {product_id} failed: {message}")
    if len(run.errors) > ERRORS_LOGGED:
        context.log.error(f"... and {len(run.errors) - ERRORS_LOGGED} more failed products")
    context.log.info(
        f"{key}: forecast {run.total} products: {run.successful} succeeded, {run.no_forecast} no forecast, "
        f"{run.failed} failed"
    )
    return run, view


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
        "products replaces only theirs."
    ),
)
def forecast_predictions(
    context: AssetExecutionContext,
    product_forecasts: dict[str, dict[int, dict]],
    app_db: AppDatabase,
    run_heartbeat: RunHeartbeat,
) -> MaterializeResult:
    started = time.perf_counter()
    engine = app_db.engine()
    requested = requested_products(context.run.run_config)
    rows = {}
    try:
        predictions_store.create_table(engine)
    except sa.exc.SQLAlchemyError as exc:
        _app_db_failure(app_db, exc, "creating forecast_predictions")
    for key, docs in product_forecasts.items():
        started_date = time.perf_counter()
        if requested is not None:
            docs = {p: doc for p, doc in docs.items() if p in requested}
        try:
            rows[key] = predictions_store.replace(engine, dt.date.fromisoformat(key), docs.values(), requested)
        except sa.exc.SQLAlchemyError as exc:
            _app_db_failure(app_db, exc, f"writing forecast_predictions of {key}", as_of_date=key)
        context.add_asset_metadata(
            {"rows": rows[key], "dagster/row_count": rows[key], "write_seconds": time.perf_counter() - started_date},
            partition_key=key,
        )
    seconds = time.perf_counter() - started
    context.log.info(
        f"Wrote {sum(rows.values())} prediction rows in {seconds:.2f}s into {app_db.redacted_url()}"
        + ("" if requested is None else f" (products {sorted(requested)[:20]} only)")
    )
    return MaterializeResult()


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
        "compute_seconds": round(run.elapsed_seconds, 3),
        "outliers_capped": run.outliers_capped,
    }
    if run.mean_accuracy is not None:
        figures["mean_accuracy_estimate"] = round(run.mean_accuracy, 4)
    if run.holdout_wape is not None:
        figures["holdout_wape"] = round(run.holdout_wape, 4)
    figures.update(run.data_quality)
    return figures
