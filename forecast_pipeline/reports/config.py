"""Report settings from environment variables, validated when the code location loads.

Same rules as :mod:`forecast_pipeline.settings`: an unset or blank variable takes its default, and
every bad value is reported at once in a :class:`~forecast_pipeline.settings.ConfigError` naming
the variable. ``REPORTS_DIR`` is deliberately *not* probed here: a full, missing or read-only
reports volume fails the report runs (recorded, not charged), never the code location, so
forecasts keep loading and running.

| variable | default | meaning |
|---|---|---|
| ``REPORTS_DIR`` | ``<repo>/reports`` | where report HTML and CSV files are written (created if missing) |
| ``REPORT_TOP_PRODUCTS`` | ``10`` | products listed in a report, by total predicted quantity |
| ``REPORT_HISTORY_WEEKS`` | ``26`` | weeks of order history drawn before the forecast in each chart (under the horizon: no "previous weeks" comparison) |
| ``REPORT_MAX_FORECAST_AGE_DAYS`` | ``8`` | a report whose newest forecasts are older is refused |
| ``REPORT_CACHE_TTL_SECONDS`` | ``3600`` | TTL of a report's computed figures in Redis |
| ``REPORT_TICK_LIMIT`` | ``100`` | due schedules claimed per tick (the rest wait for the next) |
| ``REPORT_LAUNCH_GRACE_SECONDS`` | ``300`` | a recorded slot with no Dagster run after this is requested again |
| ``REPORT_SMTP_HOST`` | (empty: no e-mail) | SMTP server that delivers reports to their recipients |
| ``REPORT_SMTP_PORT`` | 587 / 465 / 25 | by ``REPORT_SMTP_SECURITY`` |
| ``REPORT_SMTP_SECURITY`` | ``starttls`` | ``starttls``, ``ssl`` (implicit TLS) or ``none`` |
| ``REPORT_SMTP_FROM`` | (required with a host) | sender address |
| ``REPORT_SMTP_USER`` / ``REPORT_SMTP_PASSWORD`` | (empty) | login; both or neither, never over ``none`` |
| ``REPORT_SMTP_TIMEOUT_SECONDS`` | ``30`` | connect and per-command timeout |
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import SecretStr, ValidationInfo, field_validator

from forecast_pipeline.settings import PROJECT_ROOT, AreaSettings, env, load_all_settings, rule_error, setting_error

SMTP_SECURITY_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
_ADDRESS = re.compile(r"^[^@\s,<>\"']+@[^@\s,<>\"']+\.[^@\s,<>\"'.]+$")


def is_email_address(text: str) -> bool:
    """A bare ``local@domain.tld`` address (the only form recipients are stored in)."""
    return bool(_ADDRESS.match(text))


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str  # starttls | ssl | none
    sender: str
    user: str | None
    password: SecretStr | None = field(default=None, repr=False)  # a secret: never printed or logged
    timeout_seconds: int = 30


class ReportSettings(AreaSettings):
    what: ClassVar[str] = "report configuration"

    reports_dir: Path = env("REPORTS_DIR", PROJECT_ROOT / "reports")
    top_products: int = env("REPORT_TOP_PRODUCTS", 10, ge=1, le=1000)
    history_weeks: int = env("REPORT_HISTORY_WEEKS", 26, ge=0, le=156)
    max_forecast_age_days: int = env("REPORT_MAX_FORECAST_AGE_DAYS", 8, ge=1, le=366)
    cache_ttl_seconds: int = env("REPORT_CACHE_TTL_SECONDS", 3600, ge=1, le=30 * 86400)
    tick_limit: int = env("REPORT_TICK_LIMIT", 100, ge=1, le=10_000)
    launch_grace_seconds: int = env("REPORT_LAUNCH_GRACE_SECONDS", 300, ge=10, le=86400)
    # SMTP: declared in this order because each rule below reads the fields before it
    smtp_host: str | None = env("REPORT_SMTP_HOST")
    smtp_security: Literal["starttls", "ssl", "none"] = env("REPORT_SMTP_SECURITY", "starttls")
    smtp_port: int | None = env("REPORT_SMTP_PORT", None, ge=1, le=65535, validate_default=True)
    """``None``: by ``REPORT_SMTP_SECURITY`` (see :attr:`smtp`)."""
    smtp_timeout_seconds: int = env("REPORT_SMTP_TIMEOUT_SECONDS", 30, ge=1, le=600)
    smtp_from: str | None = env("REPORT_SMTP_FROM", validate_default=True)
    smtp_user: str | None = env("REPORT_SMTP_USER", validate_default=True)
    smtp_password: SecretStr | None = env("REPORT_SMTP_PASSWORD", validate_default=True)

    @property
    def smtp(self) -> SmtpSettings | None:
        """How reports are e-mailed; ``None``: they are written, not e-mailed."""
        if self.smtp_host is None:
            return None
        port = self.smtp_port or SMTP_SECURITY_PORTS[self.smtp_security]
        return SmtpSettings(
            self.smtp_host,
            port,
            self.smtp_security,
            self.smtp_from or "",
            self.smtp_user,
            self.smtp_password,
            self.smtp_timeout_seconds,
        )

    @field_validator("reports_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()  # never probed: see the module's docstring

    @field_validator("smtp_security", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (any(c.isspace() for c in value) or "/" in value):
            raise setting_error(repr(value), "is not a host name or address")
        return value

    @field_validator("smtp_port", "smtp_from", "smtp_user", "smtp_password")
    @classmethod
    def _needs_the_host(cls, value: Any, info: ValidationInfo) -> Any:
        """Every SMTP variable is about the host: without one it would be silently ignored."""
        if "smtp_host" not in info.data:  # the host itself is bad, and reported
            return value
        name = cls.model_fields[info.field_name].validation_alias
        if info.data["smtp_host"] is None:
            if value is not None:
                raise rule_error(f"{name} is set but REPORT_SMTP_HOST is not: set the host or unset {name}")
            return value
        if info.field_name == "smtp_from":
            if value is None:
                raise rule_error("REPORT_SMTP_FROM is required when REPORT_SMTP_HOST is set (the sender address)")
            if not is_email_address(parseaddr(value)[1]):
                raise setting_error(repr(value), "is not an e-mail address")
        if info.field_name == "smtp_password":
            if (info.data.get("smtp_user") is None) != (value is None):
                raise rule_error("REPORT_SMTP_USER and REPORT_SMTP_PASSWORD must be set together (password not shown)")
            if value is not None and info.data.get("smtp_security") == "none":
                raise rule_error(
                    "REPORT_SMTP_PASSWORD with REPORT_SMTP_SECURITY=none would send it in clear: use starttls or ssl"
                )
        return value


def load_report_settings(environ: Mapping[str, str] | None = None) -> ReportSettings:
    """Read and validate every report variable; raise :class:`ConfigError` listing all bad ones."""
    return ReportSettings.load(environ)


@functools.cache
def get_report_settings() -> ReportSettings:
    """The process's report settings, read once when the code location loads (with every other
    area's: see :func:`~forecast_pipeline.settings.get_settings`)."""
    return load_all_settings().reports
