"""One as-of date's forecast cut into shards of at most ``FORECAST_SHARD_SIZE`` products, and the
shards' figures added back up into the date's run figures.

Each shard is read, modelled and staged on its own (a Dagster step, a pod on Kubernetes), so a
process holds one shard's history, never the whole date's. What a shard hands to the final
publish step is a :class:`ShardResult`: counts, sums and a few top forecasts, not its forecasts
(those are in Redis), so the publish step stays small whatever the number of products.

No Dagster here: the assets wire these into steps.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from forecast_pipeline.forecasting.batch import ForecastRun

ERRORS_KEPT = 20  # failed products listed per shard (all of them are counted)
TOP_KEPT = 15  # forecasts per shard kept for the UI's table (forecast_view.TABLE_PRODUCTS)
CHARTS_KEPT = 4  # of which charted, with their recent history (forecast_view.CHART_PRODUCTS)
CHART_WEEKS = 26  # forecast_view.CHART_HISTORY_WEEKS


@dataclass(frozen=True)
class ShardSpec:
    """The products of one shard of one as-of date (``index`` of ``count``)."""

    as_of: str
    index: int
    count: int
    product_ids: np.ndarray  # int64, exact over the signed 64-bit range
    requested: bool = False  # a run for chosen products (config product_ids), not the whole date

    @property
    def mapping_key(self) -> str:
        """A Dagster mapping key: letters, digits and underscores only."""
        return f"d{self.as_of.replace('-', '_')}_s{self.index}"


def plan_shards(as_of: str, product_ids: Sequence[int], shard_size: int, requested: bool = False) -> list[ShardSpec]:
    """``ceil(n / shard_size)`` shards (one when there are no products, so the date is still
    published, empty), each at most ``shard_size`` products. Products are dealt out in turn:
    eligible products come sorted by order count, so every shard gets a like share of the big ones
    and the shards take about as long as each other."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    ids = np.asarray(list(product_ids), dtype=np.int64)
    count = max(1, math.ceil(len(ids) / shard_size))
    return [ShardSpec(as_of, i, count, ids[i::count], requested) for i in range(count)]


@dataclass
class ShardResult:
    """What one shard reports to the publish step; its forecasts are staged in Redis."""

    as_of: str
    index: int
    count: int
    total: int
    successful: int
    no_forecast: int
    failed: int
    errors: list[tuple[int, str]]  # the first ERRORS_KEPT
    model_counts: dict[str, int]
    class_counts: dict[str, int]
    accuracy_sum: float
    holdout_abs_error: float
    holdout_actual: float
    outliers_capped: int
    timings: dict[str, float]
    data_quality: dict[str, int]
    success_ids: np.ndarray  # products whose forecast this shard staged
    requested: list[int] | None  # a subset run: the shard's requested products
    top: list[dict] = field(default_factory=list)  # the shard's largest forecasts, largest first
    chart_history: dict[int, list[float]] = field(default_factory=dict)  # recent weeks of the top few
    last_run_at: str = ""

    @classmethod
    def of(cls, spec: ShardSpec, run: ForecastRun, history: np.ndarray) -> ShardResult:
        """Summarise a shard's :class:`ForecastRun`; ``history`` rows align with ``spec.product_ids``."""
        top = top_forecasts(run.payloads, TOP_KEPT)
        row = {int(p): i for i, p in enumerate(spec.product_ids)} if top else {}
        charts = {
            doc["product_id"]: history[row[doc["product_id"]], -CHART_WEEKS:].tolist() for doc in top[:CHARTS_KEPT]
        }
        return cls(
            as_of=spec.as_of,
            index=spec.index,
            count=spec.count,
            total=run.total,
            successful=run.successful,
            no_forecast=run.no_forecast,
            failed=run.failed,
            errors=list(run.errors[:ERRORS_KEPT]),
            model_counts=dict(run.model_counts),
            class_counts=dict(run.class_counts),
            accuracy_sum=(run.mean_accuracy or 0.0) * run.successful,
            holdout_abs_error=run.holdout_abs_error_sum,
            holdout_actual=run.holdout_actual_sum,
            outliers_capped=run.outliers_capped,
            timings=dict(run.timings),
            data_quality=dict(run.data_quality),
            success_ids=np.asarray([p["product_id"] for p in run.payloads], dtype=np.int64),
            requested=[int(p) for p in spec.product_ids] if spec.requested else None,
            top=top,
            chart_history=charts,
            last_run_at=run.last_run_at,
        )


