"""The forecast assets, partitioned by as-of date: eligible products -> product forecasts."""

import datetime as dt
import time

import pandas as pd
import sqlalchemy as sa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from forecast_pipeline import order_history
from forecast_pipeline.forecasting.batch import ForecastRun, run_forecasts
from forecast_pipeline.forecasting.customers import active_customers
from forecast_pipeline.partitions import as_of_partitions
from forecast_pipeline.resources import ForecastParameters, SourceDatabase

GROUP = "forecasts"
FAILURE_RATE_CHECK = "failure_rate_within_limit"
ERRORS_LOGGED = 20


def _as_of(context: AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _source_failure(source_db: SourceDatabase, exc: Exception) -> Failure:
    return Failure(
        description=(
            f"Reading order history from {source_db.redacted_url()} failed: {type(exc).__name__}: "
            f"{getattr(exc, 'orig', None) or exc}. Create the default tables with "
            "`forecast-pipeline init-db`, or set FORECAST_SOURCE_QUERY for another schema."
        )
    )


@asset(
    partitions_def=as_of_partitions,
    io_manager_key="table_io_manager",
    group_name=GROUP,
    kinds={"sql"},
    description=(
        "Products with at least FORECAST_MIN_CUSTOMERS distinct customers and FORECAST_MIN_ORDERS "
        "distinct orders between FORECAST_HISTORY_START and the as-of date, most orders first."
    ),
)
def eligible_products(
    context: AssetExecutionContext, source_db: SourceDatabase, forecast_params: ForecastParameters
) -> Output[pd.DataFrame]:
    window = forecast_params.window(_as_of(context))
    started = time.perf_counter()
    try:
        with source_db.engine().connect() as conn:
            frame = order_history.fetch_eligible_products(conn, window, source_db.source_query)
    except sa.exc.SQLAlchemyError as exc:
        raise _source_failure(source_db, exc) from exc
    seconds = time.perf_counter() - started
    context.log.info(f"{len(frame)} eligible products for as-of {window.as_of} ({seconds:.2f}s)")
    if frame.empty:
        context.log.warning(
            f"No product has {window.min_customers}+ customers and {window.min_orders}+ orders between "
            f"{window.history_start} and {window.as_of}: nothing will be forecast."
        )
    return Output(
        frame,
        metadata={
            "eligible_products": len(frame),
            "min_customers": window.min_customers,
            "min_orders": window.min_orders,
            "history_start": window.history_start.isoformat(),
            "query_seconds": round(seconds, 3),
            "top_products": MetadataValue.md(frame.head(10).to_markdown(index=False) if not frame.empty else "none"),
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
    io_manager_key="forecast_io_manager",
    group_name=GROUP,
    kinds={"python", "redis"},
    check_specs=[
        AssetCheckSpec(
            FAILURE_RATE_CHECK,
            asset="product_forecasts",
            blocking=True,
            description="Fails the run when more than FORECAST_MAX_FAILURE_RATE of the products errored.",
        )
    ],
    description=(
        "12-week demand forecast per eligible product with 80% intervals, active customers and "
        "model metadata, cached in Redis under forecast:{product_id}."
    ),
)
def product_forecasts(
    context: AssetExecutionContext,
    config: ProductForecastsConfig,
    eligible_products: pd.DataFrame,
    source_db: SourceDatabase,
    forecast_params: ForecastParameters,
):
    window = forecast_params.window(_as_of(context))
    product_ids = eligible_products["product_id"].astype("int64").tolist()
    only = None
    if config.product_ids is not None:
        unknown = sorted(set(config.product_ids) - set(product_ids))
        if unknown:
            raise Failure(
                description=f"Products not eligible for as-of {window.as_of} (unknown, or too few "
                f"customers/orders before it): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
            )
        only = sorted(set(config.product_ids))
        product_ids = [p for p in product_ids if p in set(only)]

    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        with source_db.engine().connect() as conn:
            history = order_history.fetch_weekly_history(conn, window, product_ids, source_db.source_query, only)
            activity = order_history.fetch_customer_activity(conn, window, source_db.source_query, only)
    except sa.exc.SQLAlchemyError as exc:
        raise _source_failure(source_db, exc) from exc
    timings["read_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    active_count, weekly_buyers = active_customers(activity, product_ids)
    timings["aggregate_seconds"] = time.perf_counter() - started
    context.log.info(
        f"Read {window.weeks} weeks of history for {len(product_ids)} products "
        f"({len(activity)} product-customer pairs) in {timings['read_seconds']:.2f}s"
    )

    def progress(done: int, total: int) -> None:
        context.log.info(f"Forecast progress: {done}/{total} products ({done / total:.0%})")

    run = run_forecasts(
        history,
        product_ids,
        active_count,
        weekly_buyers,
        as_of=window.as_of,
        horizon=forecast_params.forecast_weeks,
        workers=forecast_params.workers,
        progress=progress,
    )
    run.timings = {**timings, **run.timings}
    run.requested_products = only
    for product_id, message in run.errors[:ERRORS_LOGGED]:
        context.log.error(f"Product {product_id} failed: {message}")
    if len(run.errors) > ERRORS_LOGGED:
        context.log.error(f"... and {len(run.errors) - ERRORS_LOGGED} more failed products")

    figures = _run_figures(run)
    context.log.info(
        f"Forecast {run.total} products: {run.successful} succeeded, {run.no_forecast} no forecast, {run.failed} failed"
    )
    context.log_event(AssetObservation(asset_key=context.asset_key, partition=context.partition_key, metadata=figures))
    yield Output(
        run,
        metadata={
            **figures,
            "models": MetadataValue.json(run.model_counts),
            "demand_classes": MetadataValue.json(run.class_counts),
            **{k: round(v, 3) for k, v in run.timings.items()},
        },
    )
    rate, limit = run.failure_rate, forecast_params.max_failure_rate
    yield AssetCheckResult(
        check_name=FAILURE_RATE_CHECK,
        passed=rate <= limit,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "failure_rate": rate,
            "max_failure_rate": limit,
            "failed": run.failed,
            "first_errors": MetadataValue.json({str(p): m for p, m in run.errors[:ERRORS_LOGGED]}),
        },
        description=None if rate <= limit else f"{run.failed}/{run.total} products failed ({rate:.1%} > {limit:.1%})",
    )


def _run_figures(run: ForecastRun) -> dict:
    """The run figures recorded both as materialization metadata and as an observation."""
    figures = {
        "total_products": run.total,
        "successful": run.successful,
        "failed": run.failed,
        "no_forecast": run.no_forecast,
        "failure_rate": round(run.failure_rate, 4),
        "compute_seconds": round(run.elapsed_seconds, 3),
    }
    if run.mean_accuracy is not None:
        figures["mean_accuracy_estimate"] = round(run.mean_accuracy, 4)
    if run.holdout_wape is not None:
        figures["holdout_wape"] = round(run.holdout_wape, 4)
    return figures
