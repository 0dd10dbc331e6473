"""The backtest's metrics and checks on series with known answers, and the command end to end."""

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from forecast_pipeline.forecasting import backtest, models
from forecast_pipeline_tests.conftest import BIN, command

H = 12


def test_naive_scale_is_the_mean_absolute_weekly_change_since_first_demand():
    y = np.array([[0.0, 0.0, 1.0, 3.0, 2.0], [4.0, 4.0, 4.0, 4.0, 4.0], [0.0] * 5])
    start = models.first_demand_week(y)
    # row 0: |3-1| and |2-3| after its first demand (week 2); row 1 never changes; row 2 is empty
    np.testing.assert_allclose(backtest.naive_scale(y, start), [1.5, 0.0, 0.0])


def test_mase_bias_and_coverage_are_computed_from_the_errors():
    scores = backtest.MethodScores()
    actual = np.array([[10.0] * H, [2.0] * H])
    forecast = np.array([[12.0] * H, [2.0] * H])  # row 0: +2 every week; row 1 exact
    scale = np.array([4.0, 1.0])
    covered = np.array([H, H / 2])
    scores.add(forecast - actual, scale, forecast, actual, np.array(["smooth", "lumpy"]), covered)
    table = scores.table(H)
    assert table["smooth"]["mase"] == pytest.approx(0.5)  # 2 / 4
    assert table["lumpy"]["mase"] == pytest.approx(0.0)
    assert table["all"]["mase"] == pytest.approx(0.25)  # mean of the two series' MASE
    # bias is signed and scaled like MASE: row 0 +2 a week / 4, row 1 exact
    assert table["all"]["bias"] == pytest.approx(0.25)
    assert table["all"]["coverage"] == pytest.approx(0.75)
    assert table["all"]["products"] == 2


def test_series_that_never_change_are_left_out_of_mase_and_bias():
    scores = backtest.MethodScores()
    actual = np.full((2, H), 5.0)
    scores.add(np.ones((2, H)), np.array([0.0, 1.0]), actual + 1, actual, np.array(["smooth", "smooth"]))
    table = scores.table(H)
    assert table["all"]["products"] == 1 and table["all"]["mase"] == pytest.approx(1.0)
    assert table["all"]["bias"] == pytest.approx(1.0)  # +1 a week on a scale of 1
    assert np.isnan(table["all"]["coverage"])  # no interval given


def test_bias_of_a_discontinued_series_stays_finite():
    # a series that stopped selling: actuals all zero, a small forecast. As a share of actual
    # demand this was +2e12 %; scaled like MASE it is the forecast over the series' weekly change.
    scores = backtest.MethodScores()
    actual, forecast = np.zeros((1, H)), np.full((1, H), 0.5)
    scores.add(forecast - actual, np.array([2.0]), forecast, actual, np.array(["discontinued"]))
    assert scores.table(H)["discontinued"]["bias"] == pytest.approx(0.25)


def seasonal_rows(n_weeks: int) -> np.ndarray:
    cols = np.arange(n_weeks)
    return np.vstack(
        [10.0 + 5.0 * np.sin(2 * np.pi * (cols + phase) / models.SEASON_LENGTH) for phase in (0, 13, 26, 39)]
    )


def test_a_pure_season_is_forecast_exactly_by_seasonal_naive_and_closely_by_the_others():
    y = seasonal_rows(5 * models.SEASON_LENGTH)
    result = backtest.run_backtest(y, label="pure season", origins=3, step=H, horizon=H, hw_sample=2)
    tables = result.tables()
    assert result.origins == ["week 224", "week 236", "week 248"]
    assert tables["seasonal_naive"]["all"]["mase"] == pytest.approx(0.0, abs=1e-12)
    assert tables["engine"]["all"]["mase"] < 0.2
    assert tables["holt_winters"]["all"]["products"] == 6  # 2 sampled series x 3 origins
    assert tables["holt_winters"]["all"]["mase"] < 0.2
    checks = dict(backtest.summary_checks(result))
    assert checks["MASE below seasonal naive (all)"] is False  # nothing beats an exact forecast
    assert "at least 20x faster than Holt-Winters" not in checks  # 4 series are not a batch
    assert "speed not compared" in backtest.format_result(result)


def test_the_report_counts_the_spikes_the_engine_capped():
    y = seasonal_rows(5 * models.SEASON_LENGTH)
    y[1, 200] = 1_000_000.0  # in the last two years of every origin's history
    result = backtest.run_backtest(y, label="one spike", origins=3, step=H, horizon=H, hw_sample=0)
    text = backtest.format_result(result)
    assert "capped by the engine before fitting: 3 weeks in 3 of the 12 series x origins forecast" in text
    assert abs(result.tables()["engine"]["all"]["bias"]) < 0.05  # uncapped: forecasts 34x the actuals


