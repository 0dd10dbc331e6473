"""Forecasting a whole as-of date: shards over a process pool, failure isolation, JSON payloads.

The weekly history matrix is cut into row shards, one task per shard, run on ``workers``
processes (in-process when there is one shard: a pool costs more than it saves on small runs).
A shard whose vectorised run raises is split in halves until the failing product is found, so one
bad product never costs the others their forecast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import multiprocessing
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from forecast_pipeline.forecasting.engine import BatchForecast, forecast_batch

MIN_SHARD_ROWS = 1000
SHARDS_PER_WORKER = 4
"""A run is cut into up to this many shards per worker (none under MIN_SHARD_ROWS), so shards
finish one after another and progress is reported through the model step, not all at its end."""
INTERVAL_LEVEL = 0.8

log = logging.getLogger(__name__)


@dataclass
class ForecastRun:
    """Everything one as-of date produced: payloads to cache and the figures to report."""

    as_of: dt.date
    payloads: list[dict]
    total: int
    successful: int
    no_forecast: int
    failed: int
    errors: list[tuple[int, str]]
    model_counts: dict[str, int]
    class_counts: dict[str, int]
    mean_accuracy: float | None
    holdout_wape: float | None
    outliers_capped: int = 0  # weeks capped as one-off spikes before fitting, over the forecast products
    timings: dict[str, float] = field(default_factory=dict)
    requested_products: list[int] | None = None  # None: every eligible product
    data_quality: dict[str, int] = field(default_factory=dict)  # order-line rules applied, by kind
    holdout_abs_error_sum: float = 0.0  # pooled over successes: shards' WAPEs add up from these
    holdout_actual_sum: float = 0.0
    last_run_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def failure_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0

    @property
    def compute_seconds(self) -> float:
        """The stages' seconds summed over shards: more than the run took where shards ran in
        parallel, and without the eligibility read."""
        return sum(self.timings.values())

    def redis_metadata(self, elapsed_seconds: float | None = None) -> dict:
        """``forecast:metadata:last_run``: the legacy fields plus the failure rate, accuracy and
        the number of capped outlier weeks. ``elapsed_seconds`` is the run's wall-clock time so
        far, as the legacy worker's was (the compute seconds where it is not known)."""
        elapsed = self.compute_seconds if elapsed_seconds is None else elapsed_seconds
        return {
            "last_run": self.last_run_at,
            "as_of_date": self.as_of.isoformat(),
            "total_products": self.total,
            "successful": self.successful,
            "failed": self.failed,
            "no_forecast": self.no_forecast,
            "elapsed_seconds": round(elapsed, 2),
            "compute_seconds": round(self.compute_seconds, 2),
            "failure_rate": round(self.failure_rate, 4),
            "mean_accuracy_estimate": None if self.mean_accuracy is None else round(self.mean_accuracy, 4),
            "outliers_capped": self.outliers_capped,
            "data_quality": self.data_quality,
        }


def split_rows(n: int, workers: int, min_rows: int = MIN_SHARD_ROWS) -> list[slice]:
    """Contiguous row shards: at most ``workers`` of them, none smaller than ``min_rows``
    (except when there are fewer rows than that in all)."""
    if n == 0:
        return []
    shards = max(1, min(workers, math.ceil(n / min_rows)))
    size = math.ceil(n / shards)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def forecast_isolated(
    y: np.ndarray, horizon: int, forecaster: Callable[[np.ndarray, int], BatchForecast] = forecast_batch
) -> BatchForecast:
    """Run ``forecaster`` on all rows; if it raises, bisect so only the failing rows are errors."""
    try:
        return forecaster(y, horizon)
    except Exception as exc:  # noqa: BLE001 - any model failure is isolated, reported per product
        if y.shape[0] == 1:
            return _error_rows(1, horizon, f"{type(exc).__name__}: {exc}")
        mid = y.shape[0] // 2
        return _concat(
            [forecast_isolated(y[:mid], horizon, forecaster), forecast_isolated(y[mid:], horizon, forecaster)]
        )


def _shard_task(y: np.ndarray, horizon: int) -> BatchForecast:
    return forecast_isolated(y, horizon)


