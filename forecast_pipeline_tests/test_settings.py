"""Configuration: defaults from the legacy worker, and bad values named at load."""

import datetime as dt
import traceback

import pytest

from forecast_pipeline.alerts.config import AlertSettings
from forecast_pipeline.reports.config import ReportSettings
from forecast_pipeline.settings import (
    RENAMED_VARIABLES,
    ConfigError,
    Settings,
    known_variables,
    load_all_settings,
    load_settings,
    normalize_database_url,
    redact_url,
    unknown_variable_warnings,
)
from forecast_pipeline_tests.conftest import BIN, command


def test_defaults_match_the_legacy_worker():
    s = load_settings({})
    assert (s.cache_ttl, s.workers, s.min_customers, s.min_orders) == (604800, 10, 2, 3)
    assert s.history_start == dt.date(2019, 1, 1)
    assert s.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    database_url = s.database_url.get_secret_value()
    assert database_url.startswith("sqlite:///") and database_url.endswith("data/forecast_demo.sqlite")
    assert s.app_database_url == s.database_url
    assert s.max_failure_rate == 0.05 and s.forecast_weeks == 12 and s.key_prefix == "forecast"


def test_redis_host_port_db_compose_a_url_without_the_password():
    s = load_settings({"REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_DB": "4", "REDIS_PASSWORD": "hunter2"})
    assert s.redis_url.get_secret_value() == "redis://cache:6380/4"
    assert s.redis_password.get_secret_value() == "hunter2"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FORECAST_WORKERS": "abc"}, "FORECAST_WORKERS='abc' is not a whole number"),
        ({"FORECAST_WORKERS": "0"}, "FORECAST_WORKERS=0 must be between 1 and 256"),
        ({"FORECAST_CACHE_TTL": "0"}, "FORECAST_CACHE_TTL=0 must be at least 1"),
        ({"FORECAST_MAX_FAILURE_RATE": "1.5"}, "FORECAST_MAX_FAILURE_RATE=1.5 must be between 0 and 1"),
        ({"FORECAST_HISTORY_START": "2019-13-01"}, "FORECAST_HISTORY_START='2019-13-01' is not a date"),
        ({"DATABASE_URL": "oracle+nodriver://u@h/db"}, "DATABASE_URL="),
        ({"DATABASE_URL": "nosuchdb://x"}, "Can't load plugin: sqlalchemy.dialects:nosuchdb"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL='http://cache:6379' must start with redis://"),
        ({"REDIS_PORT": "seventy"}, "REDIS_PORT='seventy' is not a whole number"),
        ({"FORECAST_SCHEDULE_TIMEZONE": "Mars/Olympus"}, "FORECAST_SCHEDULE_TIMEZONE='Mars/Olympus'"),
        ({"FORECAST_SCHEDULE_TIMEZONE": "Europe"}, "FORECAST_SCHEDULE_TIMEZONE='Europe' is not an IANA time zone"),
        ({"FORECAST_SCHEDULE_TIMEZONE": "localtime"}, "FORECAST_SCHEDULE_TIMEZONE='localtime' is not an IANA"),
        ({"FORECAST_SCHEDULE_CRON": "every day"}, "FORECAST_SCHEDULE_CRON='every day' is not a valid cron"),
        ({"FORECAST_EXECUTOR": "celery"}, "FORECAST_EXECUTOR='celery' must be one of"),
        # spaces around the value are trimmed, but one after a colon was kept: ": forecast" wrote
        # " forecast:22", which the API reading forecast:22 never sees
        ({"FORECAST_KEY_PREFIX": ": forecast"}, "FORECAST_KEY_PREFIX=': forecast' must be a non-empty word"),
        ({"FORECAST_KEY_PREFIX": "demand forecast"}, "FORECAST_KEY_PREFIX='demand forecast' must be"),
    ],
)
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert named in str(info.value)


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings({"FORECAST_WORKERS": "abc", "FORECAST_CACHE_TTL": "-5", "FORECAST_MIN_ORDERS": "x"})
    message = str(info.value)
    assert "FORECAST_WORKERS" in message and "FORECAST_CACHE_TTL" in message and "FORECAST_MIN_ORDERS" in message


def test_secrets_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": "postgresql+asyncpg://app:s3cret@db/orders"})
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_plain_postgres_urls_use_psycopg2():
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
    url = load_settings({"DATABASE_URL": "postgresql://u@h/db"}).database_url.get_secret_value()
    assert url.startswith("postgresql+psycopg2://")


def test_redact_url_hides_passwords_of_any_scheme():
    assert redact_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert "pw" not in redact_url("postgresql+psycopg2://user:pw@db/orders")


