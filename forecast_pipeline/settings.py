"""Configuration from environment variables: names and defaults from the legacy worker.

Each area has one typed pydantic-settings model (:class:`Settings` here for the forecasts, the request
queue, the databases and Redis; ``alerts.config.AlertSettings``; ``reports.config.ReportSettings``)
whose fields name their variable. :func:`load_all_settings` validates every area at once when the
code location loads and when the CLI starts, so a bad value stops ``dagster dev``, ``dagster asset
materialize`` and ``forecast-pipeline`` with one error naming every bad variable, instead of
failing half-way through a run. Passwords are ``SecretStr`` and URLs :class:`SecretUrl`, which
print with their credentials hidden: neither the settings nor their errors ever show a secret.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import difflib
import functools
import logging
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import annotated_types
import sqlalchemy as sa
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from forecast_pipeline.time_zones import iana_zone

if TYPE_CHECKING:
    from forecast_pipeline.alerts.config import AlertSettings
    from forecast_pipeline.reports.config import ReportSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_ROOT / "data" / "forecast_demo.sqlite"

DRIVER_PACKAGES = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "psycopg2": "psycopg2-binary", "psycopg": "psycopg"}
"""The pip package of each driver module SQLAlchemy tries to import, for the missing-driver error."""

KNOWN_PREFIXES = ("FORECAST_", "ALERT_", "REPORT_")
"""Every variable under these prefixes must be a known one: a misspelling would silently keep a default."""

TOOLING_VARIABLES = ("FORECAST_SCREENSHOT_PATH",)
"""Read by the tests and scripts, not the code location: known, so never warned about."""

RENAMED_VARIABLES = {
    f"FORECAST_JOB_{suffix}": f"FORECAST_REQUEST_{suffix}"
    for suffix in (
        "SENSOR_SECONDS",
        "CLAIM_LIMIT",
        "RETRY_BASE_SECONDS",
        "RETRY_MAX_SECONDS",
        "TIMEOUT_SECONDS",
        "HEARTBEAT_SECONDS",
        "LAUNCH_GRACE_SECONDS",
    )
}
"""Old name -> new name. The forecast job queue became the forecast request queue ("job" also
means a Dagster job); an old name is still read, with a warning naming the new one."""

_OLD_NAME = {new: old for old, new in RENAMED_VARIABLES.items()}

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """One or more environment variables are invalid; the message names each of them."""


# ---------------------------------------------------------------- secrets and URLs


def normalize_database_url(url: str | SecretStr) -> str:
    """Map a plain ``postgresql://`` (or ``postgres://``) URL to the psycopg2 driver.

    SQLAlchemy 2.1 maps the plain scheme to psycopg 3, which this project does not install;
    users keep writing the URL they already have.
    """
    url = reveal(url)
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain) :]
    return url


SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|credential|^sig$|^code$", re.IGNORECASE)
"""Query parameters whose value is a credential: ``sig`` signs an Azure (Teams Workflows) URL and
``code`` is an Azure Functions key; those two only by their whole name."""


def redact_url(url: str | SecretStr) -> str:
    """The URL with every credential replaced by ``***``: a password in the user part (with or
    without a scheme) and query parameters such as ``?password=`` or ``?token=``, which libpq and
    redis-py accept. Safe for logs and error messages; the URL need not be valid."""
    url = reveal(url)
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
            (name, "***" if SECRET_PARAMETER.search(name) else value)
            for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True)
        ]
        query = urllib.parse.urlencode(pairs, safe="*") + fragment
    return f"{scheme}{separator}{before_query}{question}{query}"


class SecretUrl(SecretStr):
    """A URL that may hold credentials: prints redacted (``redis://:***@cache:6379/0``) rather
    than as ``**********``, so logs still say where it points; ``get_secret_value()`` (or
    :func:`reveal`) gives the URL to connect with."""

    def __str__(self) -> str:
        return redact_url(self.get_secret_value())

    def __repr__(self) -> str:
        return f"SecretUrl({str(self)!r})"


@typing.overload
def reveal(value: str | SecretStr) -> str: ...
@typing.overload
def reveal(value: str | SecretStr | None) -> str | None: ...
def reveal(value: str | SecretStr | None) -> str | None:
    """The plain value of a secret, for the one place that connects with it."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# ---------------------------------------------------------------- one model per area

_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("forecast_environ", default=None)


class _Environ(PydanticBaseSettingsSource):
    """Each field's variable (its alias) from ``os.environ`` or the mapping being loaded. An unset
    or blank variable is left out, so the field keeps its default; values are stripped."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        env = _ENVIRON.get()
        env = os.environ if env is None else env
        alias = field.validation_alias
        value = _set(env, alias) if isinstance(alias, str) else None
        old = _OLD_NAME.get(alias)
        if old is not None and _set(env, old) is not None:
            if value is None:
                value = _set(env, old)
            elif value != _set(env, old):
                value = _Conflict(old, alias)
        return value, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[field.validation_alias] = value
        return values


def _set(env: Mapping[str, str], name: str) -> str | None:
    text = env.get(name)
    return text.strip() if text and text.strip() else None


@dataclass(frozen=True)
class _Conflict:
    """A renamed variable set under both names, to different values: which one was meant?"""

    old: str
    new: str


def setting_error(shown: str, why: str) -> PydanticCustomError:
    """A bad value, reported as ``VARIABLE=<shown> <why>`` (``shown`` must hold no secret)."""
    return PydanticCustomError("setting_value", "{shown} {why}", {"shown": shown, "why": why})


def rule_error(message: str) -> PydanticCustomError:
    """A broken rule between variables, reported as the message itself (which names them)."""
    return PydanticCustomError("setting_rule", "{message}", {"message": message})


def _plain_type(annotation: Any) -> Any:
    """``int`` for ``int | None`` and the like."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation


def _bounds(field: FieldInfo) -> tuple[Any, Any]:
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    return low, high


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


DEFAULT_SCHEDULE_CRON = "0 6 * * *"


class AreaSettings(BaseSettings):
    """One area's variables. Each field names its variable as ``validation_alias`` (the known
    variables are exactly these); an unset or blank variable takes the field's default. Numbers
    and dates are parsed strictly (no ``1.0`` for a whole number, no timestamp for a date)."""

    model_config = SettingsConfigDict(frozen=True, hide_input_in_errors=True, allow_inf_nan=False)

    what: ClassVar[str] = "configuration"
    """How errors name the area: ``invalid <what>: ...``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the variables (no .env file, no secrets directory): what the README documents."""
        return (init_settings, _Environ(settings_cls))

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Variable name -> field name."""
        return {f.validation_alias: n for n, f in cls.model_fields.items() if isinstance(f.validation_alias, str)}

    @field_validator("*", mode="before")
    @classmethod
    def _parse_text(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, _Conflict):
            raise rule_error(
                f"{value.old} and {value.new} are both set, to different values: {value.old} is the old "
                f"name of {value.new}, set only {value.new}"
            )
        if not isinstance(value, str):
            return value
        kind = _plain_type(cls.model_fields[info.field_name].annotation)
        try:
            if kind is int:
                return int(value)
            if kind is float:
                return float(value)
            if kind is dt.date:
                return dt.date.fromisoformat(value)
        except ValueError:
            what = {int: "a whole number", float: "a number", dt.date: "a date in YYYY-MM-DD form"}[kind]
            raise setting_error(repr(value), f"is not {what}") from None
        return value

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> tuple[Self | None, list[str]]:
        """The settings, or ``None`` and one line per bad variable."""
        token = _ENVIRON.set(environ)
        try:
            return cls(), []
        except ValidationError as exc:
            return None, [cls._describe(error) for error in exc.errors(include_url=False)]
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read and validate every variable of the area; raise :class:`ConfigError` listing all
        bad ones (``environ`` defaults to ``os.environ``)."""
        settings, problems = cls.read(environ)
        if problems:
            raise ConfigError(describe_problems(problems, cls.what))
        return settings

    @classmethod
    def _describe(cls, error: Any) -> str:
        """One pydantic error as ``VARIABLE=value must be ...``: the variable and why."""
        name = error["loc"][0] if error["loc"] else "?"
        kind = error["type"]
        if kind == "setting_rule":
            return error["msg"]
        if kind == "setting_value":
            return f"{name}={error['msg']}"
        field = cls.model_fields.get(cls.variables().get(name, name))
        if field is not None and kind in ("greater_than_equal", "less_than_equal", "finite_number"):
            low, high = _bounds(field)
            bound = f"between {_number(low)} and {_number(high)}" if high is not None else f"at least {_number(low)}"
            return f"{name}={error['input']} must be {bound}"
        if field is not None and kind == "literal_error":
            choices = typing.get_args(_plain_type(field.annotation))
            return f"{name}={error['input']!r} must be one of {', '.join(choices)}"
        return f"{name}: {error['msg']}"  # never the input: it may be a secret


def describe_problems(problems: list[str], what: str = "configuration") -> str:
    if len(problems) == 1:  # one line, as the CLI's errors are
        return f"invalid {what}: {problems[0]}"
    return f"invalid {what}, {len(problems)} variables to fix:\n  - " + "\n  - ".join(problems)


def env(name: str, default: Any = None, **constraints: Any) -> Any:
    """A field read from the variable ``name``."""
    return Field(default, validation_alias=name, **constraints)


# ---------------------------------------------------------------- forecasts, request queue, databases, Redis


class Settings(AreaSettings):
    """The forecasts, the request queue, the databases and Redis."""

    database_url: SecretUrl = env("DATABASE_URL", SecretUrl(f"sqlite:///{DEFAULT_SQLITE_PATH}"))
    """Order history, any SQLAlchemy URL (plain ``postgresql://`` uses psycopg2)."""
    app_database_url: SecretUrl = env("APP_DATABASE_URL", validate_default=True)
    """Application tables (request queue, predictions, alerts, reports); default: ``DATABASE_URL``."""
    source_query: str | None = env("FORECAST_SOURCE_QUERY")
    redis_host: str = env("REDIS_HOST", "127.0.0.1")
    redis_port: int = env("REDIS_PORT", 6379, ge=1, le=65535)
    redis_db: int = env("REDIS_DB", 0, ge=0)
    redis_url: SecretUrl = env("REDIS_URL", validate_default=True)
    """``REDIS_URL`` when set, else composed from host, port and db (without the password)."""
    redis_password: SecretStr | None = env("REDIS_PASSWORD")
    key_prefix: str = env("FORECAST_KEY_PREFIX", "forecast")
    cache_ttl: int = env("FORECAST_CACHE_TTL", 604800, ge=1)
    history_ttl: int = env("FORECAST_HISTORY_TTL", 7776000, ge=1)
    predictions_keep_days: int | None = env("FORECAST_PREDICTIONS_KEEP_DAYS", None, ge=1, le=36500)
    """forecast_predictions keeps the as-of dates within this many days of a run's newest date
    (unset: every date)."""
    workers: int = env("FORECAST_WORKERS", 10, ge=1, le=256)
    shard_size: int = env("FORECAST_SHARD_SIZE", 25000, ge=1, le=10_000_000)  # most products per shard step
    min_customers: int = env("FORECAST_MIN_CUSTOMERS", 2, ge=1)
    min_orders: int = env("FORECAST_MIN_ORDERS", 3, ge=1)
    history_start: dt.date = env("FORECAST_HISTORY_START", dt.date(2019, 1, 1))
    forecast_weeks: int = env("FORECAST_WEEKS", 12, ge=1, le=104)
    max_failure_rate: float = env("FORECAST_MAX_FAILURE_RATE", 0.05, ge=0.0, le=1.0)
    schedule_cron: str = env("FORECAST_SCHEDULE_CRON", DEFAULT_SCHEDULE_CRON)
    schedule_timezone: str = env("FORECAST_SCHEDULE_TIMEZONE", "UTC")
    executor: Literal["in_process", "multiprocess", "k8s"] = env("FORECAST_EXECUTOR", "in_process")
    request_sensor_seconds: int = env("FORECAST_REQUEST_SENSOR_SECONDS", 15, ge=1, le=3600)
    request_claim_limit: int = env("FORECAST_REQUEST_CLAIM_LIMIT", 10, ge=1, le=1000)
    request_retry_base_seconds: int = env("FORECAST_REQUEST_RETRY_BASE_SECONDS", 60, ge=0)
    request_retry_max_seconds: int = env("FORECAST_REQUEST_RETRY_MAX_SECONDS", 3600, ge=0)
    request_timeout_seconds: int | None = env("FORECAST_REQUEST_TIMEOUT_SECONDS", None, ge=10)
    """``None``: the instance's ``run_monitoring.max_runtime_seconds``."""
    request_heartbeat_seconds: int = env("FORECAST_REQUEST_HEARTBEAT_SECONDS", 15, ge=1, le=600)
    request_launch_grace_seconds: int = env("FORECAST_REQUEST_LAUNCH_GRACE_SECONDS", 300, ge=10)
    request_finished_grace_seconds: int = 60
    """After a run ends, its request is left to the run status sensors (no variable: tests change it)."""

    @property
    def request_stale_after_seconds(self) -> int:
        """A running request's run is presumed dead after this long without a heartbeat."""
        return 4 * self.request_heartbeat_seconds

    def history_window(self, as_of: dt.date):
        """The eligibility window and thresholds of ``as_of``, as the forecast's resources build it."""
        from forecast_pipeline.source.order_history import HistoryWindow

        return HistoryWindow(as_of, self.history_start, self.min_customers, self.min_orders)

    @field_validator("database_url", "app_database_url", mode="before")
    @classmethod
    def _usable_database_url(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:  # APP_DATABASE_URL unset: the order database's
            return info.data.get("database_url", cls.model_fields["database_url"].default)
        url = normalize_database_url(value)
        try:
            sa.engine.make_url(url).get_dialect().import_dbapi()
        except ImportError as exc:  # the dialect is known, its driver package is not installed
            package = DRIVER_PACKAGES.get(exc.name or "", exc.name)
            raise setting_error(
                repr(redact_url(url)),
                f"needs the database driver module {exc.name!r}, which is not installed: pip install {package} "
                "(or name an installed driver, e.g. postgresql+psycopg2://)",
            ) from None
        except Exception as exc:  # noqa: BLE001 - any failure here means the URL cannot be used
            raise setting_error(
                repr(redact_url(url)),
                f"cannot be used: {type(exc).__name__}: {exc} "
                "(expected a SQLAlchemy URL such as postgresql://user@host/db or sqlite:///path)",
            ) from None
        return url

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            parts = ("redis_host", "redis_port", "redis_db")
            host, port, db = (info.data.get(k, cls.model_fields[k].default) for k in parts)
            return f"redis://{host}:{port}/{db}"
        if not str(value).startswith(("redis://", "rediss://", "unix://")):
            raise setting_error(repr(redact_url(value)), "must start with redis://, rediss:// or unix://")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        word = value.strip(":")
        if not word or ":" in word or any(c.isspace() for c in word):
            raise setting_error(repr(value), "must be a non-empty word without ':' or spaces")
        return word

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            iana_zone(value)
        except ValueError:
            raise setting_error(repr(value), "is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return value

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if value == DEFAULT_SCHEDULE_CRON:
            return value  # valid (test_settings checks it); importing Dagster would cost every CLI call seconds
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise setting_error(repr(value), "is not a valid cron expression")
        return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the forecast variables; raise :class:`ConfigError` listing all bad ones."""
    return Settings.load(environ)


# ---------------------------------------------------------------- every area at once

AREA_SETTINGS = (
    "forecast_pipeline.settings:Settings",
    "forecast_pipeline.alerts.config:AlertSettings",
    "forecast_pipeline.reports.config:ReportSettings",
)
"""Every area's model. Add an area's here and the code location, ``forecast-pipeline check`` and
the CLI validate it, and its variables are known to the misspelling warning."""


def area_models() -> list[type[AreaSettings]]:
    import importlib

    return [getattr(importlib.import_module(m), n) for m, n in (t.split(":") for t in AREA_SETTINGS)]


@dataclass(frozen=True)
class AllSettings:
    forecasts: Settings
    alerts: AlertSettings
    reports: ReportSettings


def load_all_settings(environ: Mapping[str, str] | None = None) -> AllSettings:
    """Validate every variable of every area; raise one :class:`ConfigError` listing the bad
    variables of all areas. Used by the code location, ``forecast-pipeline check`` and every
    other CLI command, so they accept and refuse the same environments."""
    loaded, problems = [], []
    for model in area_models():
        settings, found = model.read(environ)
        loaded.append(settings)
        problems += found
    if problems:
        raise ConfigError(describe_problems(problems))
    return AllSettings(*loaded)


def known_variables() -> set[str]:
    """Every variable any area of the project reads: the fields of the areas' models."""
    return {name for model in area_models() for name in model.variables()} | set(TOOLING_VARIABLES)


def unknown_variable_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each set variable that looks like one of ours but is not, with the closest
    known name: ``FORECAST_WORKER=4`` is otherwise silently ignored. Never an error (other tools
    may share a prefix)."""
    env = os.environ if environ is None else environ
    known = known_variables()
    warnings = []
    for name in sorted(env):
        if name in RENAMED_VARIABLES:
            warnings.append(f"{name} is deprecated: it is read for now, rename it {RENAMED_VARIABLES[name]}")
            continue
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
    """The process's settings, read once when the code location loads. Every area is validated,
    so whichever definition asks first, a bad variable of any area is named with all the others."""
    settings = load_all_settings().forecasts
    warn_unknown_variables()
    return settings