def test_on_white_noise_the_engine_beats_seasonal_naive_and_its_intervals_hold():
    rng = np.random.default_rng(1)
    y = rng.poisson(20.0, size=(300, 4 * models.SEASON_LENGTH)).astype(float)
    result = backtest.run_backtest(y, label="noise", origins=2, step=H, horizon=H, hw_sample=0)
    checks = dict(backtest.summary_checks(result))
    assert checks["MASE at least 10% below seasonal naive overall"] is True
    assert checks["80% interval coverage within 75%-85%"] is True
    assert "MASE no worse than Holt-Winters (same sample)" not in checks  # Holt-Winters skipped
    # last year's week is one noisy draw; the engine's flat level averages many
    tables = result.tables()
    assert tables["engine"]["all"]["mase"] < 0.8 * tables["seasonal_naive"]["all"]["mase"]


def test_the_demo_matrix_applies_eligibility_at_each_origin():
    as_of = dt.date(2025, 11, 10)
    y, eligible_at, label = backtest.demo_matrix(80, as_of, history_start=dt.date(2023, 1, 2))
    weeks = (as_of - dt.date(2023, 1, 2)).days // 7
    assert y.shape == (80, weeks)
    assert label(weeks) == as_of.isoformat() and label(weeks - 1) == (as_of - dt.timedelta(weeks=1)).isoformat()
    early, late = eligible_at(20), eligible_at(weeks)
    assert early.sum() < late.sum()  # products become eligible as orders accumulate
    assert not (early & ~late).any()  # and stay so


