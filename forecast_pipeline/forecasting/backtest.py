"""Rolling-origin backtest of the forecast engine against seasonal naive and Holt-Winters.

For each origin (by default the last 4 as-of dates, 12 weeks apart) every product's history up
to the origin is forecast for the next ``horizon`` weeks and compared with what was then sold:

- **MASE**: mean absolute error over the horizon divided by the series' in-sample mean absolute
  one-week change (naive lag-1 scaling, as in M4/M5; series whose history never changes are left
  out). Averaged over products.
- **Bias**: (sum of forecasts - sum of actuals) / sum of actuals.
- **Coverage**: share of actual weeks inside the nominal 80% interval (engine only).

Results are broken down by the engine's demand class at each origin. The comparisons are the
seasonal naive forecast (same week last year) on every product, and statsmodels' Holt-Winters
(``ExponentialSmoothing``, additive trend and additive season 52, default fit) fitted product by
product on a random sample of products with at least two years of history: one fit takes ~0.1 s,
so all products at every origin would take hours. On that sample the engine is scored again so
that the two are compared on the same series.

Data: the demo history generated in memory (:func:`demo_matrix`, eligibility re-applied at each
origin), the configured database through :mod:`forecast_pipeline.source.order_history`
(:func:`database_matrix`: the products eligible at the final as-of date, so early origins include
a few products that were not yet eligible then), or the one real weekly series that ships offline
with an installed package, statsmodels' Mauna Loa CO2 (:func:`co2_matrix`; the other bundled
statsmodels data sets are monthly, quarterly or yearly).
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecast_pipeline.forecasting import engine, models

CLASSES = ("smooth", "erratic", "intermittent", "lumpy", "short")
# The engine's cost is per batch (a loop over weeks, vectorised over series): its time per series
# is only compared with Holt-Winters' when each origin forecasts at least this many series.
SPEED_MIN_SERIES = 100


@dataclass
class MethodScores:
    """Per-product results of one method over all origins (concatenated)."""

    abs_error: list[np.ndarray] = field(default_factory=list)  # (n,) sum |e| over the horizon
    scale: list[np.ndarray] = field(default_factory=list)  # (n,) in-sample mean |y_t - y_t-1|
    forecast_sum: list[np.ndarray] = field(default_factory=list)
    actual_sum: list[np.ndarray] = field(default_factory=list)
    covered: list[np.ndarray] = field(default_factory=list)  # (n,) weeks inside the interval
    demand_class: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    fits: int = 0
    outliers_capped: int = 0  # weeks the engine capped as one-off spikes, over all origins
    series_capped: int = 0  # series x origins with at least one

    def add(self, err, scale, fc, actual, demand_class, covered=None) -> None:
        self.abs_error.append(np.abs(err).sum(axis=1))
        self.scale.append(scale)
        self.forecast_sum.append(fc.sum(axis=1))
        self.actual_sum.append(actual.sum(axis=1))
        self.demand_class.append(np.asarray(demand_class, dtype=object))
        self.covered.append(np.full(len(scale), np.nan) if covered is None else covered)

    def table(self, horizon: int) -> dict[str, dict[str, float]]:
        """{class or 'all': {mase, bias, coverage, products}}."""
        if not self.scale:
            return {}
        abs_error, scale = np.concatenate(self.abs_error), np.concatenate(self.scale)
        fc, actual = np.concatenate(self.forecast_sum), np.concatenate(self.actual_sum)
        covered, classes = np.concatenate(self.covered), np.concatenate(self.demand_class)
        out = {}
        for name in (*CLASSES, "all"):
            rows = (classes == name) if name != "all" else np.ones(len(classes), dtype=bool)
            scored = rows & (scale > 0)
            if not scored.any():
                continue
            out[name] = {
                "products": int(scored.sum()),
                "mase": float(np.mean(abs_error[scored] / horizon / scale[scored])),
                "bias": float((fc[rows].sum() - actual[rows].sum()) / max(actual[rows].sum(), 1e-9)),
                "coverage": float(np.nansum(covered[rows]) / (horizon * np.isfinite(covered[rows]).sum()))
                if np.isfinite(covered[rows]).any()
                else float("nan"),
            }
        return out


@dataclass
class BacktestResult:
    label: str
    horizon: int
    origins: list[str]
    products: int
    methods: dict[str, MethodScores]
    sample_note: str = ""

    def tables(self) -> dict[str, dict[str, dict[str, float]]]:
        return {name: scores.table(self.horizon) for name, scores in self.methods.items()}


def naive_scale(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Mean absolute one-week change of each row since its first demand (0 if it never changes)."""
    diffs = np.abs(np.diff(y, axis=1))
    usable = np.arange(1, y.shape[1])[None, :] > start[:, None]
    count = usable.sum(axis=1)
    return np.where(count > 0, np.where(usable, diffs, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)


def holt_winters(y: np.ndarray, horizon: int) -> np.ndarray:
    """statsmodels ExponentialSmoothing (additive trend, additive season 52), default fit, one
    series at a time; a series whose fit fails gets the seasonal naive forecast."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    out = np.empty((y.shape[0], horizon))
    for i, series in enumerate(y):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = ExponentialSmoothing(
                    series, trend="add", seasonal="add", seasonal_periods=models.SEASON_LENGTH
                ).fit()
                out[i] = fit.forecast(horizon)
        except Exception:  # noqa: BLE001 - a failed fit falls back, as a per-product worker would
            out[i] = models.seasonal_naive(series[None, :], np.zeros(1, dtype=int), horizon)[0]
        if not np.isfinite(out[i]).all():
            out[i] = models.seasonal_naive(series[None, :], np.zeros(1, dtype=int), horizon)[0]
    return np.clip(out, 0.0, None)


def run_backtest(
    y: np.ndarray,
    *,
    label: str,
    last_origin_week: int | None = None,
    origins: int = 4,
    step: int = 12,
    horizon: int = 12,
    hw_sample: int = 200,
    eligible_at: Callable[[int], np.ndarray] | None = None,
    origin_label: Callable[[int], str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Backtest over ``origins`` cut points of the matrix ``y`` (products x weeks, oldest first).

    Origin ``k`` forecasts columns ``cut .. cut + horizon`` from columns ``< cut``, where the
    latest cut is ``last_origin_week`` (default: the last ``horizon`` weeks are the first test)
    and each earlier one is ``step`` weeks before. ``eligible_at(cut)`` may return a boolean row
    mask of the products eligible at that origin (default: all rows). ``progress(done, total)``
    is called after each origin.
    """
    n, t = y.shape
    last_cut = t - horizon if last_origin_week is None else last_origin_week
    cuts = [last_cut - k * step for k in range(origins)][::-1]
    rng = np.random.default_rng(seed)
    methods = {name: MethodScores() for name in ("engine", "seasonal_naive", "engine_on_hw_sample", "holt_winters")}
    labels = []
    for cut in cuts:
        labels.append(origin_label(cut) if origin_label else f"week {cut}")
        rows = eligible_at(cut) if eligible_at else np.ones(n, dtype=bool)
        history, actual = y[rows, :cut], y[rows, cut : cut + horizon]
        started = time.perf_counter()
        batch = engine.forecast_batch(history, horizon)
        methods["engine"].seconds += time.perf_counter() - started
        methods["engine"].fits += len(history)
        ok = batch.status == "success"
        methods["engine"].outliers_capped += int(batch.outliers_capped[ok].sum())
        methods["engine"].series_capped += int((batch.outliers_capped[ok] > 0).sum())
        start = models.first_demand_week(history)
        scale = naive_scale(history, start)
        covered = ((actual >= batch.lower - 1e-9) & (actual <= batch.upper + 1e-9)).sum(axis=1).astype(float)
        methods["engine"].add(
            (batch.forecast - actual)[ok],
            scale[ok],
            batch.forecast[ok],
            actual[ok],
            batch.demand_class[ok],
            covered[ok],
        )
        naive = models.seasonal_naive(history, start, horizon)
        methods["seasonal_naive"].add((naive - actual)[ok], scale[ok], naive[ok], actual[ok], batch.demand_class[ok])

        two_years = np.flatnonzero(ok & (cut - start >= 2 * models.SEASON_LENGTH + horizon))
        if hw_sample and len(two_years):
            pick = np.sort(rng.choice(two_years, size=min(hw_sample, len(two_years)), replace=False))
            started = time.perf_counter()
            hw = holt_winters(history[pick], horizon)
            methods["holt_winters"].seconds += time.perf_counter() - started
            methods["holt_winters"].fits += len(pick)
            cls = batch.demand_class[pick]
            methods["holt_winters"].add(hw - actual[pick], scale[pick], hw, actual[pick], cls)
            methods["engine_on_hw_sample"].add(
                batch.forecast[pick] - actual[pick],
                scale[pick],
                batch.forecast[pick],
                actual[pick],
                cls,
                covered[pick],
            )
        if progress is not None:
            progress(len(labels), len(cuts))
    note = (
        f"Holt-Winters fitted on a random sample of up to {hw_sample} products per origin with 2+ years of history"
        if hw_sample
        else "Holt-Winters skipped"
    )
    return BacktestResult(label=label, horizon=horizon, origins=labels, products=n, methods=methods, sample_note=note)


# ---------------------------------------------------------------------------------------------
# Data sources


def demo_matrix(
    products: int,
    as_of: dt.date,
    *,
    history_start: dt.date = dt.date(2019, 1, 1),
    volume: float = 0.9,
    seed: int = 7,
    min_customers: int = 2,
    min_orders: int = 3,
) -> tuple[np.ndarray, Callable[[int], np.ndarray], Callable[[int], str]]:
    """Demo history generated in memory, as a weekly matrix ending the day before ``as_of``
    (7-day weeks anchored at ``as_of``, as :mod:`forecast_pipeline.source.order_history` builds them),
    plus ``eligible_at(cut)`` applying the customer/order thresholds at each origin and a label
    function giving each origin's as-of date."""
    from forecast_pipeline.source import demo_data

    history = demo_data.generate(
        products=products,
        customers=max(400, int(products / 2.5)),
        start=history_start,
        end=as_of - dt.timedelta(days=1),
        seed=seed,
        lines_per_product_week=volume,
    )
    lines = history.order_items.dropna(subset=["product_id"]).merge(
        history.orders, left_on="order_id", right_on="id", suffixes=("", "_order")
    )
    weeks = (as_of - history_start).days // 7
    as_of_ts = pd.Timestamp(as_of)
    week_back = ((as_of_ts - lines["created_at"].dt.normalize()).dt.days.to_numpy() - 1) // 7
    keep = week_back < weeks
    col = weeks - 1 - week_back[keep]
    product = lines["product_id"].to_numpy(dtype=np.int64)[keep] - 1
    y = np.zeros((products, weeks))
    np.add.at(y, (product, col), lines["quantity"].to_numpy()[keep])

    order_col = col
    orders = lines["order_id"].to_numpy()[keep]
    customers = lines["customer_id"].to_numpy()[keep]

    def eligible_at(cut: int) -> np.ndarray:
        before = order_col < cut
        frame = pd.DataFrame({"p": product[before], "o": orders[before], "c": customers[before]})
        counts = frame.groupby("p").agg(o=("o", "nunique"), c=("c", "nunique"))
        ok = counts.index[(counts["o"] >= min_orders) & (counts["c"] >= min_customers)]
        mask = np.zeros(products, dtype=bool)
        mask[ok.to_numpy()] = True
        return mask

    def label(cut: int) -> str:
        return (as_of - dt.timedelta(weeks=weeks - cut)).isoformat()

    return y, eligible_at, label


def database_matrix(settings, as_of: dt.date) -> tuple[np.ndarray, Callable[[int], str]]:
    """Weekly history of the products eligible at ``as_of`` in the configured database."""
    from forecast_pipeline.resources import make_engine
    from forecast_pipeline.source import order_history

    window = order_history.HistoryWindow(
        as_of=as_of,
        history_start=settings.history_start,
        min_customers=settings.min_customers,
        min_orders=settings.min_orders,
    )
    db = make_engine(settings.database_url)
    with db.connect() as conn:
        eligible = order_history.fetch_eligible_products(conn, window, settings.source_query)
        ids = eligible["product_id"].tolist()
        y = order_history.fetch_weekly_history(conn, window, ids, settings.source_query)
    db.dispose()

    def label(cut: int) -> str:
        return (as_of - dt.timedelta(weeks=window.weeks - cut)).isoformat()

    return y, label


def co2_matrix() -> tuple[np.ndarray, Callable[[int], str]]:
    """statsmodels' weekly Mauna Loa CO2 (1958-2001, ppm), gaps interpolated: one real weekly
    series with trend and a yearly season, shipped with statsmodels (no download)."""
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data
    series = frame["co2"].interpolate().bfill()
    dates = series.index

    def label(cut: int) -> str:
        return pd.Timestamp(dates[cut]).date().isoformat()

    return series.to_numpy()[None, :], label


# ---------------------------------------------------------------------------------------------
# Report


def format_result(result: BacktestResult) -> str:
    tables = result.tables()
    lines = [
        f"### {result.label}",
        "",
        f"{result.products:,} series, {_origins_text(result.origins)}, horizon {result.horizon} weeks. "
        f"{result.sample_note}.",
        "",
        "| method | class | series x origins | MASE | bias | 80% coverage |",
        "|---|---|---|---|---|---|",
    ]
    for method, table in tables.items():
        for cls, row in table.items():
            coverage = "n/a" if np.isnan(row["coverage"]) else f"{row['coverage']:.1%}"
            lines.append(
                f"| {method} | {cls} | {row['products']:,} | {row['mase']:.3f} | {row['bias']:+.1%} | {coverage} |"
            )
    eng, naive = tables.get("engine", {}).get("all"), tables.get("seasonal_naive", {}).get("all")
    lines.append("")
    if eng:
        e = result.methods["engine"]
        lines.append(
            f"One-off spikes capped by the engine before fitting: {e.outliers_capped:,} weeks "
            f"in {e.series_capped:,} of {e.fits:,} series x origins."
        )
    if eng and naive:
        lines.append(f"Engine vs seasonal naive, all series: MASE {eng['mase'] / naive['mase'] - 1:+.1%}.")
    on_sample, hw = tables.get("engine_on_hw_sample", {}).get("all"), tables.get("holt_winters", {}).get("all")
    e, h = result.methods["engine"], result.methods["holt_winters"]
    if on_sample and hw and e.fits and h.fits:
        per_engine, per_hw = e.seconds / e.fits, h.seconds / h.fits
        speed = (
            f"time per series {per_engine * 1000:.2f} ms vs {per_hw * 1000:.1f} ms ({per_hw / per_engine:,.0f}x faster)"
            if _speed_comparable(result)
            else f"speed not compared (under {SPEED_MIN_SERIES} series per origin: the engine's cost is per batch)"
        )
        versus = on_sample["mase"] / hw["mase"] - 1
        lines.append(f"Engine vs Holt-Winters on the same sample: MASE {versus:+.1%}; {speed}.")
    return "\n".join(lines)


def _speed_comparable(result: BacktestResult) -> bool:
    """Whether each origin forecast enough series for the engine's time per series to mean much."""
    return result.methods["engine"].fits >= SPEED_MIN_SERIES * len(result.origins)


def _origins_text(origins: Sequence[str]) -> str:
    if len(origins) <= 6:
        return f"origins {', '.join(origins)}"
    return f"{len(origins)} origins from {origins[0]} to {origins[-1]}"


def summary_checks(result: BacktestResult) -> list[tuple[str, bool]]:
    """The issue's targets, each with whether this backtest met it."""
    tables = result.tables()
    eng, naive = tables.get("engine", {}), tables.get("seasonal_naive", {})
    checks = []
    for cls in (*CLASSES, "all"):
        if cls in eng and cls in naive:
            checks.append((f"MASE below seasonal naive ({cls})", eng[cls]["mase"] < naive[cls]["mase"]))
    if "all" in eng and "all" in naive:
        checks.append(
            ("MASE at least 10% below seasonal naive overall", eng["all"]["mase"] <= 0.9 * naive["all"]["mase"])
        )
        checks.append(("80% interval coverage within 75%-85%", 0.75 <= eng["all"]["coverage"] <= 0.85))
    on_sample, hw = tables.get("engine_on_hw_sample", {}).get("all"), tables.get("holt_winters", {}).get("all")
    e, h = result.methods["engine"], result.methods["holt_winters"]
    if on_sample and hw and e.fits and h.fits:
        checks.append(("MASE no worse than Holt-Winters (same sample)", on_sample["mase"] <= hw["mase"]))
        if _speed_comparable(result):
            faster = (h.seconds / h.fits) >= 20 * (e.seconds / e.fits)
            checks.append(("at least 20x faster than Holt-Winters", faster))
    return checks


def format_checks(checks: Sequence[tuple[str, bool]]) -> str:
    return "\n".join(f"- [{'x' if ok else ' '}] {name}" for name, ok in checks)
