"""The forecasting models and forecast_batch on series with known answers (pure numpy, no DB)."""

from __future__ import annotations

import numpy as np
import pytest

from forecast_pipeline.forecasting import backtest, engine, models

H = 12
T = 208  # four years of weeks


def components(model_names) -> set[str]:
    """The candidates behind a batch's model names (a combination is named ``a+b``)."""
    return {part for name in model_names for part in name.split("+")}


def rows(*series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.vstack(series).astype(float)
    return y, models.first_demand_week(y)


def constant(value: float = 5.0, t: int = T) -> np.ndarray:
    return np.full(t, value)


def pure_seasonal(t: int = T, horizon: int = 0, phase: float = 0.0) -> np.ndarray:
    """10 + 5 sin over an exact 52-week period, by absolute column (what the models assume)."""
    cols = np.arange(t + horizon)
    return 10.0 + 5.0 * np.sin(2 * np.pi * (cols + phase) / models.SEASON_LENGTH)


def single_spike(t: int = 200, at: int = 100, size: float = 100.0) -> np.ndarray:
    y = np.zeros(t)
    y[at] = size
    return y


def stopped(t: int = 200, stop: int = 150, rate: float = 10.0) -> np.ndarray:
    y = np.zeros(t)
    y[:stop] = rate
    return y


# --- first_demand_week ---------------------------------------------------------------------


def test_first_demand_week_finds_first_positive_column_and_marks_all_zero_rows():
    y, start = rows(single_spike(at=37), constant(t=200), np.zeros(200))
    assert start.tolist() == [37, 0, 200]


# --- constant series: every model forecasts the constant -------------------------------------


@pytest.mark.parametrize(
    "model", [models.ses, models.holt_damped, models.seasonal_ses, models.seasonal_holt, models.tsb, models.recent_mean]
)
def test_constant_series_is_forecast_exactly(model):
    y, start = rows(constant(5.0), constant(0.5))
    fit = model(y, start, H)
    assert fit.forecast.shape == (2, H)
    np.testing.assert_allclose(fit.forecast[0], 5.0)
    np.testing.assert_allclose(fit.forecast[1], 0.5)


def test_croston_sba_on_constant_series_applies_the_sba_correction_with_the_smallest_alpha():
    # Every week has demand of 5, so size 5 and interval 1 never move; the one-step error
    # 5 - (1 - alpha/2) * 5 is smallest for the smallest alpha in the grid.
    y, start = rows(constant(5.0))
    fit = models.croston_sba(y, start, H)
    expected = (1 - models.CROSTON_ALPHAS.min() / 2) * 5.0
    np.testing.assert_allclose(fit.forecast, expected)


def test_seasonal_naive_and_indices_on_constant_series():
    y, start = rows(constant(5.0))
    np.testing.assert_allclose(models.seasonal_naive(y, start, H), 5.0)
    np.testing.assert_allclose(models.seasonal_indices(y, start), 1.0)


def test_forecast_from_the_last_origin_is_the_forecast():
    y, start = rows(pure_seasonal(), stopped(t=T, stop=150))
    for model in (
        models.ses,
        models.holt_damped,
        models.seasonal_ses,
        models.seasonal_holt,
        models.croston_sba,
        models.tsb,
    ):
        fit = model(y, start, H)
        np.testing.assert_allclose(fit.forecast_from(T - 1, H, T), fit.forecast, err_msg=model.__name__)


# --- pure seasonal series ----------------------------------------------------------------------


def test_seasonal_naive_repeats_last_year_exactly():
    full = pure_seasonal(horizon=H)
    y, start = rows(full[:T])
    np.testing.assert_allclose(models.seasonal_naive(y, start, H)[0], full[T:])


def test_seasonal_naive_with_less_than_a_year_repeats_the_last_week():
    y, start = rows(np.arange(1.0, 31.0))
    np.testing.assert_allclose(models.seasonal_naive(y, start, H)[0], 30.0)


def test_seasonal_indices_recover_the_shape_damped_by_the_shrinkage():
    y, start = rows(pure_seasonal())
    season = models.seasonal_indices(y, start)[0]
    truth = pure_seasonal(t=models.SEASON_LENGTH) / 10.0  # exact ratio to the yearly mean
    assert season.mean() == pytest.approx(1.0)
    assert np.corrcoef(season, truth)[0, 1] > 0.999
    # shrunk 20% towards 1 (two or more years) and slightly flattened by the 5-week smoothing
    amplitude = (season.max() - season.min()) / (truth.max() - truth.min())
    assert 0.7 < amplitude <= 0.8


def test_seasonal_ses_follows_the_season_where_flat_models_cannot():
    full = pure_seasonal(horizon=H, phase=7)
    y, start = rows(full[:T])
    future = full[T:]
    seasonal = models.seasonal_ses(y, start, H).forecast[0]
    flat = models.ses(y, start, H).forecast[0]
    assert np.corrcoef(seasonal, future)[0, 1] > 0.99
    assert np.abs(seasonal - future).mean() < 0.5 * np.abs(flat - future).mean()
    assert np.ptp(flat) == pytest.approx(0.0)


def trending_seasonal(t: int = T, horizon: int = 0, phase: float = 0.0) -> np.ndarray:
    """100 + 0.2 per week, times a +-5% season of exactly 52 weeks (CO2-like: trend >> season)."""
    cols = np.arange(t + horizon)
    return (100.0 + 0.2 * cols) * (1.0 + 0.05 * np.sin(2 * np.pi * (cols + phase) / models.SEASON_LENGTH))


def test_decomposed_season_recovers_a_regular_season_under_a_trend_unshrunk():
    y, start = rows(trending_seasonal())
    season = models.decomposed_season(y, start)[0]
    truth = 1.0 + 0.05 * np.sin(2 * np.pi * np.arange(models.SEASON_LENGTH) / models.SEASON_LENGTH)
    assert season.mean() == pytest.approx(1.0)
    assert np.corrcoef(season, truth)[0, 1] > 0.999
    # years agree, so (almost) nothing is shrunk; only the 5-week smoothing flattens it ~1%
    amplitude = np.ptp(season) / np.ptp(truth)
    assert 0.95 < amplitude < 1.02
    # the calendar-year ratios of seasonal_indices read part of the trend as season
    assert np.abs(models.seasonal_indices(y, start)[0] - truth).max() > 2 * np.abs(season - truth).max()


def test_decomposed_season_shrinks_noise_to_flat():
    rng = np.random.default_rng(11)
    y, start = rows(*rng.poisson(3.0, size=(20, T)))
    season = models.decomposed_season(y, start)
    # years that disagree keep (almost) no season; the fixed-shrink indices keep 80% of the noise
    assert np.abs(season - 1).mean() < 0.5 * np.abs(models.seasonal_indices(y, start) - 1).mean()


def test_decomposed_season_is_flat_without_two_full_years():
    y, start = rows(trending_seasonal(t=100))
    np.testing.assert_allclose(models.decomposed_season(y, start), 1.0)


def test_seasonal_holt_beats_ses_and_seasonal_ses_on_a_trending_seasonal_series():
    full = trending_seasonal(horizon=H, phase=9)
    y, start = rows(full[:T])
    future = full[T:]
    fit = models.seasonal_holt(y, start, H)
    error = np.abs(fit.forecast[0] - future).mean()
    assert error < 0.5  # level ~141, season +-7
    assert error < 0.2 * np.abs(models.ses(y, start, H).forecast[0] - future).mean()
    assert error < 0.5 * np.abs(models.seasonal_ses(y, start, H).forecast[0] - future).mean()
    assert np.ndim(fit.phi) == 1 and fit.phi.shape == (1,)


def test_seasonal_holt_per_row_phi_replays_each_rows_own_forecast():
    y, start = rows(trending_seasonal(), pure_seasonal(), constant(5.0))
    both = models.seasonal_holt(y, start, H)
    for i in range(3):
        alone = models.seasonal_holt(y[i : i + 1], start[i : i + 1], H)
        np.testing.assert_allclose(both.forecast[i], alone.forecast[0])
        np.testing.assert_allclose(both.forecast_from(150, H, T)[i], alone.forecast_from(150, H, T)[0])


def test_forecast_batch_trending_seasonal_picks_seasonal_holt():
    full = np.vstack([trending_seasonal(horizon=H, phase=p) for p in (0, 13, 26, 39)])
    result = engine.forecast_batch(full[:, :T], H)
    # either seasonal Holt (the season smoothed over 5 weeks or not: a sine is smooth either way),
    # or (smooth rows) the mean of the two
    assert components(result.model) <= {"seasonal_holt", "seasonal_holt_raw"}
    assert (np.abs(result.forecast - full[:, T:]).mean(axis=1) < 0.5).all()


# --- all-zero series ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        models.ses,
        models.holt_damped,
        models.seasonal_ses,
        models.seasonal_holt,
        models.seasonal_holt_raw,
        models.shift_ses,
        models.croston_sba,
        models.tsb,
        models.tsb_fast,
        models.recent_mean,
    ],
)
def test_all_zero_rows_give_finite_forecasts_and_leave_other_rows_alone(model):
    y, start = rows(np.zeros(T), constant(5.0))
    fit = model(y, start, H)
    assert np.isfinite(fit.forecast).all()
    alone = model(y[1:], start[1:], H).forecast
    np.testing.assert_allclose(fit.forecast[1], alone[0])