def run_forecasts(
    history: np.ndarray,
    product_ids: Sequence[int],
    active_counts: np.ndarray,
    weekly_buyers: np.ndarray,
    as_of: dt.date,
    horizon: int,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> ForecastRun:
    """Forecast every row of ``history`` and build the cached JSON for each success;
    ``progress(done, total)`` is called as each shard finishes."""
    n = len(product_ids)
    started = time.perf_counter()
    shards = split_rows(n, workers * SHARDS_PER_WORKER)
    results: dict[int, BatchForecast] = {}
    done = 0
    for index, result in _run_shards(history, shards, horizon, workers):
        results[index] = result
        done += shards[index].stop - shards[index].start
        if progress:
            progress(done, n)
    batch = _concat([results[i] for i in range(len(shards))]) if shards else _error_rows(0, horizon, "")
    model_seconds = time.perf_counter() - started

    started = time.perf_counter()
    generated_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    # every product shares the weeks' dates; the arrays become Python floats in one call each
    weeks = week_dates(as_of, horizon)
    success = batch.status == "success"
    rows = np.flatnonzero(success)
    forecast, lower, upper = (batch.forecast[rows].tolist(), batch.lower[rows].tolist(), batch.upper[rows].tolist())
    payloads = [
        forecast_payload(
            product_id=int(product_ids[i]),
            as_of=as_of,
            forecast=forecast[k],
            lower=lower[k],
            upper=upper[k],
            active_count=int(active_counts[i]),
            weekly_buyers=float(weekly_buyers[i]),
            model_type=str(batch.model[i]),
            demand_class=str(batch.demand_class[i]),
            accuracy=float(batch.accuracy[i]),
            historical_weeks=int(batch.history_weeks[i]),
            generated_at=generated_at,
            outliers_capped=int(batch.outliers_capped[i]),
            weeks=weeks,
        )
        for k, i in enumerate(rows)
    ]
    holdout_actual = batch.holdout_actual[success].sum()
    return ForecastRun(
        as_of=as_of,
        payloads=payloads,
        total=n,
        successful=int(success.sum()),
        no_forecast=int((batch.status == "no_forecast").sum()),
        failed=int((batch.status == "error").sum()),
        errors=[
            (int(product_ids[i]), batch.error[i] or "unknown error") for i in np.flatnonzero(batch.status == "error")
        ],
        model_counts=dict(Counter(str(m) for m in batch.model[success])),
        class_counts=dict(Counter(str(c) for c in batch.demand_class[success])),
        mean_accuracy=float(batch.accuracy[success].mean()) if success.any() else None,
        holdout_wape=float(batch.holdout_abs_error[success].sum() / holdout_actual) if holdout_actual > 0 else None,
        outliers_capped=int(batch.outliers_capped[success].sum()),
        timings={"model_seconds": model_seconds, "payload_seconds": time.perf_counter() - started},
        holdout_abs_error_sum=float(batch.holdout_abs_error[success].sum()),
        holdout_actual_sum=float(holdout_actual),
    )


def _run_shards(
    history: np.ndarray, shards: list[slice], horizon: int, workers: int
) -> Iterator[tuple[int, BatchForecast]]:
    if len(shards) <= 1 or workers <= 1:
        for index, rows in enumerate(shards):
            yield index, _shard_task(history[rows], horizon)
        return
    # forkserver: children start from a clean, preloaded server instead of forking a process
    # that has Dagster's threads running.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["forecast_pipeline.forecasting.engine"])
    with ProcessPoolExecutor(max_workers=min(workers, len(shards)), mp_context=context) as pool:
        with _workers_without_main():  # the pool starts its processes as tasks are submitted
            futures = {pool.submit(_shard_task, history[rows], horizon): index for index, rows in enumerate(shards)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def week_dates(as_of: dt.date, horizon: int) -> list[tuple[str, str]]:
    """(week_start, week_end) of each forecast week, as the payload writes them."""
    starts = [as_of + dt.timedelta(weeks=week) for week in range(horizon)]
    return [(start.isoformat(), (start + dt.timedelta(days=6)).isoformat()) for start in starts]


_main_lock = threading.Lock()


@contextlib.contextmanager
def _workers_without_main() -> Iterator[None]:
    """Start pool processes that do not run the launching program's main module again.

    multiprocessing re-imports ``__main__`` in every worker (by path, or by name under ``-m``) so
    that functions defined there can be unpickled. The workers' task lives in this module, and
    under ``dagster asset materialize`` that main module is Dagster's command line: each worker
    imported all of Dagster before its first product (~2 s of CPU a worker; benchmarks/RESULTS.md).
    While the processes start, ``__main__`` shows neither its path nor its name.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _main_lock:
        missing = object()
        saved = {name: getattr(main, name, missing) for name in ("__file__", "__spec__")}
        try:
            main.__spec__ = None
            if saved["__file__"] is not missing:
                del main.__file__
            yield
        finally:
            for name, value in saved.items():
                if value is missing:
                    vars(main).pop(name, None)
                else:
                    setattr(main, name, value)


QUANTITY_MAX_DECIMALS = 6


def quantity_decimals(scale: float) -> int:
    """Decimals to publish quantities of this ``scale`` (a document's largest bound) with: two, as
    the legacy worker did, or more to keep three significant digits below 0.01 (a product sold by
    the tonne at 0.004 a week must not read as a forecast of 0), at most ``QUANTITY_MAX_DECIMALS``.
    Taken from the largest value, not each one, so a stopped product's forecast decaying to
    1e-50 still reads 0."""
    if not (scale > 0 and math.isfinite(scale)):
        return 2
    return min(max(2, 2 - math.floor(math.log10(scale))), QUANTITY_MAX_DECIMALS)


def forecast_payload(
    *,
    product_id: int,
    as_of: dt.date,
    forecast: Sequence[float],
    lower: Sequence[float],
    upper: Sequence[float],
    active_count: int,
    weekly_buyers: float,
    model_type: str,
    demand_class: str,
    accuracy: float,
    historical_weeks: int,
    generated_at: str,
    outliers_capped: int = 0,
    weeks: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """The legacy worker's cached JSON, field for field, plus ``demand_class``,
    ``interval_level`` and ``outliers_capped`` (weeks of history capped before fitting) in
    ``model_metadata``. ``weeks``: :func:`week_dates` of the run, computed once for all products."""
    if weeks is None:
        weeks = week_dates(as_of, len(forecast))
    weekly_active = int(round(weekly_buyers))
    places = quantity_decimals(max((float(v) for v in upper), default=0.0))  # one for all: order kept
    predictions = []
    for (start, end), point, lo, hi in zip(weeks, forecast, lower, upper, strict=True):
        predictions.append(
            {
                "week_start": start,
                "week_end": end,
                "predicted_quantity": round(float(point), places),
                "confidence_lower": round(float(lo), places),
                "confidence_upper": round(float(hi), places),
                "active_customers": weekly_active,
            }
        )
    total = round(sum(p["predicted_quantity"] for p in predictions), places)  # the sum of the weeks shown
    average = total / len(predictions) if predictions else 0.0
    return {
        "product_id": product_id,
        "as_of_date": as_of.isoformat(),
        "forecast_weeks": len(predictions),
        "predictions": predictions,
        "summary": {
            "total_predicted_quantity": total,
            "active_customers": active_count,
            "avg_weekly_quantity": round(average, places),
        },
        "model_metadata": {
            "model_type": model_type,
            "demand_class": demand_class,
            "forecast_accuracy_estimate": round(accuracy, 4),
            "interval_level": INTERVAL_LEVEL,
            "historical_weeks": historical_weeks,
            "outliers_capped": outliers_capped,
            "generated_at": generated_at,
        },
    }


def _error_rows(n: int, horizon: int, message: str) -> BatchForecast:
    zeros = np.zeros((n, horizon))
    return BatchForecast(
        status=np.full(n, "error", dtype=object),
        error=[message] * n,
        model=np.full(n, None, dtype=object),
        demand_class=np.full(n, "unknown", dtype=object),
        forecast=zeros,
        lower=zeros.copy(),
        upper=zeros.copy(),
        accuracy=np.zeros(n),
        history_weeks=np.zeros(n, dtype=np.int64),
        holdout_abs_error=np.zeros(n),
        holdout_actual=np.zeros(n),
        outliers_capped=np.zeros(n, dtype=np.int64),
    )


def _concat(parts: list[BatchForecast]) -> BatchForecast:
    if len(parts) == 1:
        return parts[0]
    return BatchForecast(
        status=np.concatenate([p.status for p in parts]),
        error=[e for p in parts for e in p.error],
        model=np.concatenate([p.model for p in parts]),
        demand_class=np.concatenate([p.demand_class for p in parts]),
        forecast=np.concatenate([p.forecast for p in parts]),
        lower=np.concatenate([p.lower for p in parts]),
        upper=np.concatenate([p.upper for p in parts]),
        accuracy=np.concatenate([p.accuracy for p in parts]),
        history_weeks=np.concatenate([p.history_weeks for p in parts]),
        holdout_abs_error=np.concatenate([p.holdout_abs_error for p in parts]),
        holdout_actual=np.concatenate([p.holdout_actual for p in parts]),
        outliers_capped=np.concatenate([p.outliers_capped for p in parts]),
    )
