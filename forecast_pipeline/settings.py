"""Configuration from environment variables: names and defaults from the legacy worker.

:func:`load_settings` runs when the code location loads, so a bad value stops ``dagster dev``,
``dagster asset materialize`` and the CLI at once with a message naming the variable, instead of
failing half-way through a run. Secrets (passwords inside URLs) are never echoed back.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import logging
import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from dagster._utils.schedules import is_valid_cron_string

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_ROOT / "data" / "forecast_demo.sqlite"

DEFAULTS: dict[str, str] = {
    "DATABASE_URL": f"sqlite:///{DEFAULT_SQLITE_PATH}",
    "FORECAST_SOURCE_QUERY": "",
    "APP_DATABASE_URL": "",
    "REDIS_URL": "",
    "REDIS_HOST": "127.0.0.1",
    "REDIS_PORT": "6379",
    "REDIS_DB": "0",
    "REDIS_PASSWORD": "",
    "FORECAST_KEY_PREFIX": "forecast",
    "FORECAST_CACHE_TTL": "604800",
    "FORECAST_HISTORY_TTL": "7776000",
    "FORECAST_WORKERS": "10",
    "FORECAST_SHARD_SIZE": "25000",
    "FORECAST_MIN_CUSTOMERS": "2",
    "FORECAST_MIN_ORDERS": "3",
    "FORECAST_HISTORY_START": "2019-01-01",
    "FORECAST_WEEKS": "12",
    "FORECAST_MAX_FAILURE_RATE": "0.05",
    "FORECAST_SCHEDULE_CRON": "0 6 * * *",
    "FORECAST_SCHEDULE_TIMEZONE": "UTC",
    "FORECAST_EXECUTOR": "in_process",
    "FORECAST_JOB_SENSOR_SECONDS": "15",
    "FORECAST_JOB_CLAIM_LIMIT": "10",
    "FORECAST_JOB_RETRY_BASE_SECONDS": "60",
    "FORECAST_JOB_RETRY_MAX_SECONDS": "3600",
    "FORECAST_JOB_TIMEOUT_SECONDS": "",
    "FORECAST_JOB_HEARTBEAT_SECONDS": "15",
    "FORECAST_JOB_LAUNCH_GRACE_SECONDS": "300",
}
EXECUTORS = ("in_process", "multiprocess", "k8s")


DRIVER_PACKAGES = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "psycopg2": "psycopg2-binary", "psycopg": "psycopg"}
"""The pip package of each driver module SQLAlchemy tries to import, for the missing-driver error."""

KNOWN_PREFIXES = ("FORECAST_", "ALERT_", "REPORT_")
"""Every variable under these prefixes must be a known one: a misspelling would silently keep a default."""

TOOLING_VARIABLES = ("FORECAST_SCREENSHOT_PATH",)
"""Read by the tests and scripts, not the code location: known, so never warned about."""

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """One or more environment variables are invalid; the message names each of them."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    app_database_url: str
    source_query: str | None
    redis_url: str
    redis_password: str | None
    key_prefix: str
    cache_ttl: int
    history_ttl: int
    workers: int
    min_customers: int
    min_orders: int
    history_start: dt.date
    forecast_weeks: int
    max_failure_rate: float
    schedule_cron: str
    schedule_timezone: str
    executor: str
    job_sensor_seconds: int = 15
    job_claim_limit: int = 10
    job_retry_base_seconds: int = 60
    job_retry_max_seconds: int = 3600
    job_timeout_seconds: int | None = None  # None: the instance's run_monitoring.max_runtime_seconds
    job_heartbeat_seconds: int = 15
    job_launch_grace_seconds: int = 300
    job_finished_grace_seconds: int = 60  # after a run ends, its job is left to the run status sensors
    shard_size: int = 25000  # most eligible products per forecast shard step

    @property
    def job_stale_after_seconds(self) -> int:
        """A running job's run is presumed dead after this long without a heartbeat."""
        return 4 * self.job_heartbeat_seconds


def normalize_database_url(url: str) -> str:
    """Map a plain ``postgresql://`` (or ``postgres://``) URL to the psycopg2 driver.

    SQLAlchemy 2.1 maps the plain scheme to psycopg 3, which this project does not install;
    users keep writing the URL they already have.
    """
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain) :]
    return url