def test_all_zero_levels_are_zero_for_level_models():
    y, start = rows(np.zeros(T))
    for model in (models.ses, models.holt_damped, models.seasonal_ses, models.recent_mean):
        np.testing.assert_allclose(model(y, start, H).forecast, 0.0, err_msg=model.__name__)
    np.testing.assert_allclose(models.seasonal_naive(y, start, H), 0.0)


# --- a single spike -------------------------------------------------------------------------------


def test_single_spike_ses_starts_from_the_spike_average_and_decays():
    y, start = rows(single_spike(t=200, at=100, size=100.0))
    fit = models.ses(y, start, H)
    first_level = 100.0 / 8  # the initial level is the mean of the first 8 weeks from the spike
    assert 0.0 < fit.forecast[0, 0] < first_level
    np.testing.assert_allclose(fit.forecast[0], fit.forecast[0, 0])  # flat
    np.testing.assert_allclose(fit.level[0, :100], first_level)  # untouched before the first demand


def test_single_spike_tsb_decays_below_croston():
    # Croston only updates when demand occurs, so 99 empty weeks after the spike leave it where
    # the spike put it; TSB lowers the demand probability every empty week.
    y, start = rows(single_spike())
    croston = models.croston_sba(y, start, H).forecast[0, 0]
    tsb = models.tsb(y, start, H).forecast[0, 0]
    assert croston > 0
    assert tsb < 0.5 * croston


