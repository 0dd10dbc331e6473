"""Model choice, holdout accuracy and prediction intervals for a block of weekly series.

How a product's forecast is decided (the README repeats this for users):

1. **Status.** A row with a non-finite quantity, or a week above ``MAX_WEEKLY_QUANTITY`` once
   spikes are capped (its squares would overflow: Infinity in the JSON), is an ``error``; fewer than
   ``MIN_HISTORY_WEEKS`` weeks since its first demand, or no demand at all, is ``no_forecast``.
   **Spikes.** One-off spikes (a data-entry error of 1,000,000 units for a product that sells
   ~10 a week) are replaced by a typical week by ``models.cap_outliers`` before anything else:
   the capped history is what every later step (class, fits, holdout choice and accuracy,
   intervals) sees. Recurring peaks, plausible promotions, normal lumps and new levels are kept;
   the number of capped weeks is ``outliers_capped``.
2. **Demand class** (Syntetos-Boylan, on the last two years since first demand): ``smooth``,
   ``erratic``, ``intermittent`` or ``lumpy`` from ADI (1.32) and CV² (0.49); ``short`` below
   ``SHORT_HISTORY_WEEKS`` weeks.
3. **Model.** Each class has candidates (smooth/erratic: SES, damped Holt; intermittent/lumpy:
   SBA, TSB, SES; plus, when two years and a holdout are available, seasonal SES for every class
   and seasonal Holt, with the season smoothed over 5 weeks or not, for smooth/erratic; short:
   recent mean). Two candidates depend on the history rather than the class: ``shift_ses`` (SES
   from the start of a level shift found by ``models.level_shift_week``: a lasting step of 1.6x
   or more with a t-statistic of 6 or more in the last 52 weeks) for rows with such a shift, and
   TSB plus ``tsb_fast`` (TSB with beta 0.5) for dormant rows (``DORMANT_WEEKS`` weeks without
   demand after selling in ``DORMANT_SHARE`` of the year before: a discontinued item). Every
   candidate is fitted, on the rows allowed to choose it, on the history minus the last
   ``horizon`` weeks and scored on those weeks, and on up to ``SELECTION_WINDOWS - 1`` earlier
   ``horizon``-week windows where the product has the history for all its candidates (a dormant
   row uses the latest window only: the earlier ones are from when it sold); the product gets the
   candidate with the lowest mean holdout MAE, refitted on the full history; smooth and erratic
   rows get the mean of their two best candidates (model ``a+b``; the longest name,
   ``seasonal_holt_raw+seasonal_holt``, is 31 characters, within ``model_type``'s 40): a simple
   combination beat picking one in the backtest (figures: benchmarks/RESULTS.md).
   SES, damped Holt, Croston and TSB fit every holdout window in one pass (``cuts``: the
   recursions are causal, so the state after each window's last week is that window's fit;
   Croston and TSB start from the weeks before the row's earliest window); the seasonal and
   level-shift candidates, whose season or shift depends on the window, are fitted per window.
   One window let a lucky flat forecast beat the right model (co2), and four beat two on the demo
   and real series (the holdout fits keep only their last state, ``paths=False``, which pays for
   most of the extra fits).
   Seasonal SES deseasonalises with ``models.seasonal_indices`` (ratios to each calendar year's
   mean, averaged over up to 3 years, smoothed over 5 weeks, shrunk 20% towards 1): a mild
   smoother that suits sparse series. Seasonal Holt (``models.seasonal_holt``) uses
   ``models.decomposed_season`` (ratios to a centred 52-week moving average, so a trend is not
   read as season, shrunk by how well the years agree) and damped-trend Holt with alpha, beta
   and phi chosen per row by one-step SSE: it is for regular seasons under a trend;
   ``seasonal_holt_raw`` leaves each year's ratios unsmoothed, which keeps sharp recurring weeks
   (holiday closures in the Chicago ridership series). Seasonal Holt is not offered to
   intermittent/lumpy rows, where it only added selection noise (the backtest's MASE rose).
4. **Accuracy estimate** = 1 - WAPE of that holdout forecast (floored at 0).
5. **Intervals.** The chosen model (refitted on the full history) is replayed from each of the
   last 52 origins; every 1..horizon-week error is divided by the larger of the forecast it
   belongs to and the series' mean weekly demand since first demand. The 10th and 90th
   percentiles of those relative errors, times the same scale for the current forecast, give the
   nominal 80% interval (relative errors carry over when the level moves; the mean floor keeps
   near-zero forecasts from producing huge ratios). Where the 10th percentile falls at or below
   zero the interval is [0, 80th percentile]: a zero lower bound already covers every zero week.
   For intermittent and lumpy rows a replayed zero week counts as the lowest error, so the lower
   bound is zero wherever 10% or more of those weeks sold nothing.
   Seasonal models are replayed with their season estimated only from the weeks before those
   origins (rows with 3 years there): errors replayed with a season fitted on the same weeks are
   too small (co2: 73% coverage, 76% out of sample). Rows with fewer than 10 past errors use
   +-1.28 standard deviations of their weekly demand, and so do new products (under a year)
   with regular demand (``SPREAD_GROUPS``): their few past origins replay too few errors. For
   ``SPREAD_BLENDED_GROUPS`` (new intermittent or lumpy products, shift, intermittent, lumpy,
   erratic: few past origins or few nonzero errors) the upper half-width is the mean of the
   replayed one and the weekly standard deviation. Finally the half-widths are multiplied by a
   factor per group (``INTERVAL_SCALE``: the class, whatever the model; ``new_regular``,
   ``short_sparse`` and ``young_sparse`` under a year, ``shift``, ``dormant``), calibrated split-conformally
   on 8 earlier origins of the demo data (``benchmarks/interval_calibration.py``; only data
   before each origin), and for ``PROFILED_CLASSES`` (smooth, erratic) by a profile that widens
   over the horizon (replayed errors pool all steps into one width). Quantities and bounds are
   clipped at zero, and a product sold in packs gets an upper bound of at least a pack
   (:func:`_pack_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecast_pipeline.forecasting import models

MIN_HISTORY_WEEKS = 8
SHORT_HISTORY_WEEKS = 26
SHORT_HOLDOUT_WEEKS = 4
SEASONAL_MIN_WEEKS = 2 * models.SEASON_LENGTH
INTERVAL_ORIGINS = 52
SELECTION_WINDOWS = 4
SEASON_PREFIX_WEEKS = 3 * models.SEASON_LENGTH
BLOCK_ROWS = 5000
INTERVAL_QUANTILES = (0.10, 0.90)
UPPER_FROM_ZERO_QUANTILE = 0.80
# Width factors (lower, upper) applied to each row's interval half-widths by group (the engine's
# class, whatever the model; under a year of history "new_regular", or "short_sparse" (under 26
# weeks) and "young_sparse" for intermittent or lumpy demand; "shift" on the level-shift model,
# "dormant"). Split-conformal: benchmarks/interval_calibration.py runs the
# engine with unit factors at 8 origins 60-102 weeks before the demo backtest's as-of (each seeing
# only the weeks before it; 3,000 products) and takes, per group, the lower factor leaving 10% of
# the actual weeks below and the upper factor leaving 20% outside in all (a zero lower bound
# covers every zero week, so the upper side takes the rest). The dormant group's upper factor is
# 0.5, not its calibrated 0, which would make the interval the forecast itself. Checked on the later
# backtest origins per group (interval_calibration.py --check) and the real series (benchmarks/RESULTS.md).
INTERVAL_SCALE = {
    "new_regular": (1.041, 1.168),  # under a year of history, regular demand: +-z x the weekly sd
    "short_sparse": (1.0, 1.806),  # under 26 weeks, intermittent or lumpy demand
    "young_sparse": (1.0, 0.803),  # 26-51 weeks, intermittent or lumpy demand
    "shift": (1.0, 0.953),
    "smooth": (1.0, 1.155),
    "erratic": (1.0, 1.065),
    "intermittent": (1.0, 0.68),
    "lumpy": (1.0, 0.347),
    "dormant": (1.0, 0.5),
}
# Groups whose interval widens over the horizon: the replayed errors pool steps 1..horizon into
# one width, but a smooth series' error grows with the step (level uncertainty adds up). Upper
# half-widths are multiplied by 1 + growth * (step position, -0.5 at step 1 .. +0.5 at the last
# step); lower ones are not: narrowed, a lower bound at zero would leave zero weeks outside.
# Growth from benchmarks/interval_calibration.py (slope of the per-step upper factor).
PROFILED_CLASSES: dict[str, float] = {"smooth": 0.11, "erratic": 0.10}
# Groups whose upper half-width blends the replayed errors with the weekly spread (see below).
SPREAD_BLENDED_GROUPS = ("short_sparse", "young_sparse", "shift", "intermittent", "lumpy", "erratic")
# Groups whose interval is the forecast +-NORMAL_80 weekly standard deviations (before their factor):
# a new product with regular demand has too few past errors for their percentiles.
SPREAD_GROUPS = ("new_regular",)
NORMAL_80 = 1.2816
MAX_WEEKLY_QUANTITY = 1e150  # the fits square weekly values: 1e154 and up overflow a float
# See _pack_floor.
PACK_MIN = 2
PACK_SELLING_SHARE = 0.2
RELATIVE_FLOOR = 1.0
# A zero week's replayed error for ZERO_FLOOR_CLASSES rows: below any real relative error, so the
# lower bound is zero wherever 10% of the replayed (origin, step) errors are zero weeks.
ZERO_WEEK_ERROR = -1e6
ZERO_FLOOR_CLASSES = ("intermittent", "lumpy")
ADI_CUTOFF = 1.32
CV2_CUTOFF = 0.49

CANDIDATES = {
    "ses": models.ses,
    "shift_ses": models.shift_ses,
    "tsb_fast": models.tsb_fast,
    "holt_damped": models.holt_damped,
    "seasonal_ses": models.seasonal_ses,
    "seasonal_holt": models.seasonal_holt,
    "seasonal_holt_raw": models.seasonal_holt_raw,
    "croston_sba": models.croston_sba,
    "tsb": models.tsb,
}
# Fitted once for all holdout windows (ModelFit.windows); the others once per window.
SHARED_PASS_CANDIDATES = ("ses", "holt_damped", "croston_sba", "tsb", "tsb_fast")
INITIALISED_CANDIDATES = ("croston_sba", "tsb", "tsb_fast")
SEASONAL_CANDIDATES = ("seasonal_ses", "seasonal_holt", "seasonal_holt_raw")
CLASS_CANDIDATES = {
    "smooth": ("ses", "holt_damped", "seasonal_ses", "seasonal_holt", "seasonal_holt_raw", "shift_ses"),
    "erratic": ("ses", "holt_damped", "seasonal_ses", "seasonal_holt", "seasonal_holt_raw", "shift_ses"),
    "intermittent": ("croston_sba", "tsb", "ses", "seasonal_ses", "shift_ses"),
    "lumpy": ("croston_sba", "tsb", "ses", "seasonal_ses", "shift_ses"),
}
# Offered to every class where the history calls for them: SES since a detected level shift
# (rows with one, models.level_shift_week), TSB for dormant rows (no demand for DORMANT_WEEKS
# weeks though they sold in at least DORMANT_SHARE of the year before).
SHIFT_CANDIDATES = ("shift_ses",)
COMBINED_CLASSES = ("smooth", "erratic")
DORMANT_CANDIDATES = ("tsb", "tsb_fast")
DORMANT_WEEKS = 8
DORMANT_SHARE = 0.3


@dataclass
class BatchForecast:
    """Per-row results of :func:`forecast_batch`; arrays are aligned with the input rows."""

    status: np.ndarray  # "success" | "no_forecast" | "error"
    error: list[str | None]
    model: np.ndarray
    demand_class: np.ndarray
    forecast: np.ndarray  # (n, horizon)
    lower: np.ndarray
    upper: np.ndarray
    accuracy: np.ndarray
    history_weeks: np.ndarray
    holdout_abs_error: np.ndarray  # sum |actual - forecast| over the holdout, for run metrics
    holdout_actual: np.ndarray  # sum of actuals over the holdout
    outliers_capped: np.ndarray  # weeks replaced by models.cap_outliers before fitting
    interval_group: np.ndarray | None = None  # the INTERVAL_SCALE group of each row


def classify(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Syntetos-Boylan demand class per row from the last two years since first demand."""
    n, t = y.shape
    window_start = np.maximum(start, t - SEASONAL_MIN_WEEKS)
    in_window = np.arange(t)[None, :] >= window_start[:, None]
    positive = (y > 0) & in_window
    nonzero = positive.sum(axis=1)
    length = np.maximum(t - window_start, 1)
    adi = length / np.maximum(nonzero, 1)
    sizes = np.where(positive, y, 0.0)
    mean = sizes.sum(axis=1) / np.maximum(nonzero, 1)
    var = (np.where(positive, (y - mean[:, None]) ** 2, 0.0)).sum(axis=1) / np.maximum(nonzero, 1)
    cv2 = var / np.maximum(mean, 1e-12) ** 2
    high_adi, high_cv2 = adi >= ADI_CUTOFF, cv2 >= CV2_CUTOFF
    return np.select(
        [~high_adi & ~high_cv2, ~high_adi & high_cv2, high_adi & ~high_cv2],
        ["smooth", "erratic", "intermittent"],
        default="lumpy",
    ).astype(object)