def test_the_shard_size_is_validated_with_its_name():
    assert load_settings({}).shard_size == 25000
    assert load_settings({"FORECAST_SHARD_SIZE": "5000"}).shard_size == 5000
    for bad, message in (("0", "FORECAST_SHARD_SIZE=0 must be between 1 and 10000000"), ("lots", "not a whole number")):
        with pytest.raises(ConfigError, match=message):
            load_settings({"FORECAST_SHARD_SIZE": bad})


# ---------------------------------------------------------------- one model per area, secrets

SECRETS = {
    "DATABASE_URL": "postgresql://app:db-s3cret@db/orders?sslpassword=db-param-s3cret",
    "APP_DATABASE_URL": "postgresql://app:app-s3cret@db/app",
    "REDIS_URL": "redis://:redis-url-s3cret@cache:6379/0",
    "REDIS_PASSWORD": "redis-s3cret",
    "ALERT_WEBHOOK_URL": "https://hook:hook-s3cret@hooks.example/in?token=hook-token-s3cret",
    "REPORT_SMTP_HOST": "mail.example",
    "REPORT_SMTP_FROM": "reports@x.example",
    "REPORT_SMTP_USER": "mailer",
    "REPORT_SMTP_PASSWORD": "smtp-s3cret",
}


def assert_no_secret(text: str) -> None:
    assert "s3cret" not in text, text


def test_no_secret_is_shown_by_the_settings_of_any_area():
    settings = load_all_settings(SECRETS)
    for shown in (settings, settings.forecasts, settings.alerts, settings.reports, settings.reports.smtp):
        assert_no_secret(repr(shown))
        assert_no_secret(str(shown))
    for model in (settings.forecasts, settings.alerts, settings.reports):
        assert_no_secret(model.model_dump_json())
    assert_no_secret(f"{settings.forecasts.database_url} {settings.forecasts.redis_url} {settings.alerts.webhook_url}")
    # where they point is still shown, and the real values are there for connecting
    assert str(settings.forecasts.redis_url) == "redis://:***@cache:6379/0"
    assert "hooks.example" in repr(settings.alerts)
    assert settings.forecasts.redis_password.get_secret_value() == "redis-s3cret"
    assert settings.reports.smtp.password.get_secret_value() == "smtp-s3cret"
    assert "hook-s3cret" in settings.alerts.webhook_url.get_secret_value()


def test_no_secret_is_shown_by_the_errors_of_any_area():
    bad = {
        **SECRETS,
        "DATABASE_URL": "mysql://app:db-s3cret@db/orders",  # driver not installed
        "APP_DATABASE_URL": "nosuch://app:app-s3cret@db/app",
        "REDIS_URL": "http://:redis-url-s3cret@cache:6379/0",
        "ALERT_WEBHOOK_URL": "ftp://hook:hook-s3cret@hooks.example/in",
        "REPORT_SMTP_SECURITY": "none",  # a password would go in clear
        "FORECAST_WORKERS": "0",
    }
    with pytest.raises(ConfigError) as info:
        load_all_settings(bad)
    message = str(info.value)
    assert_no_secret(message)
    for name in ("DATABASE_URL", "APP_DATABASE_URL", "REDIS_URL", "ALERT_WEBHOOK_URL", "REPORT_SMTP_PASSWORD"):
        assert name in message
    # nor does the traceback: the pydantic error (which holds the inputs) is not chained
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_no_secret("".join(traceback.format_exception(info.value)))


def test_one_validation_lists_every_bad_variable_of_every_area():
    with pytest.raises(ConfigError) as info:
        load_all_settings({"FORECAST_WORKERS": "0", "ALERT_RETENTION_DAYS": "x", "REPORT_TOP_PRODUCTS": "0"})
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid configuration, 3 variables to fix:"
    assert lines[1:] == [
        "  - FORECAST_WORKERS=0 must be between 1 and 256",
        "  - ALERT_RETENTION_DAYS='x' is not a whole number",
        "  - REPORT_TOP_PRODUCTS=0 must be between 1 and 1000",
    ]
    fine = load_all_settings({"FORECAST_WORKERS": "3", "ALERT_RETENTION_DAYS": "7", "REPORT_TOP_PRODUCTS": "5"})
    assert (fine.forecasts.workers, fine.alerts.retention_days, fine.reports.top_products) == (3, 7, 5)