def test_single_spike_recent_mean_and_seasonal_naive():
    y, start = rows(single_spike(t=200, at=190, size=24.0))
    np.testing.assert_allclose(models.recent_mean(y, start, H).forecast, 24.0 / 10)  # 10 weeks since start
    naive = models.seasonal_naive(rows(single_spike(t=200, at=150, size=24.0))[0], start, H)[0]
    assert naive[150 - (200 - 52)] == 24.0 and naive.sum() == 24.0


# --- a series that stops ------------------------------------------------------------------------


def test_stopped_series_level_models_drop_to_zero_while_croston_keeps_the_old_rate():
    y, start = rows(stopped(t=200, stop=150, rate=10.0))
    assert models.recent_mean(y, start, H).forecast[0, 0] == 0.0  # 50 empty weeks > 12-week window
    assert models.ses(y, start, H).forecast[0, 0] < 0.5
    assert models.tsb(y, start, H).forecast[0, 0] < 1.0
    # Croston never sees the empty weeks as demand: size 10, interval 1 stay; the empty weeks'
    # squared errors favour the largest alpha, whose SBA factor (1 - alpha/2) is the smallest.
    np.testing.assert_allclose(models.croston_sba(y, start, H).forecast, (1 - models.CROSTON_ALPHAS.max() / 2) * 10.0)
    naive = models.seasonal_naive(y, start, H)[0]
    np.testing.assert_allclose(naive, [10, 10] + [0] * 10)  # weeks 148 and 149 last year still sold


# --- forecast_batch ---------------------------------------------------------------------------------


def test_forecast_batch_constant_series_exact_forecast_interval_and_accuracy():
    y, _ = rows(constant(5.0), constant(20.0))
    result = engine.forecast_batch(y, H)
    assert result.status.tolist() == ["success", "success"]
    assert result.demand_class.tolist() == ["smooth", "smooth"]
    np.testing.assert_allclose(result.forecast, [[5.0] * H, [20.0] * H])
    np.testing.assert_allclose(result.lower, result.forecast)  # no past error: a zero-width interval
    np.testing.assert_allclose(result.upper, result.forecast)
    np.testing.assert_allclose(result.accuracy, 1.0)
    np.testing.assert_allclose(result.holdout_actual, [5.0 * H, 20.0 * H])
    np.testing.assert_allclose(result.holdout_abs_error, 0.0)


def test_forecast_batch_pure_seasonal_picks_a_seasonal_model():
    phases = (0, 13, 26, 39)
    full = np.vstack([pure_seasonal(horizon=H, phase=p) for p in phases])
    result = engine.forecast_batch(full[:, :T], H)
    # seasonal Holt (either season): its indices are not shrunk when the years agree, seasonal_ses's
    # lose 20%; the unsmoothed season is the exact one here
    assert components(result.model) <= {"seasonal_holt", "seasonal_holt_raw"}
    errors = np.abs(result.forecast - full[:, T:]).mean(axis=1)
    assert (errors < 1.0).all()  # the season's amplitude is 5
    assert (result.accuracy > 0.85).all()


@pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)
def test_a_history_too_large_for_the_arithmetic_is_an_error_not_infinity():
    """Finite weeks whose squares or sums overflow (1e153 units) gave an upper bound of inf (and
    1.5e307 NaN bounds): invalid JSON in the cache, and the date's charts failed its publish. Such
    a row is an error, named; the others are forecast as ever."""
    rng = np.random.default_rng(0)
    huge = rng.poisson(5.0, T).astype(float) * 1e153
    y = np.vstack([huge, constant(1.5e307), constant(5.0)])
    result = engine.forecast_batch(y, H)
    assert result.status.tolist() == ["error", "error", "success"]
    assert all("too large" in result.error[i] for i in (0, 1)), result.error
    for arr in (result.forecast, result.lower, result.upper, result.accuracy):
        assert np.isfinite(arr).all()
    np.testing.assert_allclose(result.forecast[2], 5.0)
    # 1e300 every week: the forecast stays finite while the spread overflowed (a zero-width
    # interval at 1e300); an error too. One week of 1e300 among tens is a spike, capped: a forecast
    spiky = constant(10.0)
    spiky[-30] = 1e300
    again = engine.forecast_batch(np.vstack([constant(1e300), spiky]), H)
    assert again.status.tolist() == ["error", "success"] and "too large" in again.error[0]
    assert again.upper[1].max() < 100


def test_a_product_sold_in_fixed_packs_gets_an_upper_bound_of_at_least_a_pack():
    """A product that sells 12 (a pack) in half its weeks had 80% intervals ending near 10: they
    held only its weeks without demand, about half of them. Its upper bound is now at least a
    pack; quantities that vary, and packs sold in under a fifth of the weeks, are left alone."""
    rng = np.random.default_rng(1)
    packs = np.where(rng.random((200, 144)) < 0.5, 12.0, 0.0)
    rare = np.where(rng.random((200, 144)) < 0.1, 12.0, 0.0)
    varied = np.where(rng.random((200, 144)) < 0.5, rng.poisson(12.0, (200, 144)) + 1.0, 0.0)
    history, actual = np.vstack([packs, rare, varied])[:, :-12], np.vstack([packs, rare, varied])[:, -12:]
    run = engine.forecast_batch(history, H)
    ok = run.status == "success"
    assert ok[:200].all() and (run.upper[:200] >= 12.0).all()
    inside = backtest.interval_inside(actual, run.lower, run.upper)
    assert inside[:200][ok[:200]].mean() > 0.95  # ~0.55 before
    assert np.median(run.upper[200:400][ok[200:400]]) < 12.0  # rarely sold: still ~90% from zero
    assert (engine._pack_floor(history[400:], models.first_demand_week(history[400:])) == 0).all()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_quantities_past_exact_integers_are_never_read_as_packs():
    """Pack sizes are whole units; weeks of 1e19 or 1e20 units are no pack count an int64 holds
    (the cast was undefined: a warning, and a made-up pack of 4 for 12 beside 1e19)."""
    weeks = np.arange(100)
    y = np.vstack([np.where(weeks % 2 == 0, 1e20, 0.0), np.where(weeks % 2 == 0, 12.0, 1e19)])
    np.testing.assert_array_equal(engine._pack_floor(y, np.zeros(2, dtype=int)), [0.0, 0.0])