_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with every credential replaced by ``***``: a password in the user part (with or
    without a scheme) and query parameters such as ``?password=`` or ``?token=``, which libpq and
    redis-py accept. Safe for logs and error messages; the URL need not be valid."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    before_query, question, query = rest.partition("?")
    if "@" in before_query:
        credentials, host = before_query.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        before_query = f"{user}:***@{host}" if ":" in credentials else f"{credentials}@{host}"
    if question:
        fragment = ""
        if "#" in query:
            query, fragment = query.split("#", 1)
            fragment = "#" + fragment
        pairs = [
            (name, "***" if _SECRET_PARAMETER.search(name) else value)
            for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True)
        ]
        query = urllib.parse.urlencode(pairs, safe="*") + fragment
    return f"{scheme}{separator}{before_query}{question}{query}"


class EnvReader:
    """Reads variables with their defaults and collects every problem, so that one error names
    all the bad variables at once (used by the forecast, alert and report settings)."""

    def __init__(self, defaults: Mapping[str, str], environ: Mapping[str, str] | None = None):
        self.env = os.environ if environ is None else environ
        self.defaults = defaults
        self.errors: list[str] = []

    def raw(self, name: str) -> str:
        value = self.env.get(name)
        return self.defaults[name] if value is None or value.strip() == "" else value.strip()

    def integer(self, name: str, minimum: int, maximum: int | None = None) -> int:
        text = self.raw(name)
        try:
            value = int(text)
        except ValueError:
            self.errors.append(f"{name}={text!r} is not a whole number")
            return int(self.defaults[name])
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.errors.append(f"{name}={value} must be {bound}")
        return value

    def number(self, name: str, minimum: float, maximum: float, unit: str = "") -> float:
        text = self.raw(name)
        try:
            value = float(text)
        except ValueError:
            self.errors.append(f"{name}={text!r} is not a number{' of' + unit if unit else ''}")
            return float(self.defaults[name])
        if not minimum <= value <= maximum:  # also rejects nan
            self.errors.append(f"{name}={value} must be between {minimum:g} and {maximum:g}{unit}")
        return value

    def date(self, name: str) -> dt.date:
        text = self.raw(name)
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            self.errors.append(f"{name}={text!r} is not a date in YYYY-MM-DD form")
            return dt.date.fromisoformat(self.defaults[name])

    def check(self, what: str = "configuration") -> None:
        """Raise :class:`ConfigError` listing every problem found so far."""
        if len(self.errors) == 1:  # one line, as the CLI's errors are
            raise ConfigError(f"invalid {what}: {self.errors[0]}")
        if self.errors:
            raise ConfigError(
                f"invalid {what}, {len(self.errors)} variables to fix:\n  - " + "\n  - ".join(self.errors)
            )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; raise :class:`ConfigError` listing all bad ones."""
    env = os.environ if environ is None else environ
    read = EnvReader(DEFAULTS, env)
    errors, raw, integer, date = read.errors, read.raw, read.integer, read.date

    def database(name: str, text: str) -> str:
        url = normalize_database_url(text)
        try:
            sa.engine.make_url(url).get_dialect().import_dbapi()
        except ImportError as exc:  # the dialect is known, its driver package is not installed
            package = DRIVER_PACKAGES.get(exc.name or "", exc.name)
            errors.append(
                f"{name}={redact_url(url)!r} needs the database driver module {exc.name!r}, which is not "
                f"installed: pip install {package} (or name an installed driver, e.g. postgresql+psycopg2://)"
            )
        except Exception as exc:  # noqa: BLE001 - any failure here means the URL cannot be used
            errors.append(
                f"{name}={redact_url(url)!r} cannot be used: {type(exc).__name__}: {exc} "
                "(expected a SQLAlchemy URL such as postgresql://user@host/db or sqlite:///path)"
            )
        return url

    database_url = database("DATABASE_URL", raw("DATABASE_URL"))
    app_database_url = database_url
    if raw("APP_DATABASE_URL"):
        app_database_url = database("APP_DATABASE_URL", raw("APP_DATABASE_URL"))

    redis_url = raw("REDIS_URL") if env.get("REDIS_URL", "").strip() else ""
    redis_port = integer("REDIS_PORT", 1, 65535)
    redis_db = integer("REDIS_DB", 0)
    if redis_url:
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            errors.append(f"REDIS_URL={redact_url(redis_url)!r} must start with redis://, rediss:// or unix://")
    else:
        redis_url = f"redis://{raw('REDIS_HOST')}:{redis_port}/{redis_db}"

    timezone = raw("FORECAST_SCHEDULE_TIMEZONE")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" is a directory: OSError
        errors.append(f"FORECAST_SCHEDULE_TIMEZONE={timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)")
    cron = raw("FORECAST_SCHEDULE_CRON")
    if not is_valid_cron_string(cron):
        errors.append(f"FORECAST_SCHEDULE_CRON={cron!r} is not a valid cron expression")
    executor = raw("FORECAST_EXECUTOR")
    if executor not in EXECUTORS:
        errors.append(f"FORECAST_EXECUTOR={executor!r} must be one of {', '.join(EXECUTORS)}")
    prefix = raw("FORECAST_KEY_PREFIX")
    if ":" in prefix.strip(":") or not prefix.strip(":"):
        errors.append(f"FORECAST_KEY_PREFIX={prefix!r} must be a non-empty word without ':'")

    settings = Settings(
        database_url=database_url,
        app_database_url=app_database_url,
        source_query=raw("FORECAST_SOURCE_QUERY") or None,
        redis_url=redis_url,
        redis_password=raw("REDIS_PASSWORD") or None,
        key_prefix=prefix.strip(":"),
        cache_ttl=integer("FORECAST_CACHE_TTL", 1),
        history_ttl=integer("FORECAST_HISTORY_TTL", 1),
        workers=integer("FORECAST_WORKERS", 1, 256),
        shard_size=integer("FORECAST_SHARD_SIZE", 1, 10_000_000),
        min_customers=integer("FORECAST_MIN_CUSTOMERS", 1),
        min_orders=integer("FORECAST_MIN_ORDERS", 1),
        history_start=date("FORECAST_HISTORY_START"),
        forecast_weeks=integer("FORECAST_WEEKS", 1, 104),
        max_failure_rate=read.number("FORECAST_MAX_FAILURE_RATE", 0.0, 1.0),
        schedule_cron=cron,
        schedule_timezone=timezone,
        executor=executor,
        job_sensor_seconds=integer("FORECAST_JOB_SENSOR_SECONDS", 1, 3600),
        job_claim_limit=integer("FORECAST_JOB_CLAIM_LIMIT", 1, 1000),
        job_retry_base_seconds=integer("FORECAST_JOB_RETRY_BASE_SECONDS", 0),
        job_retry_max_seconds=integer("FORECAST_JOB_RETRY_MAX_SECONDS", 0),
        job_timeout_seconds=(
            integer("FORECAST_JOB_TIMEOUT_SECONDS", 10) if raw("FORECAST_JOB_TIMEOUT_SECONDS") else None
        ),
        job_heartbeat_seconds=integer("FORECAST_JOB_HEARTBEAT_SECONDS", 1, 600),
        job_launch_grace_seconds=integer("FORECAST_JOB_LAUNCH_GRACE_SECONDS", 10),
    )
    read.check()
    return settings


AREA_SETTINGS_LOADERS = (
    "forecast_pipeline.alerts.config:load_alert_settings",
    "forecast_pipeline.reports.config:load_report_settings",
)
"""Every area's loader, each run by its area's definitions when the code location loads. Add an
area's here and ``forecast-pipeline check`` validates it the same way."""


