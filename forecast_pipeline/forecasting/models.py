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
HOLT_BETA = 0.05
HOLT_PHI = 0.9


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
    phi: float = 1.0

    def forecast_from(self, origin: int, horizon: int, n_weeks: int) -> np.ndarray:
        """Forecasts made at column ``origin`` for the next ``horizon`` weeks, shape (n, horizon)."""
        steps = np.arange(1, horizon + 1)
        damp = _damped_sums(self.phi, steps)
        base = self.level[:, origin, None] + self.trend[:, origin, None] * damp[None, :]
        if self.season is None:
            return base
        positions = (origin + steps) % SEASON_LENGTH
        return base * self.season[:, positions]


def _damped_sums(phi: float, steps: np.ndarray) -> np.ndarray:
    """phi + phi^2 + ... + phi^h for each h: the damped-trend multiplier."""
    if phi == 1.0:
        return steps.astype(float)
    return phi * (1 - phi**steps) / (1 - phi)


def first_demand_week(y: np.ndarray) -> np.ndarray:
    """Column of each row's first positive week; ``y.shape[1]`` for all-zero rows."""
    positive = y > 0
    return np.where(positive.any(axis=1), positive.argmax(axis=1), y.shape[1])


def _initial_level(y: np.ndarray, start: np.ndarray, weeks: int = 8) -> np.ndarray:
    """Mean of the first ``weeks`` weeks of each series (from its own start)."""
    n, t = y.shape
    cols = start[:, None] + np.arange(weeks)[None, :]
    valid = cols < t
    vals = np.where(valid, y[np.arange(n)[:, None], np.minimum(cols, t - 1)], 0.0)
    return vals.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def _pick_best(sse: np.ndarray) -> np.ndarray:
    """Index of the lowest in-sample squared error per row (ties -> first, the smoothest)."""
    return np.argmin(sse, axis=1)


def ses(y: np.ndarray, start: np.ndarray, horizon: int, season: np.ndarray | None = None) -> ModelFit:
    """Simple exponential smoothing, alpha chosen per series from a grid by one-step SSE.

    With ``season`` given the series is deseasonalised first and the forecast reseasonalised.
    """
    n, t = y.shape
    if season is not None:
        y = y / season[:, np.arange(t) % SEASON_LENGTH]
    alphas = SES_ALPHAS[None, :]
    level = np.repeat(_initial_level(y, start)[:, None], len(SES_ALPHAS), axis=1)
    sse = np.zeros((n, len(SES_ALPHAS)))
    path = np.empty((n, len(SES_ALPHAS), t))
    for col in range(t):
        active = (col >= start)[:, None]
        obs = y[:, col, None]
        err = obs - level
        sse += np.where(active, err * err, 0.0)
        level = np.where(active, level + alphas * err, level)
        path[:, :, col] = level
    best = _pick_best(sse)
    chosen = path[np.arange(n), best, :]
    return _flat_fit(chosen, horizon, season)


def holt_damped(y: np.ndarray, start: np.ndarray, horizon: int) -> ModelFit:
    """Additive damped-trend Holt smoothing (phi 0.9), alpha chosen per series by one-step SSE."""
    n, t = y.shape
    alphas = SES_ALPHAS[None, :]
    level = np.repeat(_initial_level(y, start)[:, None], len(SES_ALPHAS), axis=1)
    trend = np.zeros_like(level)
    sse = np.zeros((n, len(SES_ALPHAS)))
    level_path = np.empty((n, len(SES_ALPHAS), t))
    trend_path = np.empty_like(level_path)
    for col in range(t):
        active = (col >= start)[:, None]
        obs = y[:, col, None]
        predicted = level + HOLT_PHI * trend
        err = obs - predicted
        sse += np.where(active, err * err, 0.0)
        new_level = predicted + alphas * err
        new_trend = HOLT_PHI * trend + HOLT_BETA * alphas * err
        level = np.where(active, new_level, level)
        trend = np.where(active, new_trend, trend)
        level_path[:, :, col] = level
        trend_path[:, :, col] = trend
    best = _pick_best(sse)
    rows = np.arange(n)
    lv, tr = level_path[rows, best, :], trend_path[rows, best, :]
    steps = np.arange(1, horizon + 1)
    forecast = lv[:, -1, None] + tr[:, -1, None] * _damped_sums(HOLT_PHI, steps)[None, :]
    return ModelFit(level=lv, trend=tr, season=None, forecast=forecast, phi=HOLT_PHI)


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