def test_forecast_batch_all_zero_short_and_nan_rows():
    short = np.zeros(T)
    short[-5:] = 3.0  # 5 weeks since first demand: below MIN_HISTORY_WEEKS
    young = np.zeros(T)
    young[-20:] = 4.0  # 20 weeks: forecast, but as a short history
    bad = constant(5.0)
    bad[50] = np.nan
    y = np.vstack([np.zeros(T), short, young, bad, constant(5.0)])
    result = engine.forecast_batch(y, H)
    assert result.status.tolist() == ["no_forecast", "no_forecast", "success", "error", "success"]
    assert result.error[3] and "non-finite" in result.error[3]
    assert [result.error[i] for i in (0, 1, 2, 4)] == [None] * 4
    assert result.model[2] == "recent_mean" and result.demand_class[2] == "short"
    np.testing.assert_allclose(result.forecast[2], 4.0)
    for i in (0, 1, 3):
        assert result.model[i] is None
        np.testing.assert_allclose(result.forecast[i], 0.0)
        np.testing.assert_allclose(result.upper[i], 0.0)
    np.testing.assert_allclose(result.forecast[4], 5.0)  # the bad row does not spoil the others
    assert result.history_weeks.tolist() == [0, 5, 20, 0, T]  # an error row is read as empty


def test_forecast_batch_single_spike_and_stopped_series():
    y = np.vstack([single_spike(t=T, at=100), stopped(t=T, stop=150)])
    result = engine.forecast_batch(y, H)
    assert result.status.tolist() == ["success", "success"]
    assert result.demand_class[0] in ("intermittent", "lumpy")
    assert result.forecast[0].sum() < 100.0 / 8 * H  # below the spike averaged over 8 weeks
    assert result.forecast[1].sum() < 5.0  # a product that stopped 58 weeks ago sells ~nothing
    assert (result.lower <= result.forecast).all() and (result.forecast <= result.upper).all()
    assert (result.lower >= 0).all()


def test_forecast_batch_intervals_cover_about_80_percent_of_noise():
    rng = np.random.default_rng(3)
    y = rng.poisson(20.0, size=(400, 300 + H)).astype(float)
    result = engine.forecast_batch(y[:, :300], H)
    future = y[:, 300:]
    inside = (future >= result.lower) & (future <= result.upper)
    assert 0.72 <= inside.mean() <= 0.88
    assert abs(result.forecast.mean() - 20.0) < 0.5


@pytest.mark.parametrize("weeks", [10, 16, 22, 30, 45])
def test_a_new_product_with_regular_demand_gets_an_interval_that_covers_about_80_percent(weeks):
    # Under a year of steady (Poisson) demand around a level of its own: a regular new product's
    # interval covered 70-74% at 10, 30 and 45 weeks when its width came from the few past errors
    # replayed since its first week.
    rng = np.random.default_rng(21)
    level = 20.0 * rng.gamma(20.0, 1 / 20.0, size=(400, 1))
    y = np.zeros((400, 60 + H))
    y[:, 60 - weeks :] = np.maximum(rng.poisson(level, size=(400, weeks + H)), 1)
    result = engine.forecast_batch(y[:, :60], H)
    future = y[:, 60:]
    assert (result.status == "success").all() and set(result.interval_group) == {"new_regular"}
    assert 0.75 <= ((future >= result.lower) & (future <= result.upper)).mean() <= 0.85


def test_forecast_batch_blocks_give_the_same_answer_as_one_pass(monkeypatch):
    rng = np.random.default_rng(5)
    y = np.vstack([rng.poisson(lam, T) for lam in (0.2, 1, 3, 8, 20, 0.5, 2)]).astype(float)
    y[4, 150] = 10_000.0  # a spike in the second block
    whole = engine.forecast_batch(y, H)
    monkeypatch.setattr(engine, "BLOCK_ROWS", 3)
    blocks = engine.forecast_batch(y, H)
    assert whole.outliers_capped.tolist() == [0, 0, 0, 0, 1, 0, 0]
    for name in ("forecast", "lower", "upper", "accuracy", "holdout_abs_error", "outliers_capped"):
        np.testing.assert_allclose(getattr(blocks, name), getattr(whole, name), err_msg=name)
    assert blocks.model.tolist() == whole.model.tolist()
    assert blocks.status.tolist() == whole.status.tolist()


def test_intervals_of_zero_inflated_demand_are_zero_to_the_80th_percentile(monkeypatch):
    # Half the weeks sell nothing: the 10th percentile is zero, so a [10th, 90th] interval would
    # cover every zero week plus 90% of the rest (~85% here); [0, 80th] is the 80% interval.
    rng = np.random.default_rng(11)
    y = ((rng.random((400, 300 + H)) < 0.5) * rng.poisson(20.0, (400, 300 + H))).astype(float)
    future = y[:, 300:]
    monkeypatch.setattr(engine, "INTERVAL_SCALE", {})  # the replayed quantiles alone

    def coverage() -> tuple[float, float]:
        result = engine.forecast_batch(y[:, :300], H)
        assert set(result.demand_class) == {"intermittent"}
        inside = (future >= result.lower) & (future <= result.upper)
        return inside.mean(), (result.lower == 0).mean()

    covered, zero_lower = coverage()
    assert 0.72 <= covered <= 0.82
    assert zero_lower > 0.9
    monkeypatch.setattr(engine, "UPPER_FROM_ZERO_QUANTILE", 0.90)  # the central interval
    assert coverage()[0] > covered + 0.05


