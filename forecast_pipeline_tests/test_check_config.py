"""`forecast-pipeline check` fails exactly when the code location would, and looks for the
application tables (subprocesses, as an operator runs them)."""

import pytest
import sqlalchemy as sa

from forecast_pipeline.connections import make_engine
from forecast_pipeline_tests.conftest import BIN, command

pytestmark = pytest.mark.integration

BAD_AREA_SETTINGS = {"ALERT_WEBHOOK_URL": "ftp://x", "REPORT_TOP_PRODUCTS": "0"}


def test_check_refuses_what_the_code_location_refuses(tmp_path, pg):
    checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, FORECAST_WORKERS="0", **BAD_AREA_SETTINGS)
    assert checked.returncode == 2, checked.stdout
    assert "configuration: ok" not in checked.stdout
    assert "ALERT_WEBHOOK_URL='ftp://x' must be an http:// or https:// URL" in checked.stderr
    assert "REPORT_TOP_PRODUCTS=0 must be between" in checked.stderr
    assert "FORECAST_WORKERS=0 must be between" in checked.stderr  # every area's problems at once
    loaded = command(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "forecast_pipeline.definitions"],
        tmp_path,
        FORECAST_WORKERS="0",
        **BAD_AREA_SETTINGS,
    )
    assert loaded.returncode != 0
    output = loaded.stdout + loaded.stderr
    assert "ALERT_WEBHOOK_URL='ftp://x'" in output and "REPORT_TOP_PRODUCTS=0" in output
    assert "FORECAST_WORKERS=0" in output  # whichever definition reads its settings first
    # and both accept the same settings once they are fixed
    fine = {"ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook", "REPORT_TOP_PRODUCTS": "5"}
    ok = command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path, **fine)
    assert ok.returncode == 0, ok.stderr
    checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, **fine)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "configuration: ok" in checked.stdout
    loaded = command(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "forecast_pipeline.definitions"], tmp_path, **fine
    )
    assert loaded.returncode == 0, loaded.stdout[-2000:] + loaded.stderr[-2000:]


def test_check_reports_missing_application_tables(tmp_path, pg):
    ok = command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    app_url = pg.url.render_as_string(hide_password=False)
    engine = make_engine(app_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alert_notifications"))
        checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path)
        assert checked.returncode == 1
        assert "application tables: MISSING alert_notifications" in checked.stdout
        assert command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path).returncode == 0
        checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path)
        assert checked.returncode == 0, checked.stdout
        assert "application tables: " in checked.stdout and "present" in checked.stdout
    finally:
        engine.dispose()


def test_every_command_refuses_what_the_code_location_refuses(tmp_path):
    """Not only ``check``: a command that runs with a bad ALERT_*/REPORT_* variable would act on
    an environment the code location refuses to load."""
    done = command([str(BIN / "forecast-pipeline"), "requests", "list"], tmp_path, **BAD_AREA_SETTINGS)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("forecast-pipeline: invalid configuration, 2 variables to fix:"), done.stderr
    assert "ALERT_WEBHOOK_URL='ftp://x' must be" in done.stderr and "REPORT_TOP_PRODUCTS=0 must be" in done.stderr


def test_check_warns_when_redis_may_evict_the_forecasts(tmp_path, pg):
    """With maxmemory and an eviction policy, Redis drops keys the publish relies on (a date's
    hash, the records of what a rerun removes) and the forecasts the API reads, silently (found by
    a hunting helper). `check` says so; without a memory limit any policy is fine."""
    from forecast_pipeline_tests.conftest import private_redis

    assert command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path).returncode == 0
    for options, warned in [
        (("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"), True),
        (("--maxmemory", "100mb", "--maxmemory-policy", "noeviction"), False),
        (("--maxmemory-policy", "volatile-ttl"), False),  # no limit: nothing is ever evicted
    ]:
        with private_redis(*options) as (url, _):
            checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, REDIS_URL=url)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert ("maxmemory-policy" in checked.stdout) == warned, (options, checked.stdout)
        if warned:
            assert "WARNING: maxmemory 100mb with maxmemory-policy allkeys-lru" in checked.stdout, checked.stdout