def forecast_batch(y: np.ndarray, horizon: int = 12) -> BatchForecast:
    """Forecast every row of ``y`` (n products x T weeks, oldest first, last column = the week
    that ends the day before the as-of date).

    Rows are processed in blocks of ``BLOCK_ROWS``: every model is vectorised over a block, and
    the models' per-alpha paths (rows x grid x weeks) stay a few hundred MB however many
    products there are.
    """
    y = np.asarray(y, dtype=float)
    if y.shape[1] < MIN_HISTORY_WEEKS:
        # Every row is no_forecast (or an error); weeks without demand before the first change
        # nothing, and give the holdout its columns (none at all within a week of the history start).
        y = np.concatenate([np.zeros((y.shape[0], horizon + MIN_HISTORY_WEEKS - y.shape[1])), y], axis=1)
    if y.shape[0] <= BLOCK_ROWS:
        return _forecast_block(y, horizon)
    return concat_batches([_forecast_block(y[i : i + BLOCK_ROWS], horizon) for i in range(0, y.shape[0], BLOCK_ROWS)])


def concat_batches(parts: list[BatchForecast]) -> BatchForecast:
    """The forecasts of consecutive row blocks as one (rows are forecast independently)."""
    return BatchForecast(
        **{
            name: [e for p in parts for e in p.error]
            if name == "error"
            else np.concatenate([getattr(p, name) for p in parts])
            for name in BatchForecast.__dataclass_fields__
        }
    )


