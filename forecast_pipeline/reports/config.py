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
| ``REPORT_HISTORY_WEEKS`` | ``26`` | weeks of order history drawn before the forecast in each chart |
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

from forecast_pipeline.settings import PROJECT_ROOT, EnvReader

REPORT_DEFAULTS: dict[str, str] = {
    "REPORTS_DIR": str(PROJECT_ROOT / "reports"),
    "REPORT_TOP_PRODUCTS": "10",
    "REPORT_HISTORY_WEEKS": "26",
    "REPORT_MAX_FORECAST_AGE_DAYS": "8",
    "REPORT_CACHE_TTL_SECONDS": "3600",
    "REPORT_TICK_LIMIT": "100",
    "REPORT_LAUNCH_GRACE_SECONDS": "300",
    "REPORT_SMTP_HOST": "",
    "REPORT_SMTP_PORT": "",
    "REPORT_SMTP_SECURITY": "starttls",
    "REPORT_SMTP_FROM": "",
    "REPORT_SMTP_USER": "",
    "REPORT_SMTP_PASSWORD": "",
    "REPORT_SMTP_TIMEOUT_SECONDS": "30",
}
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
    password: str | None = field(default=None, repr=False)  # a secret: never printed or logged
    timeout_seconds: int = 30


@dataclass(frozen=True)
class ReportSettings:
    reports_dir: Path
    top_products: int
    cache_ttl_seconds: int
    tick_limit: int
    launch_grace_seconds: int
    max_forecast_age_days: int = 8
    history_weeks: int = 26
    smtp: SmtpSettings | None = None  # None: reports are written, not e-mailed


def _smtp(read: EnvReader) -> SmtpSettings | None:
    errors, raw = read.errors, read.raw
    host = raw("REPORT_SMTP_HOST")
    security = raw("REPORT_SMTP_SECURITY").lower()
    if security not in SMTP_SECURITY_PORTS:
        errors.append(f"REPORT_SMTP_SECURITY={security!r} must be one of {', '.join(SMTP_SECURITY_PORTS)}")
        security = "starttls"
    port = SMTP_SECURITY_PORTS[security]
    if raw("REPORT_SMTP_PORT"):
        port = read.integer("REPORT_SMTP_PORT", 1, 65535)
    timeout = read.integer("REPORT_SMTP_TIMEOUT_SECONDS", 1, 600)
    sender, user, password = raw("REPORT_SMTP_FROM"), raw("REPORT_SMTP_USER"), raw("REPORT_SMTP_PASSWORD")
    if not host:
        for name in ("REPORT_SMTP_FROM", "REPORT_SMTP_USER", "REPORT_SMTP_PASSWORD", "REPORT_SMTP_PORT"):
            if raw(name):
                errors.append(f"{name} is set but REPORT_SMTP_HOST is not: set the host or unset {name}")
        return None
    if any(c.isspace() for c in host) or "/" in host:
        errors.append(f"REPORT_SMTP_HOST={host!r} is not a host name or address")
    if not sender:
        errors.append("REPORT_SMTP_FROM is required when REPORT_SMTP_HOST is set (the sender address)")
    elif not is_email_address(parseaddr(sender)[1]):
        errors.append(f"REPORT_SMTP_FROM={sender!r} is not an e-mail address")
    if bool(user) != bool(password):
        errors.append("REPORT_SMTP_USER and REPORT_SMTP_PASSWORD must be set together (password not shown)")
    elif password and security == "none":
        errors.append("REPORT_SMTP_PASSWORD with REPORT_SMTP_SECURITY=none would send it in clear: use starttls or ssl")
    return SmtpSettings(host, port, security, sender, user or None, password or None, timeout)


def load_report_settings(environ: Mapping[str, str] | None = None) -> ReportSettings:
    """Read and validate every report variable; raise :class:`ConfigError` listing all bad ones."""
    read = EnvReader(REPORT_DEFAULTS, environ)
    integer = read.integer
    settings = ReportSettings(
        reports_dir=Path(read.raw("REPORTS_DIR")).expanduser().resolve(),
        top_products=integer("REPORT_TOP_PRODUCTS", 1, 1000),
        cache_ttl_seconds=integer("REPORT_CACHE_TTL_SECONDS", 1, 30 * 86400),
        tick_limit=integer("REPORT_TICK_LIMIT", 1, 10_000),
        launch_grace_seconds=integer("REPORT_LAUNCH_GRACE_SECONDS", 10, 86400),
        max_forecast_age_days=integer("REPORT_MAX_FORECAST_AGE_DAYS", 1, 366),
        history_weeks=integer("REPORT_HISTORY_WEEKS", 0, 156),
        smtp=_smtp(read),
    )
    read.check("report configuration")
    return settings


@functools.cache
def get_report_settings() -> ReportSettings:
    """The process's report settings, read once when the code location loads."""
    return load_report_settings()
