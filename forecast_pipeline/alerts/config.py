"""Alert settings from environment variables, validated when the code location loads.

Same rules as :mod:`forecast_pipeline.settings`: an unset or blank variable takes its default, and
every bad value is reported at once in a :class:`~forecast_pipeline.settings.ConfigError` that
names the variable. The webhook URL may carry credentials, so it is only ever shown redacted.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from forecast_pipeline.settings import EnvReader, redact_url

ALERT_DEFAULTS: dict[str, str] = {
    "ALERT_FRESHNESS_SECONDS": "300",
    "ALERT_CLOCK_SKEW_SECONDS": "60",
    "ALERT_WEBHOOK_URL": "",
    "ALERT_WEBHOOK_TIMEOUT_SECONDS": "5",
    "ALERT_WEBHOOK_BACKOFF_SECONDS": "5",
    "ALERT_WEBHOOK_MAX_BACKOFF_SECONDS": "60",
    "ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS": "3600",
    "ALERT_NOTIFY_BATCH": "5000",
    "ALERT_RETENTION_DAYS": "30",
}
MAX_WEBHOOK_TIMEOUT_SECONDS = 30
"""An attempt must fit well inside one delivery tick (see sensors.DELIVERY_BUDGET_SECONDS)."""


@dataclass(frozen=True)
class AlertSettings:
    freshness_seconds: int
    """A polling source's latest reading older than this is stale: its alerts are skipped."""
    webhook_url: str | None
    """Where events are POSTed as JSON; ``None`` sends nothing (notifications still queue)."""
    webhook_timeout_seconds: float
    """Total time of one attempt: connect, send, and the whole answer."""
    webhook_backoff_seconds: float
    """Wait after a notification's first failed attempt, doubled after each further one ..."""
    webhook_max_backoff_seconds: float
    """... up to this, so a backlog drains soon after the webhook answers again."""
    webhook_refusal_grace_seconds: float
    """How long refusals a config change can fix (3xx, 401, 403, 404, 407) are retried."""
    notify_batch: int
    """At most this many queued notifications are handled per delivery pass."""
    clock_skew_seconds: int = 60
    """Readings dated further ahead than this are ignored (a wrong clock would hide newer ones)."""
    retention_days: int = 30
    """Readings and delivered notifications older than this are deleted (see retention.py)."""

    @property
    def notifications_enabled(self) -> bool:
        return self.webhook_url is not None


def load_alert_settings(environ: Mapping[str, str] | None = None) -> AlertSettings:
    """Read and validate every ``ALERT_*`` variable; raise :class:`ConfigError` listing all bad ones."""
    read = EnvReader(ALERT_DEFAULTS, environ)
    errors, raw, integer = read.errors, read.raw, read.integer

    def seconds(name: str, minimum: float, maximum: float) -> float:
        return read.number(name, minimum, maximum, unit=" seconds")

    webhook_url = raw("ALERT_WEBHOOK_URL") or None
    if webhook_url is not None:
        parsed = urllib.parse.urlsplit(webhook_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            errors.append(
                f"ALERT_WEBHOOK_URL={redact_url(webhook_url)!r} must be an http:// or https:// URL with a host"
            )

    settings = AlertSettings(
        freshness_seconds=integer("ALERT_FRESHNESS_SECONDS", 1, 7 * 86400),
        webhook_url=webhook_url,
        webhook_timeout_seconds=seconds("ALERT_WEBHOOK_TIMEOUT_SECONDS", 0.1, MAX_WEBHOOK_TIMEOUT_SECONDS),
        webhook_backoff_seconds=seconds("ALERT_WEBHOOK_BACKOFF_SECONDS", 0, 3600),
        webhook_max_backoff_seconds=seconds("ALERT_WEBHOOK_MAX_BACKOFF_SECONDS", 1, 3600),
        webhook_refusal_grace_seconds=seconds("ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS", 0, 7 * 86400),
        notify_batch=integer("ALERT_NOTIFY_BATCH", 1, 100_000),
        clock_skew_seconds=integer("ALERT_CLOCK_SKEW_SECONDS", 0, 86400),
        retention_days=integer("ALERT_RETENTION_DAYS", 1, 36500),
    )
    read.check("alert configuration")
    return settings


@functools.cache
def get_alert_settings() -> AlertSettings:
    """The process's alert settings, read once when the code location loads."""
    return load_alert_settings()