def test_an_item_without_demand_in_most_weeks_gets_a_zero_lower_bound_on_every_model():
    # 70% of weeks sell nothing, the rest 1-3 units: every week's 10th percentile is zero. Before,
    # zero weeks replayed at forecasts below the series' mean gave relative errors above -1, and a
    # Croston or seasonal SES row whose forecast had risen got a lower bound of ~0.02-0.5: above
    # every zero week (such rows covered 3-35% of the weeks in the backtests).
    rng = np.random.default_rng(3)
    sells = rng.random((400, 160 + H)) < 0.3
    sizes = np.vstack(
        [rng.integers(1, 4, (200, 160 + H)), np.ceil(rng.lognormal(0.5, 1.2, (200, 160 + H)))]
    )  # steady sizes (intermittent) and lumpy ones
    y = (sells * sizes).astype(float)
    result = engine.forecast_batch(y[:, :160], H)
    classes = dict(zip(*np.unique(result.demand_class.astype(str), return_counts=True), strict=True))
    assert set(classes) <= {"intermittent", "lumpy"} and min(classes.values()) > 50, classes
    seasonal = np.isin(result.model, engine.SEASONAL_CANDIDATES)
    assert seasonal.sum() > 50 and (~seasonal).sum() > 50  # both kinds of model are checked
    above = (result.lower > 0).any(axis=1)
    assert not above.any(), f"{above.sum()} rows above zero weeks ({(above & seasonal).sum()} on a seasonal model)"
    future = y[:, 160:]
    assert 0.74 <= ((future >= result.lower) & (future <= result.upper)).mean() <= 0.86


def test_seasonal_intervals_come_from_a_season_estimated_out_of_sample(monkeypatch):
    # Trend x season with autocorrelated noise, six years: the replayed errors of a season
    # estimated on the same weeks are too small; estimated on earlier weeks they are honest.
    rng = np.random.default_rng(11)
    n, t = 300, 6 * models.SEASON_LENGTH
    cols = np.arange(t + H)
    shocks = rng.normal(0.0, 1.0, (n, t + H))
    noise = np.zeros_like(shocks)
    for c in range(1, t + H):
        noise[:, c] = 0.7 * noise[:, c - 1] + shocks[:, c]
    y = (50 + 0.05 * cols) * (1 + 0.3 * np.sin(2 * np.pi * cols / models.SEASON_LENGTH)) + 3 * noise
    future = y[:, t:]

    def coverage() -> float:
        result = engine.forecast_batch(y[:, :t], H)
        first = np.array([m.split("+")[0] for m in result.model])
        assert (np.isin(first, engine.SEASONAL_CANDIDATES)).mean() > 0.5
        return ((future >= result.lower) & (future <= result.upper)).mean()

    out_of_sample = coverage()
    assert 0.72 <= out_of_sample <= 0.88
    monkeypatch.setattr(engine, "SEASON_PREFIX_WEEKS", 10**6)  # never: the season of the full history
    assert coverage() < out_of_sample - 0.03


# --- one-off spikes (data-entry errors) -------------------------------------------------------------

YEARS = 7 * models.SEASON_LENGTH  # seven years of weeks, as a real history read has