def _forecast_block(y: np.ndarray, horizon: int) -> BatchForecast:
    n, t = y.shape
    finite = np.isfinite(y).all(axis=1)
    y = np.where(finite[:, None], np.clip(np.nan_to_num(y), 0.0, None), 0.0)
    start = models.first_demand_week(y)
    history_weeks = t - start
    y, outliers = models.cap_outliers(y, start)
    # weeks this large (spikes capped) overflow the squares and sums of the fits
    too_large = finite & (y > MAX_WEEKLY_QUANTITY).any(axis=1)
    y = np.where(too_large[:, None], 0.0, y)

    status = np.full(n, "success", dtype=object)
    status[history_weeks < MIN_HISTORY_WEEKS] = "no_forecast"
    status[~finite | too_large] = "error"
    error: list[str | None] = [None] * n
    for i in np.flatnonzero(~finite):
        error[i] = "order history contains a non-finite quantity (NaN or infinity)"
    for i in np.flatnonzero(too_large):
        error[i] = f"order history quantities too large to forecast (a week above {MAX_WEEKLY_QUANTITY:g} units)"

    demand_class = classify(y, start)
    sparse = np.isin(demand_class, ZERO_FLOOR_CLASSES)  # the pattern, also of a short history
    short = history_weeks < SHORT_HISTORY_WEEKS
    demand_class[short] = "short"
    long_enough = history_weeks >= SEASONAL_MIN_WEEKS + horizon

    model = np.full(n, "recent_mean", dtype=object)
    forecast = np.zeros((n, horizon))
    holdout_err = np.zeros(n)
    holdout_act = np.zeros(n)
    lower = np.zeros((n, horizon))
    upper = np.zeros((n, horizon))

    # Holdout: fit every candidate on history minus `horizon` weeks and score the last weeks; where
    # a row has the history, also on the `horizon` weeks before those, and average the two scores
    # (one 12-week window alone lets a lucky flat forecast beat the right model).
    shift = models.level_shift_week(y, start)
    dormant = _dormant(y, start)
    fit_cols = max(t - horizon, 1)
    holdout = y[:, fit_cols:]
    # Earlier windows: window w (1-based) is fitted on the weeks before t - (w + 1) * horizon and
    # scored on the `horizon` weeks after them; a row uses every window its history allows.
    base = np.where(long_enough, SEASONAL_MIN_WEEKS, SHORT_HISTORY_WEEKS)
    windows = []
    for w in range(1, SELECTION_WINDOWS):
        cut = t - (w + 1) * horizon
        if cut < 1:
            break
        # A dormant row is scored on the latest window only: earlier ones are from when it sold.
        windows.append((cut, (history_weeks >= base + (w + 1) * horizon) & ~dormant))
    init_end = np.full(n, fit_cols)
    for cut, has in windows:
        init_end[has] = np.minimum(init_end[has], cut)
    scores = {}
    holdout_fc = {}
    for name, fn in CANDIDATES.items():
        # Fit each candidate only on the rows allowed to choose it (the models are row-wise).
        allowed = ~short & np.array([name in CLASS_CANDIDATES.get(c, ()) for c in demand_class], dtype=bool)
        if name in SEASONAL_CANDIDATES:
            allowed &= long_enough
        if name in SHIFT_CANDIDATES:
            allowed &= shift >= 0
        if name in DORMANT_CANDIDATES:
            allowed = (allowed | dormant) & ~short
        fc = np.zeros_like(holdout)
        shared = {}
        if allowed.any():
            if name in SHARED_PASS_CANDIDATES:
                # One pass gives every window's forecast (the recursions are causal); Croston and
                # TSB start from the weeks before the row's earliest window.
                kwargs = {"cuts": (fit_cols, *(cut for cut, _ in windows))}
                if name in INITIALISED_CANDIDATES:
                    kwargs["init_end"] = init_end[allowed]
                fit = fn(y[allowed, :fit_cols], start[allowed], horizon, paths=False, **kwargs)
                shared = {cut: _scatter(allowed, f) for cut, f in fit.windows.items()}
                fc[allowed] = fit.windows[fit_cols][:, : holdout.shape[1]]
            else:
                fit = fn(y[allowed, :fit_cols], start[allowed], horizon, paths=False)
                fc[allowed] = fit.forecast[:, : holdout.shape[1]]
        holdout_fc[name] = fc
        score = np.abs(holdout - np.clip(fc, 0, None)).mean(axis=1)
        used = np.ones(n)
        for cut, has in windows:
            rows = allowed & has
            if rows.any():
                back = shared[cut][rows] if shared else fn(y[rows, :cut], start[rows], horizon, paths=False).forecast
                score[rows] += np.abs(y[rows, cut : cut + horizon] - np.clip(back, 0, None)).mean(axis=1)
                used[rows] += 1
        scores[name] = np.where(allowed, score / used, np.inf)
    best = np.full(n, "ses", dtype=object)
    best_score = np.full(n, np.inf)
    second = np.full(n, None, dtype=object)
    second_score = np.full(n, np.inf)
    for name in CANDIDATES:
        better = scores[name] < best_score
        runner_up = ~better & (scores[name] < second_score)
        second[better], second_score[better] = best[better], best_score[better]
        second[runner_up], second_score[runner_up] = name, scores[name][runner_up]
        best[better] = name
        best_score[better] = scores[name][better]
    # Smooth and erratic rows get the mean of their two best candidates (model "a+b"): a simple
    # combination beat picking one by holdout error on the demo and the real series.
    combine = ~short & ~dormant & np.isin(demand_class, COMBINED_CLASSES) & np.isfinite(second_score)
    second[~combine] = None
    first = np.where(short, "recent_mean", best).astype(object)
    model[~short] = best[~short]
    model[combine] = best[combine] + "+" + second[combine]
    holdout_sum = np.zeros_like(holdout)  # the chosen forecast over the holdout
    for name in CANDIDATES:
        rows = first == name
        holdout_sum[rows] += np.where(combine[rows], 0.5, 1.0)[:, None] * np.clip(holdout_fc[name][rows], 0, None)
        rows = second == name
        holdout_sum[rows] += 0.5 * np.clip(holdout_fc[name][rows], 0, None)
    rows = ~short
    holdout_err[rows] = np.abs(holdout[rows] - holdout_sum[rows]).sum(axis=1)
    holdout_act[rows] = holdout[rows].sum(axis=1)

    # Short histories: recent mean, scored on a shorter holdout.
    if short.any():
        short_fit = max(t - SHORT_HOLDOUT_WEEKS, 1)
        fc = models.recent_mean(y[short, :short_fit], start[short], SHORT_HOLDOUT_WEEKS).forecast
        actual = y[short, short_fit:]
        holdout_err[short] = np.abs(actual - fc[:, : actual.shape[1]]).sum(axis=1)
        holdout_act[short] = actual.sum(axis=1)

    # Interval groups, for the width factors below: the replayed errors understate the error of a
    # new level and of a short history, and differ by class (see INTERVAL_SCALE). Rows on a seasonal model take their
    # class's factor: a "seasonal" group was mostly sparse rows that chose a seasonal model, and
    # its factor suited neither them nor regular seasonal items (benchmarks/RESULTS.md).
    group = demand_class.copy()
    new_product = history_weeks < models.SEASON_LENGTH
    group[new_product & ~sparse] = "new_regular"
    group[short & sparse] = "short_sparse"
    group[new_product & ~short & sparse] = "young_sparse"
    group[np.isin(first.astype(str), SHIFT_CANDIDATES)] = "shift"
    group[dormant & ~short] = "dormant"

    # Refit the chosen models on the full history, then build intervals from their past errors; a
    # combination's forecast and interval offsets are the means of its two models'.
    for name in (*CANDIDATES, "recent_mean"):
        rows = (first == name) | (second == name)
        if not rows.any():
            continue
        fn = models.recent_mean if name == "recent_mean" else CANDIDATES[name]
        fit = fn(y[rows], start[rows], horizon)
        replay = fit
        if name in SEASONAL_CANDIDATES:
            replay = _season_out_of_sample(fn, fit, y[rows], start[rows], horizon)
        # A level-shift model's errors count only from origins after the shift.
        since = np.maximum(start[rows], shift[rows]) if name in SHIFT_CANDIDATES else start[rows]
        # Intermittent and lumpy rows: a zero week's error puts the lower bound at zero (see
        # _empirical_error_quantiles). Not short ones (their class is "short" by now): with it
        # their interval, recalibrated to 80%, scored worse, on the demo and on zero-inflated
        # products alike (benchmarks/RESULTS.md).
        zero_weeks_at_zero = np.isin(demand_class[rows], ZERO_FLOOR_CLASSES)
        # A new product with regular demand: the percentiles of its few replayed errors gave
        # intervals that covered too little (benchmarks/RESULTS.md); it takes the weekly spread, as
        # ETS takes its residuals' (and as rows with under 10 past errors do).
        spread_only = np.isin(group[rows], SPREAD_GROUPS)
        lo_off, hi_off = _empirical_error_quantiles(
            replay, y[rows], since, horizon, fit.forecast, zero_weeks_at_zero, spread_only
        )
        weight = np.where(combine[rows], 0.5, 1.0)[:, None]
        forecast[rows] += weight * fit.forecast
        lower[rows] += weight * lo_off
        upper[rows] += weight * hi_off
    lower += forecast
    upper += forecast

    # New and level-shift rows have few replayed origins (since first demand or since the
    # shift); intermittent, lumpy and erratic rows' replayed quantiles rest on a few large weeks:
    # their upper half-width is the mean of the replayed one and the spread of the weeks (lower
    # interval score at the same coverage, benchmarks/RESULTS.md).
    blend = np.isin(group, SPREAD_BLENDED_GROUPS)
    if blend.any():
        spread = _weekly_sd(y[blend], start[blend])[:, None]
        upper[blend] = forecast[blend] + 0.5 * (np.maximum(upper[blend] - forecast[blend], 0.0) + spread)
    scale = np.array([INTERVAL_SCALE.get(g, (1.0, 1.0)) for g in group]).reshape(n, 2)
    steps = np.arange(horizon)
    position = (steps - steps.mean()) / max(horizon - 1, 1)  # -0.5 .. 0.5 over the horizon
    profile = np.ones((n, horizon))
    for name, growth in PROFILED_CLASSES.items():
        profile[group == name] = 1.0 + growth * position
    lower = forecast - scale[:, :1] * (forecast - lower)
    upper = forecast + scale[:, 1:] * profile * (upper - forecast)

    forecast = np.clip(forecast, 0.0, None)
    lower = np.clip(np.minimum(lower, forecast), 0.0, None)
    upper = np.maximum(upper, forecast)
    upper = np.maximum(upper, _pack_floor(y, start)[:, None])
    accuracy = np.clip(1.0 - holdout_err / np.maximum(holdout_act, 1.0), 0.0, 1.0)

    idle = status != "success"
    for arr in (forecast, lower, upper):
        arr[idle] = 0.0
    accuracy[idle] = 0.0
    model[idle] = None
    return BatchForecast(
        status=status,
        error=error,
        model=model,
        demand_class=demand_class,
        forecast=forecast,
        lower=lower,
        upper=upper,
        accuracy=accuracy,
        history_weeks=history_weeks,
        holdout_abs_error=np.where(idle, 0.0, holdout_err),
        holdout_actual=np.where(idle, 0.0, holdout_act),
        outliers_capped=np.where(idle, 0, outliers),
        interval_group=group,
    )


