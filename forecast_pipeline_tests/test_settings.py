"""Configuration: defaults from the legacy worker, and bad values named at load."""

import datetime as dt

import pytest

from forecast_pipeline.settings import ConfigError, load_settings, normalize_database_url, redact_url


def test_defaults_match_the_legacy_worker():
    s = load_settings({})
    assert (s.cache_ttl, s.workers, s.min_customers, s.min_orders) == (604800, 10, 2, 3)
    assert s.history_start == dt.date(2019, 1, 1)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("data/forecast_demo.sqlite")
    assert s.max_failure_rate == 0.05 and s.forecast_weeks == 12 and s.key_prefix == "forecast"


def test_redis_host_port_db_compose_a_url_without_the_password():
    s = load_settings({"REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_DB": "4", "REDIS_PASSWORD": "hunter2"})
    assert s.redis_url == "redis://cache:6380/4"
    assert s.redis_password == "hunter2"


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
        ({"FORECAST_SCHEDULE_CRON": "every day"}, "FORECAST_SCHEDULE_CRON='every day' is not a valid cron"),
        ({"FORECAST_EXECUTOR": "celery"}, "FORECAST_EXECUTOR='celery' must be one of"),
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
    assert load_settings({"DATABASE_URL": "postgresql://u@h/db"}).database_url.startswith("postgresql+psycopg2://")


def test_redact_url_hides_passwords_of_any_scheme():
    assert redact_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert "pw" not in redact_url("postgresql+psycopg2://user:pw@db/orders")


def test_the_shard_size_is_validated_with_its_name():
    assert load_settings({}).shard_size == 25000
    assert load_settings({"FORECAST_SHARD_SIZE": "5000"}).shard_size == 5000
    for bad, message in (("0", "FORECAST_SHARD_SIZE=0 must be between 1 and 10000000"), ("lots", "not a whole number")):
        with pytest.raises(ConfigError, match=message):
            load_settings({"FORECAST_SHARD_SIZE": bad})