def poisson_rows(n: int, level: float = 10.0, t: int = YEARS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(level, size=(n, t)).astype(float)


@pytest.mark.parametrize("weeks_ago", [60, 30, 13, 5, 1])  # 13, 5 and 1: inside the holdout window
def test_a_one_off_spike_is_capped_and_the_forecast_stays_at_the_products_level(weeks_ago):
    # ~10 units a week and one week of 1,000,000: before capping the forecast was 100-10,000x too high
    y = poisson_rows(1)
    y[0, -weeks_ago] = 1_000_000.0
    result = engine.forecast_batch(y, H)
    assert result.outliers_capped.tolist() == [1]
    assert 7.0 < result.forecast[0].mean() < 14.0
    assert result.upper[0].max() < 30.0
    assert result.accuracy[0] > 0.5  # scored on the capped history: 0 before


def test_a_spike_among_zeros_and_tens_of_an_intermittent_product_is_capped():
    rng = np.random.default_rng(4)
    y = np.where(rng.random((1, YEARS)) < 0.2, 10.0, 0.0)
    clean = engine.forecast_batch(y, H)
    y[0, -30] = 1_000_000.0
    result = engine.forecast_batch(y, H)
    assert result.demand_class[0] == clean.demand_class[0] == "intermittent"
    assert result.outliers_capped.tolist() == [1] and clean.outliers_capped.tolist() == [0]
    assert result.forecast[0].mean() < 1.5 * clean.forecast[0].mean()


def test_a_spike_is_caught_in_a_product_with_only_six_weeks_of_demand():
    # eligible (3 orders, 2 customers) but sparse: the spike would be its whole forecast
    y = np.zeros((1, YEARS))
    y[0, [40, 90, 150, 220, 300, 350]] = [12.0, 8.0, 10.0, 1_000_000.0, 9.0, 11.0]
    result = engine.forecast_batch(y, H)
    assert result.outliers_capped.tolist() == [1]
    assert result.forecast[0].sum() < 50.0


def test_a_run_of_three_errors_cannot_vouch_for_itself():
    y = poisson_rows(1)
    y[0, -40:-37] = 1_000_000.0
    result = engine.forecast_batch(y, H)
    assert result.outliers_capped.tolist() == [3]
    assert 7.0 < result.forecast[0].mean() < 14.0


def test_errors_years_apart_are_each_capped_but_a_yearly_bulk_order_is_kept():
    y = poisson_rows(2, level=5.0)
    y[0, [60, 200]] = 1_000_000.0  # two errors: neither vouches for the other
    y[1, [40, 100, 170, 230, 300, 350]] = [900.0, 1000.0, 1200.0, 800.0, 1000.0, 1100.0]  # never the same week
    capped, count = models.cap_outliers(y, models.first_demand_week(y))
    assert count.tolist() == [2, 0]
    np.testing.assert_array_equal(capped[1], y[1])


def test_cap_outliers_replaces_only_the_spike_with_the_typical_week():
    cols = np.arange(YEARS)
    steady = constant(10.0, YEARS)
    intermittent = np.where(cols % 5 == 0, 10.0, 0.0)
    grown = np.where(cols < 250, 10.0, 30.0)
    y = np.vstack([steady, steady, intermittent, grown])
    y[0, 100] = y[2, 101] = y[3, 300] = 1_000_000.0
    capped, count = models.cap_outliers(y, models.first_demand_week(y))
    assert count.tolist() == [1, 0, 1, 1]
    assert capped[0, 100] == pytest.approx(10.0)
    assert capped[2, 101] == pytest.approx(10.0)  # the median order, not its neighbours' mean (mostly empty weeks)
    assert capped[3, 300] == pytest.approx(30.0)  # its neighbours, above the median week (10)
    untouched = np.ones_like(y, dtype=bool)
    untouched[[0, 2, 3], [100, 101, 300]] = False
    np.testing.assert_array_equal(capped[untouched], y[untouched])


def test_a_seasonal_peak_is_kept_once_it_has_come_back_in_another_year():
    # One week a year at 20x the usual ~10 units in the last two years, a week apart (a calendar
    # event drifts against 52-week years); the next one falls inside the forecast horizon.
    y = poisson_rows(1)
    peaks = [YEARS - 6 - 52, YEARS - 6 - 104 + 1]
    y[0, peaks] = 200.0
    result = engine.forecast_batch(y, H)
    assert result.outliers_capped.tolist() == [0]
    # the same peak in a single year is an outlier: what protects it is that it recurs
    once = poisson_rows(1)
    once[0, peaks[0]] = 200.0
    assert models.cap_outliers(once, models.first_demand_week(once))[1].tolist() == [1]


def test_a_plausible_promotion_is_kept():
    # two weeks at 4x and 5x the usual level, and a one-week 5x promotion a year earlier
    y = poisson_rows(1, level=50.0)
    y[0, [-20, -19]] = [200.0, 250.0]
    y[0, -80] = 250.0
    result = engine.forecast_batch(y, H)
    assert result.outliers_capped.tolist() == [0]


def test_normal_lumps_of_an_intermittent_product_are_kept():
    # orders in a fifth of the weeks, sizes log-normal around 5 units: lumps of 30-60 are normal
    rng = np.random.default_rng(8)
    y = np.where(rng.random((50, YEARS)) < 0.2, np.ceil(rng.lognormal(np.log(5.0), 0.8, (50, YEARS))), 0.0)
    sizes = y[y > 0]
    assert sizes.max() > 8 * np.median(sizes)  # the lumps are there
    result = engine.forecast_batch(y, H)
    assert set(result.demand_class) <= {"intermittent", "lumpy"}
    assert result.outliers_capped.sum() == 0


def test_a_new_level_is_not_read_as_outliers():
    # 20 a week for years, then 400 a week for the last 8 weeks: neighbours vouch for each other
    y = poisson_rows(1, level=20.0)
    y[0, -8:] = np.random.default_rng(1).poisson(400.0, 8)
    result = engine.forecast_batch(y, H)
    assert result.outliers_capped.tolist() == [0]
    assert result.forecast[0].mean() > 200.0


def test_clean_rows_are_forecast_exactly_as_without_capping(monkeypatch):
    y = np.vstack([poisson_rows(20, level=lam, seed=s) for s, lam in enumerate((0.3, 3.0, 30.0))])
    capped = engine.forecast_batch(y, H)
    assert capped.outliers_capped.sum() == 0
    monkeypatch.setattr(models, "cap_outliers", lambda y, start: (y, np.zeros(len(y), dtype=np.int64)))
    plain = engine.forecast_batch(y, H)
    for name in ("forecast", "lower", "upper", "accuracy"):
        np.testing.assert_array_equal(getattr(capped, name), getattr(plain, name), err_msg=name)


def test_neighbour_means_in_row_chunks_equal_one_pass():
    y = poisson_rows(30, level=3.0, t=200)
    y[:, :20] = 0.0
    y[::3, 100] = 500.0
    start = models.first_demand_week(y)
    np.testing.assert_array_equal(
        models._trimmed_neighbour_mean(y, start, chunk_rows=7), models._trimmed_neighbour_mean(y, start, chunk_rows=100)
    )


# --- level shifts and dormant items (issue 17) --------------------------------------------------


def stepped(t: int = T, horizon: int = 0, at: int = T - 20, before: float = 10.0, after: float = 30.0, seed=0):
    rng = np.random.default_rng(seed)
    level = np.where(np.arange(t + horizon) >= at, after, before)
    return rng.poisson(level).astype(float)


def test_level_shift_week_finds_a_lasting_step_but_not_a_spike_or_noise():
    rng = np.random.default_rng(3)
    step_up, step_down = stepped(at=T - 20), stepped(at=T - 30, before=30.0, after=10.0, seed=1)
    noise = rng.poisson(20.0, T).astype(float)
    spike = noise.copy()
    spike[T - 10 : T - 7] = 200.0  # three weeks of a promotion, then back
    y = np.vstack([step_up, step_down, noise, spike])
    found = models.level_shift_week(y, models.first_demand_week(y))
    assert abs(found[0] - (T - 20)) <= 2 and abs(found[1] - (T - 30)) <= 2
    assert found[2] == -1 and found[3] == -1


def test_the_engine_follows_a_new_level_at_once():
    full = np.vstack([stepped(horizon=H, seed=s) for s in range(4)])
    result = engine.forecast_batch(full[:, :T], H)
    # shift_ses for most; a plain SES that chose a large alpha ties with it on the windows before the step
    # (smooth rows: the mean of the two best, the first of which is one of those)
    first = [m.split("+")[0] for m in result.model]
    assert set(first) <= {"shift_ses", "ses"} and first.count("shift_ses") >= 2
    # SES with a small alpha would still sit between the old level (10) and the new (30)
    level = result.forecast.mean(axis=1)
    assert np.abs(level - 30.0).max() < 5.0 and abs(level.mean() - 30.0) < 2.5


def test_a_dormant_item_is_forecast_near_zero():
    rng = np.random.default_rng(5)
    y = rng.poisson(8.0, size=(3, T)).astype(float)
    y[:, T - 14 :] = 0.0  # sold every week for years, nothing for the last 14 weeks
    result = engine.forecast_batch(y, H)
    assert set(result.model) <= {"tsb", "tsb_fast"}
    assert (result.forecast.sum(axis=1) < 0.1 * 8.0 * H).all()  # under a tenth of the old rate
    assert (result.lower == 0).all()


def test_forecast_only_fits_give_the_same_forecasts():
    rng = np.random.default_rng(2)
    y = np.vstack([pure_seasonal(phase=p) for p in (0, 20)] + [rng.poisson(0.4, T).astype(float)])
    start = models.first_demand_week(y)
    for fn in engine.CANDIDATES.values():
        np.testing.assert_allclose(fn(y, start, H, paths=False).forecast, fn(y, start, H).forecast)


def test_one_pass_with_cuts_gives_each_windows_own_fit():
    # rows starting at different weeks (the models update every row every week, a row's weeks
    # before its first demand leaving it as it was): every cut's forecast is the forecast of a fit
    # on the weeks before it
    rng = np.random.default_rng(5)
    y = np.vstack([rng.poisson(lam, T).astype(float) for lam in (0.3, 4.0, 20.0, 1.5)])
    y[1, :40], y[2, :90], y[3, :5] = 0.0, 0.0, 0.0
    start = models.first_demand_week(y)
    cuts = (T - 12, T - 36, T - 60)
    for name in ("ses", "holt_damped"):
        fn = engine.CANDIDATES[name]
        windows = fn(y, start, H, paths=False, cuts=cuts).windows
        for cut in cuts:
            np.testing.assert_allclose(windows[cut], fn(y[:, :cut], start, H, paths=False).forecast, rtol=1e-12)
    # Croston and TSB: the same, given the weeks their initial state comes from
    init_end = np.full(len(y), T - 60)
    for name in ("croston_sba", "tsb", "tsb_fast"):
        fn = engine.CANDIDATES[name]
        windows = fn(y, start, H, paths=False, cuts=cuts, init_end=init_end).windows
        for cut in cuts:
            alone = fn(y[:, :cut], start, H, paths=False, init_end=init_end).forecast
            np.testing.assert_allclose(windows[cut], alone, rtol=1e-12)


def test_batch_recursions_match_a_row_by_row_fit():
    # the batch fit of rows with different starts equals each row fitted alone
    rng = np.random.default_rng(6)
    y = np.vstack([rng.poisson(lam, T).astype(float) for lam in (0.5, 6.0, 2.0)])
    y[0, :100], y[2, :30] = 0.0, 0.0
    start = models.first_demand_week(y)
    for fn in engine.CANDIDATES.values():
        together = fn(y, start, H).forecast
        for i in range(len(y)):
            np.testing.assert_allclose(together[i], fn(y[i : i + 1], start[i : i + 1], H).forecast[0], rtol=1e-12)


def test_weeks_before_a_rows_first_demand_change_nothing_in_its_fit():
    # The recursions update every row every week; a row's weeks before its start must leave its
    # state alone (no error counted, no decay of a demand probability, no interval counted). The
    # same series behind a year of zeros (a year keeps the season positions) is fitted the same.
    rng = np.random.default_rng(11)
    series = [rng.poisson(lam, T).astype(float) * (rng.random(T) < share) for lam, share in ((3.0, 0.3), (8.0, 1.0))]
    series += [pure_seasonal() + rng.normal(0, 0.5, T), rng.poisson(1.0, T) * (rng.random(T) < 0.5)]
    for s in series:
        s[0] = max(s[0], 1.0)  # demand in the first week: its start is week 0
    alone = np.vstack(series)
    behind = np.hstack([np.zeros((len(series), models.SEASON_LENGTH)), alone])
    # and where the caller's start is later than the first demand, the weeks before it are ignored
    ignored = behind.copy()
    ignored[:, : models.SEASON_LENGTH] = rng.poisson(5.0, (len(series), models.SEASON_LENGTH))
    for name, fn in engine.CANDIDATES.items():
        a = fn(alone, models.first_demand_week(alone), H)
        for padded in (behind, ignored):
            b = fn(padded, np.full(len(series), models.SEASON_LENGTH), H)
            np.testing.assert_allclose(b.forecast, a.forecast, rtol=1e-12, err_msg=name)
            np.testing.assert_allclose(b.level[:, models.SEASON_LENGTH :], a.level, rtol=1e-12, err_msg=name)


def test_tsb_updates_from_its_first_week_on_as_the_recursion_says():
    # sizes 3 and 6: initial size 4.5, one demand every 1.5 weeks (probability 2/3). Week 0 sells
    # 3: probability 2/3 + 0.5 (1 - 2/3) = 5/6, size 4.5 + 0.1 (3 - 4.5) = 4.35, rate 3.625
    fit = models.tsb_fast(np.array([[3.0, 0.0, 6.0]]), np.array([0]), 1)
    assert fit.level[0, 0] == pytest.approx(5 / 6 * 4.35)
    # the same weeks behind an ignored week of demand (a start the caller set later) or a NaN
    for first in (9.0, np.nan):
        later = models.tsb_fast(np.array([[first, 3.0, 0.0, 6.0]]), np.array([1]), 1)
        np.testing.assert_allclose(later.level[0, 1:], fit.level[0], rtol=1e-12)


def test_smooth_rows_get_the_mean_of_their_two_best_candidates():
    rng = np.random.default_rng(7)
    y = np.vstack([50 + rng.normal(0, 5, T) + 0.05 * np.arange(T) for _ in range(3)])
    out = engine.forecast_batch(y, H)
    assert (out.demand_class == "smooth").all()
    for model in out.model:
        first, second = model.split("+")
        assert first != second and {first, second} <= set(engine.CANDIDATES)
    # the combination's forecast is the mean of its two models' forecasts on the (capped) history
    start = models.first_demand_week(y)
    for i, model in enumerate(out.model):
        a, b = (engine.CANDIDATES[m](y[i : i + 1], start[i : i + 1], H).forecast[0] for m in model.split("+"))
        np.testing.assert_allclose(out.forecast[i], np.clip((a + b) / 2, 0, None), rtol=1e-9)


def test_every_model_name_fits_the_model_type_column():
    from forecast_pipeline.app_db.queue_tables import forecast_predictions

    names = [a + "+" + b for a in engine.CANDIDATES for b in engine.CANDIDATES if a != b]
    assert max(len(n) for n in names) <= forecast_predictions.c.model_type.type.length


def test_new_products_upper_half_width_blends_the_replayed_errors_with_the_weekly_spread(monkeypatch):
    # Under 26 weeks an intermittent product has few past origins, so its replayed error
    # percentiles are noisy: the upper half-width is the mean of the replayed one and the weekly
    # standard deviation.
    rng = np.random.default_rng(13)
    y = rng.poisson(6.0, (50, 20)) * (rng.random((50, 20)) < 0.4)
    y[:, 0] = 5.0
    monkeypatch.setattr(engine, "INTERVAL_SCALE", {})  # unit factors: the widths alone
    blended = engine.forecast_batch(y, H)
    assert set(blended.interval_group) == {"short_sparse"}
    monkeypatch.setattr(engine, "SPREAD_BLENDED_GROUPS", ())
    replayed = engine.forecast_batch(y, H)
    spread = y.std(axis=1)[:, None]
    assert (spread > 0).all() and (replayed.upper > replayed.forecast).mean() > 0.5
    np.testing.assert_allclose(
        blended.upper - blended.forecast, 0.5 * np.maximum(replayed.upper - replayed.forecast, 0) + 0.5 * spread
    )
    np.testing.assert_allclose(blended.lower, replayed.lower)
    np.testing.assert_allclose(blended.forecast, replayed.forecast)


def test_a_new_product_with_regular_demand_gets_the_forecast_plus_minus_its_weekly_spread(monkeypatch):
    rng = np.random.default_rng(13)
    y = np.maximum(rng.poisson(10.0, (50, 20)), 1).astype(float)
    monkeypatch.setattr(engine, "INTERVAL_SCALE", {})  # unit factors: the widths alone
    out = engine.forecast_batch(y, H)
    assert set(out.interval_group) == {"new_regular"}
    half = engine.NORMAL_80 * y.std(axis=1)[:, None]
    np.testing.assert_allclose(out.upper, out.forecast + half)
    np.testing.assert_allclose(out.lower, np.clip(out.forecast - half, 0, None))


def test_a_date_less_than_a_week_after_the_history_start_is_no_forecast_for_every_product():
    """As-of dates 1-6 days after FORECAST_HISTORY_START are partitions too; their matrix has no
    whole week and every product failed on an empty argmax, failing the date's quality gate
    (found by a hunting helper)."""
    result = engine.forecast_batch(np.zeros((3, 0)), 12)
    assert result.status.tolist() == ["no_forecast"] * 3
    assert result.forecast.shape == (3, 12)
    for weeks in range(1, engine.MIN_HISTORY_WEEKS):  # and quietly for every history too short to forecast
        short = np.ones((2, weeks))
        short[1, 0] = np.nan
        assert engine.forecast_batch(short, 12).status.tolist() == ["no_forecast", "error"]
