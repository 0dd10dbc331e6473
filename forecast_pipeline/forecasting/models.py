"""Vectorised forecasting models over a matrix of weekly series.

Every model runs over all series at once (rows = products, columns = weeks, oldest first) instead
of one statsmodels fit per product: a recursion over ~350 weeks of numpy operations on a whole
shard costs what a single per-product fit does. Each series starts at its own ``start`` column
(its first week with demand); columns before it are ignored.

Each model returns a :class:`ModelFit`: the one-step-ahead forecast made at every origin (used
for parameter choice and for empirical prediction intervals) and the flat or seasonal forecast
for the next ``horizon`` weeks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEASON_LENGTH = 52
SES_ALPHAS = np.array([0.05, 0.1, 0.2, 0.3, 0.5])
CROSTON_ALPHAS = np.array([0.05, 0.1, 0.2, 0.3])
TSB_BETAS = np.array([0.02, 0.05, 0.1, 0.2])
TSB_FAST_BETA = np.array([0.5])
HOLT_BETA = 0.05
HOLT_PHI = 0.9
DECOMP_YEARS = 4
SH_ALPHAS = np.array([0.05, 0.1, 0.2, 0.3, 0.5])
SH_BETAS = np.array([0.05, 0.2])
SH_PHIS = np.array([0.9, 0.98])
OUTLIER_RATIO = 10.0
OUTLIER_LOG_SPREADS = 5.0
OUTLIER_NEIGHBOUR_WEEKS = 8
OUTLIER_TRIMMED = 2
OUTLIER_RECURRENCE_RATIO = 3.0
OUTLIER_RECURRENCES = 2
OUTLIER_MIN_DEMAND_WEEKS = 5


@dataclass(frozen=True)
class ModelFit:
    """A model's output for a block of series.

    ``origin_forecasts[i, t, h]`` would be too large to keep, so a fit keeps what is needed to
    rebuild any origin's forecast: ``level[i, t]`` is the deseasonalised level after observing
    week ``t``, ``trend[i, t]`` its trend (zero for level-only models), ``season[i, p]`` the
    multiplicative index of season position ``p`` (ones for non-seasonal models).
    """

    level: np.ndarray
    trend: np.ndarray
    season: np.ndarray | None
    forecast: np.ndarray
    phi: float | np.ndarray = 1.0  # one damping factor, or one per row
    windows: dict[int, np.ndarray] | None = None  # cut -> forecast fitted on the weeks before it

    def forecast_from(self, origin: int, horizon: int, n_weeks: int) -> np.ndarray:
        """Forecasts made at column ``origin`` for the next ``horizon`` weeks, shape (n, horizon)."""
        steps = np.arange(1, horizon + 1)
        base = self.level[:, origin, None] + self.trend[:, origin, None] * _damp_matrix(self.phi, steps)
        if self.season is None:
            return base
        positions = (origin + steps) % SEASON_LENGTH
        return base * self.season[:, positions]


def _damped_sums(phi: float, steps: np.ndarray) -> np.ndarray:
    """phi + phi^2 + ... + phi^h for each h: the damped-trend multiplier."""
    if phi == 1.0:
        return steps.astype(float)
    return phi * (1 - phi**steps) / (1 - phi)


def _damp_matrix(phi: float | np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Damped-trend multipliers, shape (1, h) for one ``phi`` or (n, h) for one per row."""
    if np.ndim(phi) == 0:
        return _damped_sums(float(phi), steps)[None, :]
    phi = np.asarray(phi, dtype=float)[:, None]
    undamped = phi == 1.0
    safe = np.where(undamped, 0.5, phi)
    return np.where(undamped, steps[None, :].astype(float), safe * (1 - safe ** steps[None, :]) / (1 - safe))


def first_demand_week(y: np.ndarray) -> np.ndarray:
    """Column of each row's first positive week; ``y.shape[1]`` for all-zero rows."""
    positive = y > 0
    return np.where(positive.any(axis=1), positive.argmax(axis=1), y.shape[1])