def load_all_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate every setting of every area exactly as the code location's loaders do; raise one
    :class:`ConfigError` listing the bad variables of all areas. Returns the forecast settings."""
    import importlib

    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        problems.append(str(exc))
    for target in AREA_SETTINGS_LOADERS:
        module, name = target.split(":")
        try:
            getattr(importlib.import_module(module), name)(environ)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def known_variables() -> set[str]:
    """Every variable any area of the project reads."""
    from forecast_pipeline.alerts.config import ALERT_DEFAULTS
    from forecast_pipeline.reports.config import REPORT_DEFAULTS

    return {*DEFAULTS, *ALERT_DEFAULTS, *REPORT_DEFAULTS, *TOOLING_VARIABLES}


def unknown_variable_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each set variable that looks like one of ours but is not, with the closest
    known name: ``FORECAST_WORKER=4`` is otherwise silently ignored. Never an error (other tools
    may share a prefix)."""
    env = os.environ if environ is None else environ
    known = known_variables()
    warnings = []
    for name in sorted(env):
        if name in known:
            continue
        closest = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if closest:
            warnings.append(f"unknown variable {name} (did you mean {closest[0]}?)")
        elif name.startswith(KNOWN_PREFIXES):
            warnings.append(f"unknown variable {name} (not read by forecast_pipeline; see the README's settings)")
    return warnings


_warned: set[str] = set()


def warn_unknown_variables(emit=logger.warning, environ: Mapping[str, str] | None = None) -> None:
    """Report each unknown variable once per process, whichever of the CLI and the code location
    notices it first."""
    for warning in unknown_variable_warnings(environ):
        if warning not in _warned:
            _warned.add(warning)
            emit(warning)


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once when the code location loads."""
    settings = load_settings()
    warn_unknown_variables()
    return settings