def _scatter(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` for the ``rows`` mask placed in a zero array with one row per mask entry."""
    out = np.zeros((len(rows), values.shape[1]))
    out[rows] = values
    return out


def _dormant(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Rows with no demand for ``DORMANT_WEEKS``+ weeks that sold in ``DORMANT_SHARE`` of the 52
    weeks before that silence (a discontinued item; a rare seller is not dormant)."""
    t = y.shape[1]
    idle = models.trailing_zero_weeks(y, start)
    cols = np.arange(t)[None, :]
    end = (t - idle)[:, None]
    window = (cols < end) & (cols >= end - models.SEASON_LENGTH) & (cols >= start[:, None])
    share = ((y > 0) & window).sum(axis=1) / np.maximum(window.sum(axis=1), 1)
    return (idle >= DORMANT_WEEKS) & (share >= DORMANT_SHARE) & (window.sum(axis=1) >= 26)


def _season_out_of_sample(fn, fit: models.ModelFit, y: np.ndarray, start: np.ndarray, horizon: int) -> models.ModelFit:
    """The seasonal model refitted with its season estimated only from the weeks before the
    first interval origin, for rows with ``SEASON_PREFIX_WEEKS`` of history there; other rows
    keep ``fit``. Errors replayed with a season estimated from the same weeks are too small."""
    t = y.shape[1]
    cut = max(t - horizon - INTERVAL_ORIGINS + 1, 0)
    enough = cut - start >= SEASON_PREFIX_WEEKS
    if not enough.any():
        return fit
    prefix = fn(y[enough], start[enough], horizon, season_weeks=cut)
    level, trend, season = fit.level.copy(), fit.trend.copy(), fit.season.copy()
    level[enough], trend[enough], season[enough] = prefix.level, prefix.trend, prefix.season
    phi = fit.phi
    if np.ndim(phi):
        phi = phi.copy()
        phi[enough] = prefix.phi
    return models.ModelFit(level=level, trend=trend, season=season, forecast=fit.forecast, phi=phi)


def _empirical_error_quantiles(
    fit: models.ModelFit,
    y: np.ndarray,
    start: np.ndarray,
    horizon: int,
    final: np.ndarray,
    zero_weeks_at_zero: np.ndarray,
    spread_only: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper interval offsets from each row's 1..horizon-week errors over recent origins.

    Errors are taken relative to the forecast they belong to (``(actual - predicted) / scale``
    with ``scale`` the forecast, floored at ``RELATIVE_FLOOR`` of the series' mean) and the
    10th/90th percentiles are applied to the current forecast's scale. Relative errors carry over
    when the level moves (a seasonal peak, a declining item): with absolute errors a zero week of
    an intermittent item falls below a raised lower bound. Falls back to the spread of the weekly
    values when a row has too few past origins, and for ``spread_only`` rows.

    For ``zero_weeks_at_zero`` rows a week without demand counts as an error below every other
    (``ZERO_WEEK_ERROR``): where 10% or more of the replayed weeks sold nothing, the 10th
    percentile of demand is zero and so is the lower bound. Relative errors alone miss that
    when the zero weeks came at forecasts below the series' mean (their error is above -1): a
    Croston row whose forecast has since risen got a lower bound of 0.01-0.5 units, above every
    zero week of an item that sells in one week of four.
    """
    n, t = y.shape
    mask = np.arange(t)[None, :] >= start[:, None]
    mean = np.where(mask, y, 0).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    floor = np.maximum(RELATIVE_FLOOR * mean, 1e-9)
    first = max(0, t - horizon - INTERVAL_ORIGINS)
    errors = []
    for origin in range(first, t - 1):
        steps = min(horizon, t - 1 - origin)
        predicted = np.clip(fit.forecast_from(origin, steps, t), 0, None)
        actual = y[:, origin + 1 : origin + 1 + steps]
        err = (actual - predicted) / np.maximum(predicted, floor[:, None])
        err = np.where((actual <= 0) & zero_weeks_at_zero[:, None], ZERO_WEEK_ERROR, err)
        usable = origin >= start + SHORT_HOLDOUT_WEEKS
        errors.append(np.where(usable[:, None], err, np.nan))
    fb_lo, fb_hi = _spread_fallback(y, start)
    if not errors:
        return np.repeat(fb_lo[:, None], horizon, 1), np.repeat(fb_hi[:, None], horizon, 1)
    scale = np.maximum(np.clip(final, 0, None), floor[:, None])
    stacked = np.concatenate(errors, axis=1)
    lo, hi, hi_from_zero, count = _row_quantiles(stacked, (*INTERVAL_QUANTILES, UPPER_FROM_ZERO_QUANTILE))
    lo_off, hi_off = lo[:, None] * scale, hi[:, None] * scale
    # Where the 10th percentile is at or below zero, the lower bound is zero and covers every
    # zero week (often far more than 10% of an intermittent item's weeks): the 80% interval is
    # then [0, 80th percentile], not [0, 90th], which covered ~84-86% on the demo backtest. Where
    # 80% of a sparse row's errors are zero weeks that percentile is ZERO_WEEK_ERROR too: the
    # upper bound then comes from the weekly spread (SPREAD_BLENDED_GROUPS) or is the forecast.
    hi_off = np.where(final + lo_off <= 0, hi_from_zero[:, None] * scale, hi_off)
    few = ((count < 10) | spread_only)[:, None]
    return np.where(few, fb_lo[:, None], lo_off), np.where(few, fb_hi[:, None], hi_off)


def _row_quantiles(values: np.ndarray, qs: tuple[float, ...]):
    """Per-row quantiles ignoring NaN, via one sort (np.nanquantile is far slower on wide rows):
    one array per quantile, then the count of values per row."""
    ordered = np.sort(values, axis=1)  # NaN sorts last
    count = np.isfinite(values).sum(axis=1)
    out = []
    for q in qs:
        pos = q * np.maximum(count - 1, 0)
        lo_i = np.floor(pos).astype(int)
        hi_i = np.minimum(lo_i + 1, np.maximum(count - 1, 0))
        frac = pos - lo_i
        a = np.take_along_axis(ordered, lo_i[:, None], axis=1)[:, 0]
        b = np.take_along_axis(ordered, hi_i[:, None], axis=1)[:, 0]
        out.append(np.where(count > 0, a + frac * (b - a), 0.0))
    return (*out, count)


def _spread_fallback(y: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of +-1.28 standard deviations of the weeks since first demand (normal 80%)."""
    sd = _weekly_sd(y, start)
    return -NORMAL_80 * sd, NORMAL_80 * sd


def _pack_floor(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The least an upper bound may be: a product whose selling weeks of the last year all sold
    whole multiples of one pack of ``PACK_MIN`` units or more (12, 24, 36...) and that sold in
    ``PACK_SELLING_SHARE`` of them or more sells no less than a pack in a week it sells; an
    interval ending below the pack holds only its weeks without demand. 0 elsewhere, also for
    counts of single units (raised to 1, the real breach series covered 82.4%, over the target).
    The width factors, calibrated on quantities that vary, cannot see packs."""
    weeks = min(models.SEASON_LENGTH, y.shape[1])
    recent = y[:, -weeks:]
    seen = np.arange(y.shape[1] - weeks, y.shape[1])[None, :] >= start[:, None]
    selling = seen & (recent > 0)
    # whole units, and below 2^53 (exact in a float, so in an int64 too)
    whole = np.all(~selling | ((recent == np.round(recent)) & (recent < 2.0**53)), axis=1)
    units = np.where(selling & whole[:, None], np.round(recent), 0).astype(np.int64)
    pack = np.gcd.reduce(units, axis=1)
    share = selling.sum(axis=1) / np.maximum(seen.sum(axis=1), 1)
    packed = whole & (pack >= PACK_MIN) & (share >= PACK_SELLING_SHARE)
    return np.where(packed, pack, 0).astype(float)


def _weekly_sd(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Standard deviation of each row's weeks since its first demand."""
    mask = np.arange(y.shape[1])[None, :] >= start[:, None]
    count = np.maximum(mask.sum(axis=1), 1)
    mean = np.where(mask, y, 0).sum(axis=1) / count
    return np.sqrt(np.where(mask, (y - mean[:, None]) ** 2, 0).sum(axis=1) / count)