def test_values_are_parsed_as_strictly_as_the_legacy_worker_did():
    """pydantic alone would take ``1.0`` as a whole number and a Unix time as a date."""
    with pytest.raises(ConfigError, match="FORECAST_WORKERS='4.0' is not a whole number"):
        load_settings({"FORECAST_WORKERS": "4.0"})
    with pytest.raises(ConfigError, match="FORECAST_HISTORY_START='1546300800' is not a date"):
        load_settings({"FORECAST_HISTORY_START": "1546300800"})
    with pytest.raises(ConfigError, match="FORECAST_MAX_FAILURE_RATE=inf must be between 0 and 1"):
        load_settings({"FORECAST_MAX_FAILURE_RATE": "inf"})
    # blank is unset, and values are stripped
    s = load_settings({"FORECAST_WORKERS": " 4 ", "FORECAST_WEEKS": "  ", "FORECAST_REQUEST_TIMEOUT_SECONDS": ""})
    assert (s.workers, s.forecast_weeks, s.request_timeout_seconds) == (4, 12, None)


def test_the_known_variables_are_the_fields_of_the_area_models():
    known = known_variables()
    for model in (Settings, AlertSettings, ReportSettings):
        for name, field in model.model_fields.items():
            if name != "request_finished_grace_seconds":  # the one field without a variable
                assert field.validation_alias in known, name
    assert {"FORECAST_WORKERS", "ALERT_WEBHOOK_URL", "REPORT_SMTP_PASSWORD", "REPORTS_DIR", "REDIS_PASSWORD"} <= known
    assert unknown_variable_warnings({"ALERT_RETENTION_DAY": "3"}) == [
        "unknown variable ALERT_RETENTION_DAY (did you mean ALERT_RETENTION_DAYS?)"
    ]


def test_the_old_forecast_job_variables_are_read_with_a_warning_naming_the_new_one():
    settings = load_settings({"FORECAST_JOB_CLAIM_LIMIT": "3", "FORECAST_JOB_TIMEOUT_SECONDS": "600"})
    assert (settings.request_claim_limit, settings.request_timeout_seconds) == (3, 600)
    assert unknown_variable_warnings({"FORECAST_JOB_CLAIM_LIMIT": "3"}) == [
        "FORECAST_JOB_CLAIM_LIMIT is deprecated: it is read for now, rename it FORECAST_REQUEST_CLAIM_LIMIT"
    ]
    # the new name alone, or both with the same value, are fine; every old name has its new field
    assert load_settings({"FORECAST_REQUEST_CLAIM_LIMIT": "4"}).request_claim_limit == 4
    both = {"FORECAST_JOB_CLAIM_LIMIT": "4", "FORECAST_REQUEST_CLAIM_LIMIT": " 4 "}
    assert load_settings(both).request_claim_limit == 4
    assert set(RENAMED_VARIABLES.values()) <= known_variables()
    assert not set(RENAMED_VARIABLES) & known_variables()  # never suggested as a spelling


def test_an_old_and_a_new_variable_that_disagree_are_refused_naming_both():
    env = {"FORECAST_JOB_HEARTBEAT_SECONDS": "10", "FORECAST_REQUEST_HEARTBEAT_SECONDS": "20", "FORECAST_WEEKS": "0"}
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert "FORECAST_WEEKS=0 must be between 1 and 104" in str(raised.value)  # listed with the others
    assert (
        "FORECAST_JOB_HEARTBEAT_SECONDS and FORECAST_REQUEST_HEARTBEAT_SECONDS are both set, to different values"
    ) in str(raised.value)


def test_the_cli_warns_about_an_old_variable_and_refuses_a_conflict_with_exit_2(tmp_path):
    sqlite = {"DATABASE_URL": f"sqlite:///{tmp_path / 'orders.sqlite'}"}
    warned = command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path, FORECAST_JOB_CLAIM_LIMIT="3", **sqlite)
    assert warned.returncode == 0, warned.stderr
    assert (
        "forecast-pipeline: warning: FORECAST_JOB_CLAIM_LIMIT is deprecated: it is read for now, "
        "rename it FORECAST_REQUEST_CLAIM_LIMIT"
    ) in warned.stderr
    refused = command(
        [str(BIN / "forecast-pipeline"), "init-db"],
        tmp_path,
        FORECAST_JOB_CLAIM_LIMIT="3",
        FORECAST_REQUEST_CLAIM_LIMIT="5",
        **sqlite,
    )
    assert refused.returncode == 2
    assert "FORECAST_JOB_CLAIM_LIMIT and FORECAST_REQUEST_CLAIM_LIMIT are both set" in refused.stderr


def test_the_default_schedule_is_a_cron_expression_dagster_accepts():
    """The settings skip validating the default (Dagster's validator costs the CLI an import)."""
    from dagster._utils.schedules import is_valid_cron_string

    from forecast_pipeline.settings import DEFAULT_SCHEDULE_CRON

    assert is_valid_cron_string(DEFAULT_SCHEDULE_CRON)