def top_forecasts(payloads: Sequence[dict], n: int) -> list[dict]:
    """The ``n`` forecasts with the largest total, largest first (ties: lower product id), as
    :func:`forecast_pipeline.forecast_view.top_payloads` orders them."""
    return heapq.nsmallest(n, payloads, key=lambda p: (-p["summary"]["total_predicted_quantity"], p["product_id"]))


class IncompleteShards(RuntimeError):
    """The publish step did not get every shard of a date exactly once."""


def merge_shards(as_of: str, results: Sequence[ShardResult]) -> ForecastRun:
    """The date's run figures over all its shards (the failure rate counts every product of
    every shard). Payloads stay empty: the forecasts are staged in Redis. Raises
    :class:`IncompleteShards` unless each shard ``0..count-1`` is there exactly once."""
    results = sorted((r for r in results if r.as_of == as_of), key=lambda r: r.index)
    expected = results[0].count if results else 0
    if not results or [r.index for r in results] != list(range(expected)):
        raise IncompleteShards(
            f"as-of {as_of}: got shards {[r.index for r in results]} of {expected or '?'}; every shard must report once"
        )
    successful = sum(r.successful for r in results)
    holdout_actual = sum(r.holdout_actual for r in results)
    timings: Counter = Counter()
    quality: Counter = Counter()
    for r in results:
        timings.update(r.timings)
        quality.update(r.data_quality)
    requested = None
    if any(r.requested is not None for r in results):
        requested = sorted({p for r in results for p in (r.requested or [])})
    run = ForecastRun(
        as_of=dt.date.fromisoformat(as_of),
        payloads=[],
        total=sum(r.total for r in results),
        successful=successful,
        no_forecast=sum(r.no_forecast for r in results),
        failed=sum(r.failed for r in results),
        errors=[e for r in results for e in r.errors][:ERRORS_KEPT],
        model_counts=dict(sum((Counter(r.model_counts) for r in results), Counter())),
        class_counts=dict(sum((Counter(r.class_counts) for r in results), Counter())),
        mean_accuracy=sum(r.accuracy_sum for r in results) / successful if successful else None,
        holdout_wape=sum(r.holdout_abs_error for r in results) / holdout_actual if holdout_actual > 0 else None,
        outliers_capped=sum(r.outliers_capped for r in results),
        timings=dict(timings),
        requested_products=requested,
        data_quality={k: int(quality.get(k, 0)) for k in results[0].data_quality} | dict(quality),
        last_run_at=max(r.last_run_at for r in results) or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    run.holdout_abs_error_sum = sum(r.holdout_abs_error for r in results)
    run.holdout_actual_sum = holdout_actual
    return run


def merged_top(results: Sequence[ShardResult]) -> tuple[list[dict], dict[int, list[float]]]:
    """The date's largest forecasts over all shards, and the recent history of those charted.
    The date's top few are each among their own shard's top few, so nothing is missed."""
    top = top_forecasts([doc for r in results for doc in r.top], TOP_KEPT)
    histories = {pid: h for r in results for pid, h in r.chart_history.items()}
    return top, {doc["product_id"]: histories[doc["product_id"]] for doc in top[:CHARTS_KEPT]}


def success_ids(results: Sequence[ShardResult]) -> np.ndarray:
    """Every product the shards staged a forecast for (int64, shard by shard)."""
    arrays = [r.success_ids for r in sorted(results, key=lambda r: r.index)]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


@dataclass
class StagedShard:
    """A shard step's value: its forecasts (staged in Redis by the IO manager, then dropped) and
    the summary handed on to the publish step."""

    result: ShardResult
    payloads: list[dict]
    product_ids: np.ndarray  # every product of the shard, forecast or not


@dataclass
class DatePublish:
    """The publish step's value for one date: its figures and what its shards staged."""

    run: ForecastRun
    run_token: str  # the staging hash's token: the root run id (kept by a re-execution)
    product_ids: np.ndarray  # products staged, over all shards