def seasonal_ses(y: np.ndarray, start: np.ndarray, horizon: int) -> ModelFit:
    """SES on the deseasonalised series, reseasonalised with :func:`seasonal_indices`."""
    return ses(y, start, horizon, season=seasonal_indices(y, start))


def croston_sba(y: np.ndarray, start: np.ndarray, horizon: int) -> ModelFit:
    """Croston's method with the Syntetos-Boylan bias correction, for intermittent demand.

    Demand sizes and intervals between demands are smoothed separately and only when demand
    occurs; the forecast is ``(1 - alpha/2) * size / interval``. Alpha is picked per series.
    """
    n, t = y.shape
    alphas = CROSTON_ALPHAS[None, :]
    g = len(CROSTON_ALPHAS)
    size = np.repeat(_initial_size(y, start)[:, None], g, axis=1)
    interval = np.repeat(_initial_interval(y, start)[:, None], g, axis=1)
    since = np.ones((n, g))
    correction = 1 - alphas / 2
    sse = np.zeros((n, g))
    path = np.empty((n, g, t))
    for col in range(t):
        active = (col >= start)[:, None]
        obs = y[:, col, None]
        err = obs - correction * size / interval
        sse += np.where(active, err * err, 0.0)
        demand = active & (obs > 0)
        size = np.where(demand, size + alphas * (obs - size), size)
        interval = np.where(demand, interval + alphas * (since - interval), interval)
        since = np.where(demand, 1.0, np.where(active, since + 1.0, since))
        path[:, :, col] = correction * size / interval
    best = _pick_best(sse)
    return _flat_fit(path[np.arange(n), best, :], horizon, None)


def tsb(y: np.ndarray, start: np.ndarray, horizon: int) -> ModelFit:
    """Teunter-Syntetos-Babai: smooths demand probability every week, so dying items decay.

    Size uses alpha 0.1; the probability's beta is picked per series from a grid.
    """
    n, t = y.shape
    betas = TSB_BETAS[None, :]
    g = len(TSB_BETAS)
    alpha = 0.1
    size = np.repeat(_initial_size(y, start)[:, None], g, axis=1)
    prob = np.repeat((1.0 / _initial_interval(y, start))[:, None], g, axis=1)
    sse = np.zeros((n, g))
    path = np.empty((n, g, t))
    for col in range(t):
        active = (col >= start)[:, None]
        obs = y[:, col, None]
        err = obs - prob * size
        sse += np.where(active, err * err, 0.0)
        demand = obs > 0
        prob = np.where(active, prob + betas * (demand - prob), prob)
        size = np.where(active & demand, size + alpha * (obs - size), size)
        path[:, :, col] = prob * size
    best = _pick_best(sse)
    return _flat_fit(path[np.arange(n), best, :], horizon, None)


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


def _initial_size(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    n, t = y.shape
    window = np.arange(t)[None, :] >= start[:, None]
    positive = (y > 0) & window
    total = np.where(positive, y, 0.0).sum(axis=1)
    return np.where(positive.any(axis=1), total / np.maximum(positive.sum(axis=1), 1), 1.0)


def _initial_interval(y: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Average weeks between demands over each series' history (at least 1)."""
    t = y.shape[1]
    positive = (y > 0) & (np.arange(t)[None, :] >= start[:, None])
    span = np.maximum(t - start, 1)
    return np.maximum(span / np.maximum(positive.sum(axis=1), 1), 1.0)


def _flat_fit(level: np.ndarray, horizon: int, season: np.ndarray | None) -> ModelFit:
    t = level.shape[1]
    forecast = np.repeat(level[:, -1, None], horizon, axis=1)
    if season is not None:
        forecast = forecast * season[:, (t + np.arange(horizon)) % SEASON_LENGTH]
    return ModelFit(level=level, trend=np.zeros_like(level), season=season, forecast=forecast)