@pytest.mark.integration
def test_backtest_command_prints_both_tables_and_the_checks(tmp_path: Path):
    done = command(
        [
            str(BIN / "forecast-pipeline"),
            *("backtest", "--as-of", "2025-11-10", "--products", "300", "--origins", "2"),
            *("--hw-sample", "5", "--real-origins", "2"),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "### Demo data: 300 products" in out and "### statsmodels co2" in out
    assert "| engine | all |" in out and "| holt_winters | all |" in out
    assert "origins 2001-07-21, 2001-10-13" in out
    assert out.count("- [") >= 10  # the targets, each ticked or not


# --- issue 17: classes, interval score, no leakage, the statsforecast yardstick ---------------------


def test_interval_score_is_the_width_plus_five_times_each_miss():
    actual = np.array([[5.0, 0.0, 12.0]])
    lower, upper = np.array([[2.0, 2.0, 2.0]]), np.array([[10.0, 10.0, 10.0]])
    # inside: width 8; below by 2: 8 + 2/0.2 * 2; above by 2: 8 + 10 * 2
    np.testing.assert_allclose(backtest.interval_score(actual, lower, upper), [[8.0, 28.0, 28.0]])
    scores = backtest.MethodScores()
    scores.add(np.zeros((1, 3)), np.array([2.0]), actual, actual, np.array(["smooth"]), lower=lower, upper=upper)
    table = scores.table(3)
    assert table["all"]["msis"] == pytest.approx((8 + 28 + 28) / 3 / 2.0)
    assert table["all"]["coverage"] == pytest.approx(1 / 3)


def test_zero_weeks_bound_the_coverage_an_interval_from_zero_can_have():
    # a stopped item: 11 of 12 weeks without demand. Any interval starting at zero covers them, so
    # its coverage is at least 11/12 and "78-82%" is out of reach; the table and the check say so.
    actual = np.zeros((2, 12))
    actual[0, 3] = 4.0
    actual[1, :] = 5.0
    lower, upper = np.zeros((2, 12)), np.full((2, 12), 1.0)
    scores = backtest.MethodScores()
    classes = np.array(["discontinued", "smooth"], dtype=object)
    scores.add(np.zeros((2, 12)), np.array([1.0, 1.0]), actual, actual, classes, lower=lower, upper=upper)
    table = scores.table(12)
    assert table["discontinued"]["zero_share"] == pytest.approx(11 / 12)
    assert table["smooth"]["zero_share"] == 0.0
    assert table["all"]["zero_share"] == pytest.approx(11 / 24)
    assert backtest.coverage_target_reachable(table["discontinued"]["zero_share"]) is False
    assert backtest.coverage_target_reachable(table["smooth"]["zero_share"]) is True


def test_coverage_is_also_told_apart_for_weeks_whose_lower_bound_is_above_zero():
    # An intermittent item whose interval starts above zero misses every zero week, while one from
    # zero covers them: averaged per class the two looked calibrated (34% and 86% made ~80%).
    actual = np.zeros((2, 12))
    actual[:, ::4] = 3.0  # 3 weeks of 12 sell
    lower = np.vstack([np.full(12, 0.05), np.zeros(12)])
    upper = np.full((2, 12), 4.0)
    scores = backtest.MethodScores()
    classes = np.array(["intermittent", "intermittent"], dtype=object)
    scores.add(np.zeros((2, 12)), np.array([1.0, 1.0]), actual, actual, classes, lower=lower, upper=upper)
    row = scores.table(12)["intermittent"]
    assert row["coverage"] == pytest.approx((3 + 12) / 24)
    assert row["coverage_above_zero"] == pytest.approx(3 / 12)  # only the weeks that sold
    assert row["above_zero_share"] == pytest.approx(0.5)
    text = backtest.format_result(
        backtest.BacktestResult(
            label="t", horizon=12, origins=["o"], products=2, methods={"engine": scores}, sample_note="n"
        )
    )
    assert "| engine | intermittent | 2 | 0.000 | +0.000 | 62.5% | 25.0% (50.0% of weeks) |" in text
    without = backtest.MethodScores()  # no interval: n/a, not "0% of weeks"
    without.add(np.ones((2, 12)), np.array([1.0, 1.0]), actual, actual, classes)
    assert np.isnan(without.table(12)["intermittent"]["coverage_above_zero"])
    assert np.isnan(without.table(12)["intermittent"]["above_zero_share"])
    from_zero = backtest.MethodScores()  # intervals, none above zero
    from_zero.add(
        np.zeros((1, 12)), np.array([1.0]), actual[1:], actual[1:], classes[1:], lower=lower[1:], upper=upper[1:]
    )
    text = backtest.format_result(
        backtest.BacktestResult(
            label="t",
            horizon=12,
            origins=["o"],
            products=2,
            methods={"engine": from_zero, "seasonal_naive": without},
            sample_note="n",
        )
    )
    assert "| engine | intermittent | 1 | 0.000 | +0.000 | 100.0% | - (0.0% of weeks) |" in text
    assert "| seasonal_naive | intermittent | 2 | 1.000 | +0.000 | n/a | n/a | n/a |" in text


def test_report_classes_from_the_history_alone():
    rng = np.random.default_rng(0)
    t = 4 * models.SEASON_LENGTH
    cols = np.arange(t)
    smooth = rng.poisson(20.0, t)
    seasonal = rng.poisson(20.0 * (1 + 0.6 * np.sin(2 * np.pi * cols / models.SEASON_LENGTH)))
    shifted = rng.poisson(np.where(cols >= t - 30, 45.0, 15.0))
    stopped = rng.poisson(10.0, t) * (cols < t - 20)
    short = np.where(cols >= t - 30, rng.poisson(10.0, t), 0)
    intermittent = rng.poisson(0.3, t)
    y = np.vstack([smooth, seasonal, shifted, stopped, short, intermittent]).astype(float)
    classes = backtest.report_classes(y, models.first_demand_week(y))
    assert list(classes) == ["smooth", "seasonal", "level_shift", "discontinued", "short", "intermittent"]


def test_a_product_that_stopped_selling_most_of_a_year_ago_is_reported_as_discontinued():
    """Not as a level shift: its weeks since the stop are a "new level" of zero, and 170 of the
    demo backtest's 543 level-shift rows were such products, covered 99.6% by any interval from zero."""
    rng = np.random.default_rng(1)
    t = 4 * models.SEASON_LENGTH
    cols = np.arange(t)
    y = np.vstack([rng.poisson(10.0, t) * (cols < t - weeks) for weeks in (14, 30, 40, 50)]).astype(float)
    classes = backtest.report_classes(y, models.first_demand_week(y))
    assert list(classes) == ["discontinued"] * 4


def test_no_origin_sees_demand_after_it():
    """Demand planted from an origin on changes that origin's actuals, never its forecasts or classes
    (nor those of the origins before it)."""
    rng = np.random.default_rng(4)
    y = rng.poisson(6.0, size=(40, 3 * models.SEASON_LENGTH)).astype(float)
    kwargs = {"label": "leak", "origins": 3, "step": H, "horizon": H, "hw_sample": 0}
    base = backtest.run_backtest(y, **kwargs)
    cuts = [y.shape[1] - H - k * H for k in range(3)][::-1]
    for k, cut in enumerate(cuts):
        planted = y.copy()
        planted[:, cut:] += 1000.0 * rng.random((40, y.shape[1] - cut))
        leaked = backtest.run_backtest(planted, **kwargs)
        for name in ("engine", "seasonal_naive"):
            b, p = base.methods[name], leaked.methods[name]
            for j in range(k + 1):
                np.testing.assert_array_equal(b.forecast_sum[j], p.forecast_sum[j])  # same forecasts
                np.testing.assert_array_equal(b.demand_class[j], p.demand_class[j])
            assert (p.actual_sum[k] > b.actual_sum[k]).all()  # while the planted weeks were scored
        if k + 1 < len(cuts):  # the check can fail: a later origin does see the planted weeks
            assert not np.array_equal(
                base.methods["engine"].forecast_sum[k + 1], leaked.methods["engine"].forecast_sum[k + 1]
            )


def test_the_statsforecast_comparison_reports_every_model_and_the_targets():
    pytest.importorskip("statsforecast")
    rng = np.random.default_rng(6)
    cols = np.arange(3 * models.SEASON_LENGTH)
    y = np.vstack(
        [rng.poisson(10 * (1 + 0.5 * np.sin(2 * np.pi * (cols + p) / 52))) for p in range(0, 40, 10)]
        + [rng.poisson(0.4, len(cols)) for _ in range(3)]
    ).astype(float)
    result = backtest.run_backtest(y, label="sf", origins=1, horizon=H, hw_sample=0, sf_per_class=2, sf_jobs=1)
    tables = result.tables()
    for name in (*backtest.SF_MODELS, backtest.SF_ENSEMBLE, "engine_on_sf_sample"):
        assert tables[name]["all"]["products"] == result.methods["engine_on_sf_sample"].fits_in_table()
    assert np.isfinite(tables["AutoETS"]["all"]["msis"]) and np.isnan(tables["TSB"]["all"]["msis"])
    for name in backtest.SF_MODELS:  # each series' own fitting time, for the cost per class
        assert np.isfinite(np.concatenate(result.methods[name].series_seconds)).all()
    text = backtest.format_result(result)
    assert "best statsforecast" in text and "Engine vs AutoETS" in text
    checks = dict(backtest.summary_checks(result))
    assert "MASE at most 0.95x the best statsforecast model and the ensemble (all)" in checks
    # the best MSIS peer is shown with its own coverage: an interval score is only comparable
    # next to what the interval covers
    (overall,) = [r for r in backtest.sf_comparison(result) if r["class"] == "all"]
    peer = overall["best_msis_model"]
    assert overall["best_msis_coverage"] == tables[peer]["all"]["coverage"]
    assert f"{peer} ({overall['best_msis']:.2f}, covers {overall['best_msis_coverage']:.1%})" in text
    assert overall["msis_at_peer_coverage"].coverage >= overall["best_msis_coverage"]
    assert f"| all | {peer} ({overall['best_msis_coverage']:.1%}) | {overall['msis_at_peer_coverage']} |" in text


def test_asking_for_statsforecast_without_the_extra_says_so_in_one_line(monkeypatch, capsys):
    import sys

    from forecast_pipeline.cli.main import main

    monkeypatch.setitem(sys.modules, "statsforecast", None)  # import fails as if not installed
    assert not backtest.statsforecast_available()
    code = main(["backtest", "--products", "50", "--statsforecast", "5", "--no-real"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "pip install" in err and "[backtest]" in err


# --- issue 16: progress within an origin -----------------------------------------------------------


def test_the_engine_in_chunks_gives_identical_results_and_reports_each_chunk_and_fit():
    rng = np.random.default_rng(3)
    y = rng.poisson(5.0, size=(45, 3 * models.SEASON_LENGTH)).astype(float)
    y[::4, :60] = 0.0  # some shorter histories, some sparse ones
    y[::7] *= rng.random((7, y.shape[1])) < 0.3
    options = {"label": "noise", "origins": 2, "step": H, "horizon": H, "hw_sample": 3}
    whole = backtest.run_backtest(y, **options, chunk_rows=10_000)
    calls = []
    chunked = backtest.run_backtest(
        y, **options, chunk_rows=10, progress=lambda done, total: calls.append((done, total))
    )
    np.testing.assert_equal(chunked.tables(), whole.tables())  # NaN (no intervals) equal to NaN
    for name, scores in whole.methods.items():
        assert chunked.methods[name].fits == scores.fits
        assert chunked.methods[name].outliers_capped == scores.outliers_capped
    # at once (0 done), then 5 engine chunks and 3 Holt-Winters fits per origin: 45 + 3 series each
    assert calls[0] == (0, 2 * (45 + 3))
    assert [done for done, _ in calls[1:]] == [10, 20, 30, 40, 45, 46, 47, 48, 58, 68, 78, 88, 93, 94, 95, 96]
    assert calls[-1] == (96, 96)


def test_a_paired_bootstrap_tells_a_real_difference_from_the_noise_of_the_sample():
    rng = np.random.default_rng(3)
    peer = rng.gamma(2.0, 0.5, 400)  # per-series scores of 400 series x origins
    exact = backtest.paired_ratio_interval(0.9 * peer, peer)
    assert exact.ratio == pytest.approx(0.9) and exact.low == pytest.approx(0.9) and exact.high == pytest.approx(0.9)
    assert exact.verdict == "ahead"
    # the same mean, each series off by noise as large as the scores: the ratio is not 1, the interval holds 1
    noisy = backtest.paired_ratio_interval(peer + rng.normal(0.0, 1.0, 400), peer)
    assert noisy.ratio != pytest.approx(1.0, abs=1e-3) and noisy.low < 1.0 < noisy.high
    assert noisy.verdict == "within the sample's noise"
    # 5% worse on every series, with the same noise: the interval is above 1
    worse = backtest.paired_ratio_interval(1.05 * peer + rng.normal(0.0, 0.02, 400), peer)
    assert worse.low > 1.0 and worse.verdict == "behind"
    # pairs, not two samples: series that differ 100-fold hide a 2% gap between two independent
    # samples, not between the same series scored twice
    spread = rng.lognormal(0.0, 2.0, 400)
    paired = backtest.paired_ratio_interval(0.98 * spread + rng.normal(0.0, 0.001, 400), spread)
    assert paired.high < 1.0 and paired.verdict == "ahead"
    assert backtest.paired_ratio_interval(0.98 * spread, spread) == backtest.paired_ratio_interval(
        0.98 * spread, spread
    )
    # 2,000 resamples in pairs, the 2.5th and 97.5th percentiles of the ratio of their means (the
    # resamples of a large class are drawn in several chunks)
    e, q = rng.gamma(2.0, 0.5, 2500), rng.gamma(2.0, 0.5, 2500)
    idx = np.random.default_rng(0).integers(0, 2500, (2000, 2500))
    expected = np.quantile(e[idx].mean(axis=1) / q[idx].mean(axis=1), (0.025, 0.975))
    big = backtest.paired_ratio_interval(e, q)
    assert (big.low, big.high) == pytest.approx(tuple(expected)) and big.ratio == pytest.approx(e.mean() / q.mean())
    # no verdict where there is nothing to go on
    assert backtest.paired_ratio_interval(0.5 * peer[:5], peer[:5]).verdict == "too few series to tell"
    assert backtest.paired_ratio_interval(peer[:20], np.zeros(20)).verdict == "no ratio (a mean of zero)"


def test_the_statsforecast_comparison_says_which_verdicts_are_within_the_samples_noise():
    # 300 level-shift series x origins: the engine 0.4% behind ADIDA on average, each series off by
    # noise; 300 smooth ones where it is 10% ahead of ADIDA on every series
    rng = np.random.default_rng(8)
    n = 300
    actual = rng.gamma(2.0, 2.0, (2 * n, H))
    classes = np.array(["level_shift"] * n + ["smooth"] * n, dtype=object)
    peer_error = rng.gamma(2.0, 1.0, (2 * n, H))
    off = rng.lognormal(0.0, 0.3, (n, 1)) / np.exp(0.3**2 / 2)  # each series' own luck, mean 1
    engine_error = np.vstack([1.004 * off * peer_error[:n], 0.9 * peer_error[n:]])
    scale = np.ones(2 * n)
    scale[0] = 0.0  # a series that never changed: out of MASE and MSIS, as in the tables

    def scored(error, interval=True):
        scores = backtest.MethodScores()
        bounds = {"lower": actual - 2 * np.abs(error), "upper": actual + 1.0} if interval else {}
        scores.add(error, scale, actual + error, actual, classes, **bounds)
        return scores

    methods = {
        "engine": scored(2 * engine_error),  # all the engine's series; the ratios read the sample's
        "seasonal_naive": scored(2 * peer_error, interval=False),
        "engine_on_sf_sample": scored(engine_error),
        "ADIDA": scored(peer_error, interval=False),
        "AutoETS": scored(1.01 * peer_error),  # intervals, MASE 1% behind ADIDA
        backtest.SF_ENSEMBLE: scored(peer_error, interval=False),
    }
    result = backtest.BacktestResult(label="t", horizon=H, origins=["o"], products=2 * n, methods=methods)
    rows = {r["class"]: r for r in backtest.sf_comparison(result)}
    shift, smooth = rows["level_shift"]["mase_vs_best"], rows["smooth"]["mase_vs_best"]
    assert shift.ratio > 1.0 and shift.low < 1.0 < shift.high
    assert smooth.ratio == pytest.approx(0.9) and smooth.high < 1.0
    msis = rows["smooth"]["msis_vs_best"]  # against AutoETS, the one peer with intervals
    assert msis.verdict == "ahead"  # narrower on every series
    tables = result.tables()  # the ratios are those of the class means the tables print
    assert shift.ratio == pytest.approx(
        tables["engine_on_sf_sample"]["level_shift"]["mase"] / tables["ADIDA"]["level_shift"]["mase"]
    )
    assert msis.ratio == pytest.approx(
        tables["engine_on_sf_sample"]["smooth"]["msis"] / tables["AutoETS"]["smooth"]["msis"]
    )
    text = backtest.format_result(result)
    assert f"| level_shift | {shift} (vs ADIDA) |" in text and "within the sample's noise" in text
    assert f"| smooth | {smooth} (vs ADIDA) | {msis} (vs AutoETS) |" in text
    checks = backtest.format_checks(backtest.summary_checks(result))
    assert f"- [ ] MASE at most the best statsforecast model's (level_shift): engine / ADIDA {shift}" in checks
    assert f"- [x] MASE at most the best statsforecast model's (smooth): engine / ADIDA {smooth}" in checks
    assert f"- [x] MSIS no worse than the best peer with intervals (smooth): engine / AutoETS {msis}" in checks
    with pytest.raises(ValueError, match="not scored on the engine's statsforecast sample"):
        methods["AutoETS"].actual_sum[0] = methods["AutoETS"].actual_sum[0] + 1.0
        backtest.sf_comparison(result)


def test_the_engine_is_also_scored_at_the_peers_coverage_where_zero_weeks_reward_covering_more():
    # counts of 0 (70% of weeks), 1 or 2: the engine's upper bound 0.5 covers the zero weeks, the
    # peer's 1.0 the ones too; moved out by x6 from the forecast 0.4 the engine's interval is the
    # peer's, so at the peer's coverage their scores are equal
    rng = np.random.default_rng(10)
    n = 200
    actual = rng.choice([0.0, 1.0, 2.0], p=[0.7, 0.2, 0.1], size=(n, H))
    classes = np.array(["intermittent"] * n, dtype=object)
    ids = np.arange(n)

    def scored(upper, keep_weeks=False):
        scores = backtest.MethodScores(keep_weeks=keep_weeks)
        fc = np.full((n, H), 0.4)
        scores.add(fc - actual, np.ones(n), fc, actual, classes, lower=np.zeros((n, H)), upper=upper, ids=ids)
        return scores

    engine = scored(np.full((n, H), 0.5), keep_weeks=True)
    peer = scored(np.full((n, H), 1.0))
    methods = {"engine": engine, "seasonal_naive": peer, "engine_on_sf_sample": engine, "AutoETS": peer}
    methods[backtest.SF_ENSEMBLE] = peer
    result = backtest.BacktestResult(label="t", horizon=H, origins=["o"], products=n, methods=methods)
    row = {r["class"]: r for r in backtest.sf_comparison(result)}["intermittent"]
    assert row["msis_vs_best"].verdict == "behind"  # as calibrated to what it covers, behind
    at = row["msis_at_peer_coverage"]
    assert at.factor == pytest.approx(6.0, abs=1e-6)
    assert at.coverage == at.peer_coverage == pytest.approx((actual <= 1).mean())
    assert at.vs_peer.ratio == pytest.approx(1.0, abs=1e-6)
    checks = backtest.format_checks(backtest.summary_checks(result))
    line = f"(intermittent): engine / AutoETS {row['msis_vs_best']}; at its {at.peer_coverage:.1%} coverage {at}"
    assert line in checks
    assert "x6.00, covering" in str(at)
    # where the engine's upper bounds are already wider than the peer's, they are moved in
    wide = scored(np.full((n, H), 1.5), keep_weeks=True)
    result.methods.update(engine=wide, engine_on_sf_sample=wide)
    at = backtest.widened_to_peer_coverage(result, "AutoETS", "intermittent")
    assert at.factor == pytest.approx(0.6 / 1.1, abs=1e-6) and at.vs_peer.ratio == pytest.approx(1.0, abs=1e-6)
    # an engine whose weeks were not kept (or a lower bound above the weeks it misses): no figure
    assert (
        backtest.widened_to_peer_coverage(
            backtest.BacktestResult("t", H, ["o"], n, {**methods, "engine_on_sf_sample": scored(np.full((n, H), 0.5))}),
            "AutoETS",
            "intermittent",
        )
        is None
    )


def test_a_class_coverage_comes_with_an_interval_that_tells_a_miss_from_the_samples_noise():
    rng = np.random.default_rng(9)
    exact = backtest.coverage_interval(np.full(200, 0.8))  # every series x origin covers 80% of its weeks
    assert (exact.share, exact.low, exact.high) == pytest.approx((0.8, 0.8, 0.8)) and exact.verdict == "inside"
    few = backtest.coverage_interval(np.repeat([0.6, 0.94], 20))  # 77% over 40 series: a few points either way
    assert few.low < backtest.COVERAGE_TARGET[0] < few.high and few.verdict == "within the sample's noise"
    lucky = backtest.coverage_interval(np.repeat([0.65, 0.95], 20))  # 80% on the nose, but as noisy
    assert lucky.share == pytest.approx(0.8) and lucky.verdict == "within the sample's noise"
    over = backtest.coverage_interval(rng.binomial(H, 0.92, 400) / H)  # an interval from zero on stopped items
    assert over.low > backtest.COVERAGE_TARGET[1] and over.verdict == "outside"
    # the class's share of weeks covered, and the 2.5th/97.5th percentiles of 2,000 resampled means
    shares = rng.binomial(H, 0.8, 300) / H
    idx = np.random.default_rng(0).integers(0, 300, (2000, 300))
    got = backtest.coverage_interval(shares)
    assert got.share == pytest.approx(shares.mean())
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(shares[idx].mean(axis=1), (0.025, 0.975))))
    assert backtest.coverage_interval(shares[:5]).verdict == "too few series to tell"

    # in the comparison: the table's coverage, its interval in the "How sure" table and on the check line
    actual = rng.poisson(5.0, (400, H)).astype(float)
    lower, upper = actual - 1.0, actual + 1.0
    upper[:60] = actual[:60] - 0.5  # 60 of 300 seasonal series miss every week: 80% covered
    scores = backtest.MethodScores()
    classes = np.array(["seasonal"] * 300 + ["smooth"] * 100, dtype=object)  # smooth: all covered
    scores.add(np.ones((400, H)), np.ones(400), actual + 1, actual, classes, lower=lower, upper=upper)
    peer = backtest.MethodScores()
    peer.add(np.ones((400, H)), np.ones(400), actual + 1, actual, classes, lower=lower - 1, upper=upper + 1)
    methods = {"engine": scores, "seasonal_naive": peer, "engine_on_sf_sample": scores, "AutoETS": peer}
    methods[backtest.SF_ENSEMBLE] = peer
    result = backtest.BacktestResult(label="t", horizon=H, origins=["o"], products=400, methods=methods)
    row = {r["class"]: r for r in backtest.sf_comparison(result)}["seasonal"]
    assert row["coverage_interval"].share == pytest.approx(
        result.tables()["engine_on_sf_sample"]["seasonal"]["coverage"]
    )
    assert row["coverage_interval"].share == pytest.approx(0.8)
    text = backtest.format_result(result)
    assert f"| {row['coverage_interval']} |" in text
    checks = backtest.format_checks(backtest.summary_checks(result))
    assert f"- [x] 80% coverage within 78%-82% (seasonal): {row['coverage_interval']}" in checks


def test_the_coverage_target_is_checked_on_every_series_the_engine_forecast_not_on_the_class_sample():
    """The statsforecast sample draws as many series from each class: overall it held 400 stopped
    products (an interval from zero covers 98% of their weeks) of 3,157, where they are 920 of
    38,974, and its 82.1% read as a miss of the 78-82% target the engine met (80.4%)."""
    rng = np.random.default_rng(5)
    actual = rng.poisson(5.0, (950, H)).astype(float)
    lower, upper = actual - 1.0, actual + 1.0
    upper[:180] = actual[:180] - 0.5  # 180 of 900 smooth series miss every week: 80% covered
    classes = np.array(["smooth"] * 900 + ["discontinued"] * 50, dtype=object)  # the stopped: all covered
    everything = backtest.MethodScores()
    everything.add(np.ones((950, H)), np.ones(950), actual + 1, actual, classes, lower=lower, upper=upper)
    pick = np.r_[0:10, 180:270, 900:950]  # a sample of 100 smooth series (10 missing) and the 50 stopped
    sample, peer = backtest.MethodScores(), backtest.MethodScores()
    a, c = actual[pick], classes[pick]
    sample.add(np.ones((len(pick), H)), np.ones(len(pick)), a + 1, a, c, lower=lower[pick], upper=upper[pick])
    peer.add(np.ones((len(pick), H)), np.ones(len(pick)), a + 1, a, c, lower=a - 2, upper=a + 2)
    methods = {"engine": everything, "seasonal_naive": everything, "engine_on_sf_sample": sample, "AutoETS": peer}
    methods[backtest.SF_ENSEMBLE] = peer
    result = backtest.BacktestResult(label="t", horizon=H, origins=["o"], products=950, methods=methods)
    assert result.tables()["engine_on_sf_sample"]["all"]["coverage"] == pytest.approx(140 / 150)
    rows = {r["class"]: r for r in backtest.sf_comparison(result)}
    assert rows["all"]["coverage_interval"].share == pytest.approx(770 / 950)
    assert rows["all"]["coverage_interval"].series == 950
    assert rows["smooth"]["coverage_interval"].share == pytest.approx(0.8)  # the sample's smooth ones cover 90%
    assert rows["all"]["coverage"] == pytest.approx(140 / 150)  # the same-sample table keeps the sample's
    checks = backtest.format_checks(backtest.summary_checks(result))
    assert f"- [x] 80% coverage within 78%-82% (all): {rows['all']['coverage_interval']}" in checks
    assert f"- [x] 80% coverage within 78%-82% (smooth): {rows['smooth']['coverage_interval']}" in checks


def test_statsforecasts_cost_per_series_weights_each_class_by_its_share_of_all_series():
    # The sample holds as many short series as intermittent ones, the data nine intermittent for one
    # short; AutoETS takes 1 ms on a short series and 12 ms on an intermittent one.
    actual = np.ones((100, H))
    sample_classes = np.array(["short"] * 50 + ["intermittent"] * 50, dtype=object)
    ets = backtest.MethodScores()
    ets.add(np.zeros((100, H)), np.ones(100), actual, actual, sample_classes, seconds=np.repeat([0.001, 0.012], 50))
    ets.seconds, ets.fits = 0.65, 100
    engine_scores = backtest.MethodScores()
    all_classes = np.array(["short"] * 100 + ["intermittent"] * 900, dtype=object)
    engine_scores.add(np.zeros((1000, H)), np.ones(1000), np.ones((1000, H)), np.ones((1000, H)), all_classes)
    engine_scores.seconds, engine_scores.fits = 0.2, 1000  # 0.2 ms a series
    result = backtest.BacktestResult(
        label="t", horizon=H, origins=["o"], products=1000, methods={"engine": engine_scores, "AutoETS": ets}
    )
    weighted = backtest.seconds_per_series(result, "AutoETS")
    assert weighted == pytest.approx(0.1 * 0.001 + 0.9 * 0.012)  # not the sample's 0.0065
    assert backtest.seconds_per_series(result, "engine") == pytest.approx(0.0002)
    assert backtest.engine_speedup(result, "AutoETS") == pytest.approx(0.0109 / 0.0002)  # 54.5x, not 32.5x
    # a class the sample lacks: the others' shares are rescaled, not left short of one
    engine_scores.add(np.zeros((500, H)), np.ones(500), np.ones((500, H)), np.ones((500, H)), ["lumpy"] * 500)
    assert backtest.seconds_per_series(result, "AutoETS") == pytest.approx(0.0109)


def test_a_products_origins_are_resampled_together(monkeypatch):
    # 60 products, each scored at 4 origins with the same result: 240 rows but 60 independent draws.
    rng = np.random.default_rng(12)
    engine_each, peer_each = rng.gamma(2.0, 0.5, 60), rng.gamma(2.0, 0.5, 60)
    engine_rows, peer_rows, products = np.tile(engine_each, 4), np.tile(peer_each, 4), np.tile(np.arange(60), 4)
    rows = backtest.paired_ratio_interval(engine_rows, peer_rows)
    clustered = backtest.paired_ratio_interval(engine_rows, peer_rows, clusters=products)
    alone = backtest.paired_ratio_interval(engine_each, peer_each)  # the 60 products once each
    assert clustered.ratio == pytest.approx(rows.ratio) and rows.ratio == pytest.approx(alone.ratio)
    assert clustered.high - clustered.low > 1.6 * (rows.high - rows.low)  # ~2x: 4 copies are not 4 draws
    assert clustered.high - clustered.low == pytest.approx(alone.high - alone.low, rel=0.25)
    shares = np.tile(rng.binomial(H, 0.8, 60) / H, 4)
    wide, narrow = backtest.coverage_interval(shares, clusters=products), backtest.coverage_interval(shares)
    assert wide.high - wide.low > 1.6 * (narrow.high - narrow.low)
    # a handful of products is too few to tell, however many origins each has
    few = backtest.paired_ratio_interval(engine_rows[:80], peer_rows[:80], clusters=np.arange(80) % 5)
    assert few.pairs == 80 and few.draws == 5 and few.verdict == "too few series to tell"
    assert backtest.coverage_interval(shares[:80], clusters=np.arange(80) % 5).verdict == "too few series to tell"

    # in a run, the comparison resamples by product: a product sampled at several origins is one draw
    def last_value(series, horizon, n_jobs=2):  # a stand-in for statsforecast's fits (minutes)
        mean = np.vstack([np.full(horizon, s[-1]) for s in series])
        out = {m: (mean, None, None, np.full(len(series), 0.01)) for m in backtest.SF_MODELS}
        out[backtest.SF_ENSEMBLE] = (mean, None, None, np.full(len(series), 0.03))
        return out

    clusters_seen = []
    paired = backtest.paired_ratio_interval

    def spy(engine_scores, peer_scores, clusters=None, **kwargs):
        clusters_seen.append(clusters)
        return paired(engine_scores, peer_scores, clusters=clusters, **kwargs)

    monkeypatch.setattr(backtest, "statsforecast_forecasts", last_value)
    monkeypatch.setattr(backtest, "paired_ratio_interval", spy)
    y = rng.poisson(5.0, (30, 3 * models.SEASON_LENGTH)).astype(float)
    result = backtest.run_backtest(y, label="c", origins=3, horizon=H, hw_sample=0, sf_per_class=40)
    rows_by_class = {r["class"]: r for r in backtest.sf_comparison(result)}
    ids = np.concatenate(result.methods["engine_on_sf_sample"].series_ids)
    assert len(ids) == 3 * 30 and set(ids) == set(range(30))  # every product at every origin
    assert all(c is not None for c in clusters_seen)
    overall = clusters_seen[-1]  # the last class compared is "all"
    assert len(overall) == 90 and len(np.unique(overall)) == 30
    assert rows_by_class["all"]["coverage_interval"].series == 90


def test_backtest_of_the_database_source_runs_on_the_configured_database(tmp_path: Path):
    """``--source database`` read a WeeklyHistory where a matrix was expected and failed every
    time (found by a hunting helper). An SQLite file of demo orders, as the quickstart writes it."""
    url = f"sqlite:///{tmp_path / 'orders.sqlite'}"
    for args in (["init-db"], ["demo-data", "--products", "60", "--as-of", "2021-06-01"]):
        done = command([str(BIN / "forecast-pipeline"), *args], tmp_path, DATABASE_URL=url)
        assert done.returncode == 0, done.stderr[-2000:]
    done = command(
        [str(BIN / "forecast-pipeline"), "backtest", "--source", "database", "--as-of", "2021-06-01"]
        + ["--origins", "2", "--hw-sample", "0", "--no-real"],
        tmp_path,
        DATABASE_URL=url,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "products eligible at 2021-06-01" in done.stdout and "| engine | all |" in done.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--step", "0"], "--step: must be a whole number of at least 1, got '0'"),
        (["--origins", "0"], "--origins: must be a whole number of at least 1, got '0'"),
        (["--hw-sample", "-1"], "--hw-sample: must be a whole number of at least 0, got '-1'"),
        (["--products", "0"], "--products: must be a whole number of at least 1, got '0'"),
        # origins before the history starts were scored on weeks near the end (negative slices)
        (["--as-of", "2019-10-08", "--step", "25", "--origins", "3"], "the first origin would be before"),
    ],
)
def test_backtest_options_that_cannot_be_scored_are_refused_in_one_line(tmp_path: Path, options, message):
    done = command(
        [str(BIN / "forecast-pipeline"), "backtest", "--products", "60", "--hw-sample", "0", "--no-real", *options],
        tmp_path,
    )
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-1000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