def cap_outliers(y: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with one-off spikes replaced by a typical week, and the number of weeks replaced per row.

    A week is a spike when it is above all of:

    - ``OUTLIER_RATIO`` times the median of the row's weeks with demand, and
      ``OUTLIER_LOG_SPREADS`` robust standard deviations (IQR / 1.349) of their logarithm above
      it: zero weeks never count, and lumpy order sizes widen the bound;
    - ``OUTLIER_RATIO`` times the mean of the ``OUTLIER_NEIGHBOUR_WEEKS`` weeks each side (since
      first demand) without the ``OUTLIER_TRIMMED`` largest of them: a new level or a season
      spanning weeks vouches for itself, a run of up to three errors does not;
    - ``OUTLIER_RECURRENCE_RATIO`` times the highest week within one week of the same position
      in any other year, and times the ``OUTLIER_RECURRENCES``-th highest week outside those
      neighbours: a peak that recurs (a season, a yearly bulk order) is kept, and so are three
      spikes of a kind in one history.

    A spike is replaced by the typical week around it: the larger of the median week with demand
    and the trimmed neighbour mean above (so an intermittent product's spike becomes an ordinary
    order, a growing product's its current level): a week lowered only to the bound still lifts
    a level or a season index (benchmarks/RESULTS.md). Rows with fewer than
    ``OUTLIER_MIN_DEMAND_WEEKS`` weeks of demand are left alone: with fewer, the upper quartile
    would be the spike itself. Only rows with a week above the first bound go through the others,
    which keeps the cost to one sort per row for clean data.
    """
    n, t = y.shape
    counts = np.zeros(n, dtype=np.int64)
    positive = y > 0
    demand_weeks = positive.sum(axis=1)
    sizes = np.sort(np.where(positive, y, np.inf), axis=1)  # log only the few values used: it is slow
    q25, median, q75 = _sorted_row_log_quantiles(sizes, demand_weeks, (0.25, 0.5, 0.75))
    spread = (q75 - q25) / 1.349
    bound = np.exp(median + np.maximum(np.log(OUTLIER_RATIO), OUTLIER_LOG_SPREADS * spread))
    bound = np.where(demand_weeks >= OUTLIER_MIN_DEMAND_WEEKS, bound, np.inf)[:, None]
    rows = np.flatnonzero((y > bound).any(axis=1))
    if not len(rows):
        return y, counts
    block, bound = y[rows], bound[rows]
    neighbours = _trimmed_neighbour_mean(block, start[rows])
    typical = np.maximum(np.exp(median[rows])[:, None], neighbours)
    bound = np.maximum(bound, OUTLIER_RATIO * neighbours)
    bound = np.maximum(bound, OUTLIER_RECURRENCE_RATIO * _same_weeks_other_years(block))
    capped = block > bound
    row, col = np.nonzero(capped)
    if len(row):  # only the weeks still capped: a few per spiky row
        far = np.abs(np.arange(t)[None, :] - col[:, None]) > OUTLIER_NEIGHBOUR_WEEKS
        elsewhere = np.sort(np.where(far, block[row], 0.0), axis=1)[:, -OUTLIER_RECURRENCES]
        bound[row, col] = np.maximum(bound[row, col], OUTLIER_RECURRENCE_RATIO * elsewhere)
        capped = block > bound
    counts[rows] = capped.sum(axis=1)
    y = y.copy()
    y[rows] = np.where(capped, typical, block)
    return y, counts


def _sorted_row_log_quantiles(ordered: np.ndarray, count: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Quantiles of the logarithm of the first ``count`` (positive) values of each sorted row."""
    out = []
    empty = count == 0
    for q in qs:
        pos = q * np.maximum(count - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
        a = np.log(np.where(empty, 1.0, np.take_along_axis(ordered, lo[:, None], axis=1)[:, 0]))
        b = np.log(np.where(empty, 1.0, np.take_along_axis(ordered, hi[:, None], axis=1)[:, 0]))
        out.append(a + (pos - lo) * (b - a))
    return out


def _trimmed_neighbour_mean(y: np.ndarray, start: np.ndarray, chunk_rows: int = 500) -> np.ndarray:
    """Per week, the mean of the ``OUTLIER_NEIGHBOUR_WEEKS`` weeks each side since first demand
    (itself excluded) without their ``OUTLIER_TRIMMED`` largest values; 0 where none are left.
    Rows go ``chunk_rows`` at a time: the windows are (rows x weeks x 17) arrays."""
    if len(y) > chunk_rows:
        parts = [
            _trimmed_neighbour_mean(y[i : i + chunk_rows], start[i : i + chunk_rows])
            for i in range(0, len(y), chunk_rows)
        ]
        return np.concatenate(parts)
    n, t = y.shape
    w = OUTLIER_NEIGHBOUR_WEEKS
    padded = np.full((n, t + 2 * w), np.nan)
    padded[:, w : w + t] = np.where(np.arange(t)[None, :] >= start[:, None], y, np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1, axis=1).copy()
    windows[:, :, w] = np.nan  # the week itself
    ordered = np.sort(windows, axis=2)  # NaN last
    kept = np.maximum(np.isfinite(windows).sum(axis=2) - OUTLIER_TRIMMED, 0)
    sums = np.concatenate([np.zeros((n, t, 1)), np.nancumsum(ordered, axis=2)], axis=2)
    total = np.take_along_axis(sums, kept[:, :, None], axis=2)[:, :, 0]
    return np.where(kept > 0, total / np.maximum(kept, 1), 0.0)


def _same_weeks_other_years(y: np.ndarray) -> np.ndarray:
    """For every week, the highest value within one week of the same position in other years."""
    around = y.copy()
    around[:, 1:] = np.maximum(around[:, 1:], y[:, :-1])
    around[:, :-1] = np.maximum(around[:, :-1], y[:, 1:])
    other = np.zeros_like(y)
    for shift in range(SEASON_LENGTH, y.shape[1], SEASON_LENGTH):
        other[:, :-shift] = np.maximum(other[:, :-shift], around[:, shift:])
        other[:, shift:] = np.maximum(other[:, shift:], around[:, :-shift])
    return other


def _initial_level(y: np.ndarray, start: np.ndarray, weeks: int = 8) -> np.ndarray:
    """Mean of the first ``weeks`` weeks of each series (from its own start)."""
    n, t = y.shape
    cols = start[:, None] + np.arange(weeks)[None, :]
    valid = cols < t
    vals = np.where(valid, y[np.arange(n)[:, None], np.minimum(cols, t - 1)], 0.0)
    return vals.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


# The recursions below keep their state grid-major, (grid, rows), and update every row every week:
# numpy's inner loops then run along the rows in one contiguous pass. A row's weeks before its first
# demand must leave its state as it was: SES and Holt read them as their initial level (a zero
# error, a zero step), Croston and TSB multiply their updates by ``_started`` (1 or 0).


def _weeks_from_start(y: np.ndarray, start: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """(t, n) contiguous copy of ``y``, each week's values for all rows side by side, with the weeks
    before each row's ``start`` set to ``fill`` (per row) where given."""
    weeks = np.ascontiguousarray(y.T)
    if fill is not None:
        before = np.arange(y.shape[1])[:, None] < start[None, :]
        np.copyto(weeks, np.broadcast_to(fill[None, :], weeks.shape), where=before)
    return weeks


def _started(start: np.ndarray, t: int) -> np.ndarray:
    """(t, n): 1.0 from each row's ``start`` on, 0.0 before."""
    return (np.arange(t)[:, None] >= start[None, :]).astype(float)


def _chosen_path(path: np.ndarray, best: np.ndarray) -> np.ndarray:
    """(n, t) path of each row's chosen grid entry from a week-major (t, grid, n) path array."""
    return np.ascontiguousarray(path[:, best, np.arange(path.shape[2])].T)


def _pick_best(sse: np.ndarray) -> np.ndarray:
    """Index of the lowest in-sample squared error per row of a grid-major (grid, n) array (ties
    -> first, the smoothest)."""
    return np.argmin(sse, axis=0)


def _window_forecasts(snaps: dict, horizon: int, make) -> dict[int, np.ndarray]:
    """Per holdout cut: each row's forecast from the grid entry with the lowest SSE before the cut
    (``make(state, horizon)`` builds it from that cut's saved grid-major state)."""
    out = {}
    for cut, (sse, *state) in snaps.items():
        best = _pick_best(sse)
        rows = np.arange(sse.shape[1])
        out[cut] = make([st[best, rows] for st in state], horizon)
    return out


def ses(
    y: np.ndarray,
    start: np.ndarray,
    horizon: int,
    season: np.ndarray | None = None,
    paths: bool = True,
    cuts: tuple[int, ...] = (),
) -> ModelFit:
    """Simple exponential smoothing, alpha chosen per series from a grid by one-step SSE.

    With ``season`` given the series is deseasonalised first and the forecast reseasonalised.
    ``paths=False`` (every model takes it) keeps only the last week's state: enough for the
    forecast, which is all the engine's holdout windows need, at a fraction of the memory traffic.
    ``cuts`` (SES, damped Holt, Croston and TSB take it): the same pass also gives the forecast a
    fit on the weeks before each cut would (``ModelFit.windows``): the recursion is causal, so
    the engine's holdout windows share one pass instead of one fit each.
    """
    n, t = y.shape
    if season is not None:
        y = y / season[:, np.arange(t) % SEASON_LENGTH]
    g = len(SES_ALPHAS)
    alphas = SES_ALPHAS[:, None]
    level0 = _initial_level(y, start)
    level = np.repeat(level0[None, :], g, axis=0)  # grid-major (see above)
    sse = np.zeros((g, n))
    err, square = np.empty((g, n)), np.empty((g, n))
    path = np.empty((t if paths else 1, g, n))  # week-major: contiguous writes
    weeks = _weeks_from_start(y, start, fill=level0)
    snaps = {}
    for col in range(t):  # in place: this loop is most of the engine's time
        np.subtract(weeks[col], level, out=err)
        sse += np.multiply(err, err, out=square)
        err *= alphas
        level += err
        if paths:
            path[col] = level
        if col + 1 in cuts:
            snaps[col + 1] = (sse.copy(), level.copy())
    if not paths:
        path[0] = level
    best = _pick_best(sse)
    chosen = _chosen_path(path, best)
    fit = _flat_fit(chosen, horizon, season, t)
    if snaps:

        def flat(state, h, season=season):
            return np.repeat(state[0][:, None], h, axis=1)

        windows = _window_forecasts(snaps, horizon, flat)
        if season is not None:
            windows = {c: f * season[:, (c + np.arange(horizon)) % SEASON_LENGTH] for c, f in windows.items()}
        fit = ModelFit(fit.level, fit.trend, fit.season, fit.forecast, fit.phi, windows)
    return fit


def holt_damped(
    y: np.ndarray, start: np.ndarray, horizon: int, paths: bool = True, cuts: tuple[int, ...] = ()
) -> ModelFit:
    """Additive damped-trend Holt smoothing (phi 0.9), alpha chosen per series by one-step SSE."""
    n, t = y.shape
    g = len(SES_ALPHAS)
    alphas = SES_ALPHAS[:, None]
    gain = HOLT_BETA * alphas
    level0 = _initial_level(y, start)
    level = np.repeat(level0[None, :], g, axis=0)  # grid-major, as in ses
    trend = np.zeros_like(level)
    sse = np.zeros((g, n))
    err, damped, square = np.empty((g, n)), np.empty((g, n)), np.empty((g, n))
    level_path = np.empty((t if paths else 1, g, n))
    trend_path = np.empty_like(level_path)
    weeks = _weeks_from_start(y, start, fill=level0)
    snaps = {}
    for col in range(t):
        np.multiply(trend, HOLT_PHI, out=damped)
        level += damped  # the one-step prediction
        np.subtract(weeks[col], level, out=err)
        sse += np.multiply(err, err, out=square)
        np.multiply(gain, err, out=trend)
        trend += damped
        err *= alphas
        level += err
        if paths:
            level_path[col] = level
            trend_path[col] = trend
        if col + 1 in cuts:
            snaps[col + 1] = (sse.copy(), level.copy(), trend.copy())
    if not paths:
        level_path[0], trend_path[0] = level, trend
    best = _pick_best(sse)
    lv, tr = _chosen_path(level_path, best), _chosen_path(trend_path, best)
    steps = np.arange(1, horizon + 1)
    forecast = lv[:, -1, None] + tr[:, -1, None] * _damped_sums(HOLT_PHI, steps)[None, :]
    windows = None
    if snaps:

        def damped_trend(state, h):
            return state[0][:, None] + state[1][:, None] * _damped_sums(HOLT_PHI, np.arange(1, h + 1))[None, :]

        windows = _window_forecasts(snaps, horizon, damped_trend)
    return ModelFit(level=lv, trend=tr, season=None, forecast=forecast, phi=HOLT_PHI, windows=windows)


def seasonal_indices(y: np.ndarray, start: np.ndarray, max_years: int = 3) -> np.ndarray:
    """Multiplicative weekly season indices (n, 52) from the last full years of each series.

    Each year's weeks are divided by that year's mean, averaged over up to ``max_years`` years,
    smoothed over neighbouring weeks and shrunk towards 1 so that noise is not read as season.
    Positions are absolute column numbers modulo 52, so index ``p`` applies to every column
    ``c`` with ``c % 52 == p``.
    """
    n, t = y.shape
    ratio_sum = np.zeros((n, SEASON_LENGTH))
    years_used = np.zeros(n)
    for k in range(max_years):
        hi = t - k * SEASON_LENGTH
        lo = hi - SEASON_LENGTH
        if lo < 0:
            break
        full = start <= lo
        block = y[:, lo:hi]
        mean = block.mean(axis=1)
        ok = full & (mean > 0)
        ratios = np.where(ok[:, None], block / np.where(mean > 0, mean, 1.0)[:, None], 0.0)
        # place each block column at its absolute season position
        positions = np.arange(lo, hi) % SEASON_LENGTH
        ratio_sum[:, positions] += ratios
        years_used += ok
    raw = np.where(years_used[:, None] > 0, ratio_sum / np.maximum(years_used, 1)[:, None], 1.0)
    # circular 5-week moving average
    padded = np.concatenate([raw[:, -2:], raw, raw[:, :2]], axis=1)
    kernel = np.array([1, 2, 3, 2, 1], dtype=float) / 9.0
    smooth = sum(kernel[j] * padded[:, j : j + SEASON_LENGTH] for j in range(5))
    shrink = np.where(years_used >= 2, 0.8, 0.5)[:, None]
    season = 1.0 + shrink * (smooth - 1.0)
    season = np.clip(season, 0.05, None)
    return season / season.mean(axis=1, keepdims=True)


def seasonal_ses(
    y: np.ndarray, start: np.ndarray, horizon: int, season_weeks: int | None = None, paths: bool = True
) -> ModelFit:
    """SES on the deseasonalised series, reseasonalised with :func:`seasonal_indices`.

    ``season_weeks`` estimates the season from the first that many weeks only (see
    :func:`seasonal_holt`).
    """
    return ses(y, start, horizon, season=seasonal_indices(y[:, :season_weeks], start), paths=paths)


def decomposed_season(
    y: np.ndarray, start: np.ndarray, max_years: int = DECOMP_YEARS, smooth: bool = True
) -> np.ndarray:
    """Multiplicative season indices (n, 52) by classical decomposition, shrunk by evidence.

    Each week is divided by the centred 2x52 moving average around it (which removes the trend
    and the level, unlike a ratio to the calendar year's mean), over the last ``max_years`` years
    whose moving average is defined (26 weeks each side, all since first demand). Each year's
    ratios are smoothed over 5 weeks, then averaged per season position. The mean profile is
    shrunk towards 1 by how well the years agree: with ``s2`` the squared spread of the mean
    profile around its mean and ``v`` the variance of that mean estimated from the year-to-year
    disagreement, the season keeps a share ``max(0, 1 - v / s2)`` (James-Stein). A regular season
    keeps nearly all of its amplitude; noise (years that disagree) is shrunk to a flat 1.
    """
    n, t = y.shape
    half = SEASON_LENGTH // 2
    flat = np.ones((n, SEASON_LENGTH))
    last = t - half - 1  # last column with a centred moving average
    if last - half < 0:
        return flat
    cumsum = np.concatenate([np.zeros((n, 1)), np.cumsum(y, axis=1)], axis=1)
    cols = np.arange(half, last + 1)
    inner = cumsum[:, cols + half] - cumsum[:, cols - half + 1]  # y[c-25 .. c+25]
    ma = (inner + 0.5 * (y[:, cols - half] + y[:, cols + half])) / SEASON_LENGTH
    ratio = np.where(ma > 0, y[:, cols] / np.where(ma > 0, ma, 1.0), np.nan)
    ratio = np.where(cols[None, :] - half >= start[:, None], ratio, np.nan)
    years = []
    for k in range(max_years):
        hi = len(cols) - k * SEASON_LENGTH
        lo = hi - SEASON_LENGTH
        if lo < 0:
            break
        block = np.full((n, SEASON_LENGTH), np.nan)
        block[:, cols[lo:hi] % SEASON_LENGTH] = ratio[:, lo:hi]
        years.append(block)
    if not years:
        return flat
    stack = np.stack(years)  # (years, n, 52)
    # A year counts only when all its 52 ratios are defined; smooth it circularly over 5 weeks.
    complete = np.isfinite(stack).all(axis=2)  # (years, n)
    stack = np.where(complete[:, :, None], stack, 0.0)
    if smooth:
        padded = np.concatenate([stack[:, :, -2:], stack, stack[:, :, :2]], axis=2)
        kernel = np.array([1, 2, 3, 2, 1], dtype=float) / 9.0
        stack = sum(kernel[j] * padded[:, :, j : j + SEASON_LENGTH] for j in range(5))
    count = complete.sum(axis=0)  # (n,)
    mean = stack.sum(axis=0) / np.maximum(count, 1)[:, None]
    dev = np.where(complete[:, :, None], stack - mean[None], 0.0)
    within = (dev**2).sum(axis=0).mean(axis=1) / np.maximum(count - 1, 1)  # per-position variance
    spread = ((mean - mean.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)
    keep = np.where(
        (count >= 2) & (spread > 0),
        np.clip(1 - within / np.maximum(count, 1) / np.where(spread > 0, spread, 1.0), 0, 1),
        0.0,
    )
    centred = mean / np.where(mean.mean(axis=1, keepdims=True) > 0, mean.mean(axis=1, keepdims=True), 1.0)
    season = np.clip(1.0 + keep[:, None] * (centred - 1.0), 0.05, None)
    return season / season.mean(axis=1, keepdims=True)


def seasonal_holt(
    y: np.ndarray,
    start: np.ndarray,
    horizon: int,
    season_weeks: int | None = None,
    smooth: bool = True,
    paths: bool = True,
) -> ModelFit:
    """Damped-trend Holt on the series deseasonalised by :func:`decomposed_season`.

    Alpha, beta and phi are chosen per series from a small grid by one-step SSE. With
    ``season_weeks`` the season is estimated from the first that many weeks only, so that
    forecasts replayed from later origins are out of sample for it (the engine's intervals).
    """
    n, t = y.shape
    season = decomposed_season(y[:, :season_weeks], start, smooth=smooth)
    z = y / season[:, np.arange(t) % SEASON_LENGTH]
    grid = [g.ravel()[None, :] for g in np.meshgrid(SH_ALPHAS, SH_BETAS, SH_PHIS, indexing="ij")]
    level0 = _initial_level(z, start)
    # Choose the parameters without keeping paths, then rerun only the chosen ones with paths:
    # (rows x grid x weeks) paths would be the bulk of the time and memory.
    sse, last_level, last_trend = _holt_pass(z, start, level0, *grid)
    best = _pick_best(sse)
    alpha, beta, phi = (g[0, best][:, None] for g in grid)
    if paths:
        _, lv, tr = _holt_pass(z, start, level0, alpha, beta, phi, paths=True)
    else:
        rows = np.arange(n)
        lv, tr = last_level[best, rows][:, None], last_trend[best, rows][:, None]
    phi = phi[:, 0]
    steps = np.arange(1, horizon + 1)
    forecast = (lv[:, -1, None] + tr[:, -1, None] * _damp_matrix(phi, steps)) * season[
        :, (t - 1 + steps) % SEASON_LENGTH
    ]
    return ModelFit(level=lv, trend=tr, season=season, forecast=forecast, phi=phi)


def seasonal_holt_raw(
    y: np.ndarray, start: np.ndarray, horizon: int, season_weeks: int | None = None, paths: bool = True
) -> ModelFit:
    """:func:`seasonal_holt` with each year's ratios left unsmoothed: sharp, recurring weeks (a
    holiday closure, a Christmas peak) keep their depth; the James-Stein shrinkage still flattens
    a season that the years do not agree on."""
    return seasonal_holt(y, start, horizon, season_weeks=season_weeks, smooth=False, paths=paths)


def _holt_pass(z, start, level0, alphas, betas, phis, paths: bool = False):
    """One damped-trend Holt recursion per column of the parameter arrays (each (1 or n, g)).

    Returns the one-step SSE (g, n) and, with ``paths``, the level and trend after every week,
    (n, t) for g == 1 (without, the last week's level and trend of every grid entry, (g, n)).
    """
    n, t = z.shape
    g = alphas.shape[1]
    alphas, phis = alphas.T, phis.T  # grid-major, as in ses: (g, 1) for a shared grid, (1, n) per row
    gain_trend = betas.T * alphas
    level = np.repeat(level0[None, :], g, axis=0)
    trend = np.zeros_like(level)
    sse = np.zeros((g, n))
    err, damped, square = np.empty((g, n)), np.empty((g, n)), np.empty((g, n))
    level_path = np.empty((t, n)) if paths else None
    trend_path = np.empty((t, n)) if paths else None
    weeks = _weeks_from_start(z, start, fill=level0)
    for col in range(t):
        np.multiply(phis, trend, out=damped)
        level += damped
        np.subtract(weeks[col], level, out=err)
        sse += np.multiply(err, err, out=square)
        np.multiply(gain_trend, err, out=trend)
        trend += damped
        err *= alphas
        level += err
        if paths:
            level_path[col] = level[0]
            trend_path[col] = trend[0]
    if not paths:
        return sse, level, trend
    return sse, np.ascontiguousarray(level_path.T), np.ascontiguousarray(trend_path.T)


SHIFT_SEARCH_WEEKS = 52  # a new level may start in any of the last 52 weeks ...
SHIFT_MIN_AFTER = 8  # ... with at least this many weeks of it
SHIFT_MIN_BEFORE = 26  # compared with up to 52 weeks before it, at least this many
SHIFT_MIN_FACTOR = 1.6
SHIFT_MIN_T = 6.0


def level_shift_week(
    y: np.ndarray, start: np.ndarray, min_after: int = SHIFT_MIN_AFTER, min_t: float = SHIFT_MIN_T
) -> np.ndarray:
    """The week a lasting level shift began in each row, or -1.

    For every candidate week ``k`` of the last 52 (leaving ``min_after`` weeks after it) the mean
    of the weeks from ``k`` on is compared with the mean of up to 52 weeks before ``k`` (26 at
    least, all since first demand): a shift needs a ratio of ``SHIFT_MIN_FACTOR`` or more and a
    two-sample t-statistic of ``min_t`` or more (a one-off spike is capped before this, and one
    good month does not make a t of 6 on 26+ weeks); the week with the largest t wins. Vectorised:
    one pass of cumulative sums per candidate week.
    """
    n, t = y.shape
    out = np.full(n, -1)
    if t < SHIFT_MIN_BEFORE + min_after:
        return out
    cumsum = np.concatenate([np.zeros((n, 1)), np.cumsum(y, axis=1)], axis=1)
    cumsq = np.concatenate([np.zeros((n, 1)), np.cumsum(y * y, axis=1)], axis=1)
    best = np.zeros(n)
    rows = np.arange(n)
    for k in range(max(t - SHIFT_SEARCH_WEEKS, SHIFT_MIN_BEFORE), t - min_after + 1):
        lo = np.maximum(start, k - SEASON_LENGTH)
        n1, n2 = k - lo, t - k
        s1 = cumsum[:, k] - cumsum[rows, lo]
        q1 = cumsq[:, k] - cumsq[rows, lo]
        s2, q2 = cumsum[:, t] - cumsum[:, k], cumsq[:, t] - cumsq[:, k]
        m1, m2 = s1 / np.maximum(n1, 1), s2 / n2
        var = (q1 - n1 * m1**2 + q2 - n2 * m2**2) / np.maximum(n1 + n2 - 2, 1)
        tstat = np.abs(m2 - m1) / np.sqrt(np.maximum(var, 1e-12) * (1 / np.maximum(n1, 1) + 1 / n2))
        factor = np.maximum(m1, m2) / np.maximum(np.minimum(m1, m2), 1e-9)
        hit = (n1 >= SHIFT_MIN_BEFORE) & (factor >= SHIFT_MIN_FACTOR) & (tstat >= min_t) & (tstat > best)
        best = np.where(hit, tstat, best)
        out = np.where(hit, k, out)
    return out


def shift_ses(y: np.ndarray, start: np.ndarray, horizon: int, paths: bool = True) -> ModelFit:
    """SES fitted only on the weeks since a detected level shift (plain SES where none is found):
    with the smallest alphas SES takes months to leave an old level behind."""
    shift = level_shift_week(y, start)
    return ses(y, np.maximum(start, shift), horizon, paths=paths)


def tsb_fast(
    y: np.ndarray,
    start: np.ndarray,
    horizon: int,
    paths: bool = True,
    cuts: tuple[int, ...] = (),
    init_end: np.ndarray | None = None,
) -> ModelFit:
    """TSB with the demand probability's beta fixed at 0.5: for an item that has stopped selling
    the in-sample error (years of steady sales) picks a slow beta that keeps forecasting demand."""
    return tsb(y, start, horizon, betas=TSB_FAST_BETA, paths=paths, cuts=cuts, init_end=init_end)


def trailing_zero_weeks(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Weeks since the last week with demand (0 if the last week had demand)."""
    t = y.shape[1]
    positive = (y > 0) & (np.arange(t)[None, :] >= start[:, None])
    last = np.where(positive.any(axis=1), t - 1 - np.argmax(positive[:, ::-1], axis=1), -1)
    return np.where(last >= 0, t - 1 - last, t - start)


def croston_sba(
    y: np.ndarray,
    start: np.ndarray,
    horizon: int,
    paths: bool = True,
    cuts: tuple[int, ...] = (),
    init_end: np.ndarray | None = None,
) -> ModelFit:
    """Croston's method with the Syntetos-Boylan bias correction, for intermittent demand.

    Demand sizes and intervals between demands are smoothed separately and only when demand
    occurs; the forecast is ``(1 - alpha/2) * size / interval``. Alpha is picked per series.
    The initial size and interval come from the weeks before ``init_end`` (per row; default all):
    holdout windows sharing one pass (``cuts``) start from the weeks before the earliest of them.
    """
    n, t = y.shape
    alphas = CROSTON_ALPHAS[:, None]
    g = len(CROSTON_ALPHAS)
    size = np.repeat(_initial_size(y, start, init_end)[None, :], g, axis=0)  # grid-major, as in ses
    interval = np.repeat(_initial_interval(y, start, init_end)[None, :], g, axis=0)
    since = np.ones((g, n))
    correction = 1 - alphas / 2
    sse = np.zeros((g, n))
    err, tmp, square = np.empty((g, n)), np.empty((g, n)), np.empty((g, n))
    weeks = _weeks_from_start(y, start, fill=np.zeros(n))  # ignored weeks: finite, then masked
    started = _started(start, t)
    hits = (weeks > 0) & (started > 0)
    path = np.empty((t if paths else 1, g, n))
    rate = correction * size / interval  # the forecast: one division a week serves the error and the path
    snaps = {}
    for col in range(t):
        obs, hit, on = weeks[col], hits[col], started[col]
        np.subtract(obs, rate, out=err)
        err *= on
        sse += np.multiply(err, err, out=square)
        if hit.any():
            np.subtract(obs, size, out=tmp)
            tmp *= hit
            tmp *= alphas
            size += tmp
            np.subtract(since, interval, out=tmp)
            tmp *= hit
            tmp *= alphas
            interval += tmp
            since += on
            np.copyto(since, 1.0, where=hit)
            np.multiply(correction, size, out=rate)
            rate /= interval
        else:
            since += on
        if paths:
            path[col] = rate
        if col + 1 in cuts:
            snaps[col + 1] = (sse.copy(), rate.copy())
    if not paths:
        path[0] = rate
    return _rate_fit(path, sse, snaps, horizon)


def tsb(
    y: np.ndarray,
    start: np.ndarray,
    horizon: int,
    betas: np.ndarray = TSB_BETAS,
    paths: bool = True,
    cuts: tuple[int, ...] = (),
    init_end: np.ndarray | None = None,
) -> ModelFit:
    """Teunter-Syntetos-Babai: smooths demand probability every week, so dying items decay.

    Size uses alpha 0.1; the probability's beta is picked per series from a grid. ``cuts`` and
    ``init_end`` as for :func:`croston_sba`.
    """
    n, t = y.shape
    g = len(betas)
    betas = np.asarray(betas, dtype=float)[:, None]
    alpha = 0.1
    size = np.repeat(_initial_size(y, start, init_end)[None, :], g, axis=0)  # grid-major, as in ses
    prob = np.repeat((1.0 / _initial_interval(y, start, init_end))[None, :], g, axis=0)
    sse = np.zeros((g, n))
    err, tmp, square, rate = np.empty((g, n)), np.empty((g, n)), np.empty((g, n)), prob * size
    path = np.empty((t if paths else 1, g, n))
    weeks = _weeks_from_start(y, start, fill=np.zeros(n))  # ignored weeks: finite, then masked
    started = _started(start, t)
    hits = ((weeks > 0) & (started > 0)).astype(float)
    snaps = {}
    for col in range(t):
        obs, hit, on = weeks[col], hits[col], started[col]
        np.subtract(obs, rate, out=err)
        err *= on
        sse += np.multiply(err, err, out=square)
        np.subtract(hit, prob, out=tmp)
        tmp *= betas
        tmp *= on
        prob += tmp
        np.subtract(obs, size, out=tmp)
        tmp *= hit
        tmp *= alpha
        size += tmp
        np.multiply(prob, size, out=rate)
        if paths:
            path[col] = rate
        if col + 1 in cuts:
            snaps[col + 1] = (sse.copy(), rate.copy())
    if not paths:
        path[0] = rate
    return _rate_fit(path, sse, snaps, horizon)


def _rate_fit(path: np.ndarray, sse: np.ndarray, snaps: dict, horizon: int) -> ModelFit:
    """Croston's and TSB's fit: each row's best grid entry's demand rate, flat over the horizon,
    and the same for each holdout cut in ``snaps``."""
    fit = _flat_fit(_chosen_path(path, _pick_best(sse)), horizon, None)
    if snaps:
        windows = _window_forecasts(snaps, horizon, lambda s, h: np.repeat(s[0][:, None], h, axis=1))
        fit = ModelFit(fit.level, fit.trend, fit.season, fit.forecast, fit.phi, windows)
    return fit


def recent_mean(y: np.ndarray, start: np.ndarray, horizon: int, window: int = 12) -> ModelFit:
    """Mean of the last ``window`` weeks (or all weeks since start): the short-history fallback."""
    n, t = y.shape
    cumsum = np.concatenate([np.zeros((n, 1)), np.cumsum(y, axis=1)], axis=1)
    cols = np.arange(t)
    lo = np.maximum(start[:, None], cols[None, :] - window + 1)
    count = np.maximum(cols[None, :] - lo + 1, 1)
    level = (cumsum[:, cols + 1] - np.take_along_axis(cumsum, np.minimum(lo, t), axis=1)) / count
    level = np.where(cols[None, :] >= start[:, None], level, 0.0)
    return _flat_fit(level, horizon, None)


def seasonal_naive(y: np.ndarray, start: np.ndarray, horizon: int) -> np.ndarray:
    """Same week last year (the benchmark, not a candidate). Shape (n, horizon)."""
    t = y.shape[1]
    cols = t - SEASON_LENGTH + (np.arange(horizon) % SEASON_LENGTH)
    if cols.min() < 0:
        return np.repeat(y[:, -1:], horizon, axis=1)
    return y[:, cols]


def _initial_size(y: np.ndarray, start: np.ndarray, end: np.ndarray | None = None) -> np.ndarray:
    """Mean demand size of each series over its weeks before ``end`` (default all)."""
    n, t = y.shape
    window = np.arange(t)[None, :] >= start[:, None]
    if end is not None:
        window &= np.arange(t)[None, :] < end[:, None]
    positive = (y > 0) & window
    total = np.where(positive, y, 0.0).sum(axis=1)
    return np.where(positive.any(axis=1), total / np.maximum(positive.sum(axis=1), 1), 1.0)


def _initial_interval(y: np.ndarray, start: np.ndarray, end: np.ndarray | None = None) -> np.ndarray:
    """Average weeks between demands over each series' history before ``end`` (at least 1)."""
    t = y.shape[1]
    end = np.full(len(y), t) if end is None else np.minimum(end, t)
    cols = np.arange(t)[None, :]
    positive = (y > 0) & (cols >= start[:, None]) & (cols < end[:, None])
    span = np.maximum(end - start, 1)
    return np.maximum(span / np.maximum(positive.sum(axis=1), 1), 1.0)


def _flat_fit(level: np.ndarray, horizon: int, season: np.ndarray | None, t: int | None = None) -> ModelFit:
    """``t``: weeks observed (default: the path's length; given when only the last week is kept)."""
    t = level.shape[1] if t is None else t
    forecast = np.repeat(level[:, -1, None], horizon, axis=1)
    if season is not None:
        forecast = forecast * season[:, (t + np.arange(horizon)) % SEASON_LENGTH]
    return ModelFit(level=level, trend=np.zeros_like(level), season=season, forecast=forecast)
