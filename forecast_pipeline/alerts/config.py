"""Alert settings from environment variables, validated when the code location loads.

Same rules as :mod:`forecast_pipeline.settings`: an unset or blank variable takes its default, and
every bad value is reported at once in a :class:`~forecast_pipeline.settings.ConfigError` that
names the variable. The webhook URL may carry credentials, in its path too (Slack's
``/services/T000/B000/<token>``), so it is a :class:`WebhookUrl`: only ever shown redacted.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping
from typing import ClassVar

from pydantic import SecretStr, field_validator

from forecast_pipeline.settings import (
    AreaSettings,
    SecretUrl,
    env,
    load_all_settings,
    redact_url,
    reveal,
    setting_error,
)

MAX_WEBHOOK_TIMEOUT_SECONDS = 30
"""An attempt must fit well inside one delivery tick (see sensors.DELIVERY_BUDGET_SECONDS)."""


def looks_like_token(segment: str) -> bool:
    """Whether a path segment may be a secret: 16 characters or more, or 8 or more with a digit.
    Slack's, Discord's and Teams' tokens are (and Slack's workspace ids); words (``services``,
    ``hook``, ``IncomingWebhook``) are not, so the redacted URL still says which endpoint it is."""
    return len(segment) >= 16 or (len(segment) >= 8 and any(c.isdigit() for c in segment))


def redact_webhook_url(url: str | SecretStr) -> str:
    """:func:`redact_url` (password, secret query parameters) with every path segment that
    :func:`looks_like_token` shown as ``***``. For the webhook only: a database URL's path is a
    database name, which must stay readable. Safe on any text, a URL or not."""
    url = reveal(url)
    start = url.find("://") + 3 if "://" in url else 0
    end = min([i for i in (url.find("?"), url.find("#")) if i >= 0] + [len(url)])
    slash = url.find("/", start, end)
    if slash >= 0:
        path = "/".join("***" if looks_like_token(s) else s for s in url[slash:end].split("/"))
        url = url[:slash] + path + url[end:]
    return redact_url(url)


class WebhookUrl(SecretUrl):
    """The webhook URL: prints as :func:`redact_webhook_url`."""

    def __str__(self) -> str:
        return redact_webhook_url(self.get_secret_value())


class AlertSettings(AreaSettings):
    what: ClassVar[str] = "alert configuration"

    freshness_seconds: int = env("ALERT_FRESHNESS_SECONDS", 300, ge=1, le=7 * 86400)
    """A polling source's latest reading older than this is stale: its alerts are skipped."""
    webhook_url: WebhookUrl | None = env("ALERT_WEBHOOK_URL")
    """Where events are POSTed as JSON; ``None`` sends nothing (notifications still queue)."""
    webhook_timeout_seconds: float = env("ALERT_WEBHOOK_TIMEOUT_SECONDS", 5.0, ge=0.1, le=MAX_WEBHOOK_TIMEOUT_SECONDS)
    """Total time of one attempt: connect, send, and the whole answer."""
    webhook_backoff_seconds: float = env("ALERT_WEBHOOK_BACKOFF_SECONDS", 5.0, ge=0, le=3600)
    """Wait after a notification's first failed attempt, doubled after each further one ..."""
    webhook_max_backoff_seconds: float = env("ALERT_WEBHOOK_MAX_BACKOFF_SECONDS", 60.0, ge=1, le=3600)
    """... up to this, so a backlog drains soon after the webhook answers again."""
    webhook_refusal_grace_seconds: float = env("ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS", 3600.0, ge=0, le=7 * 86400)
    """How long refusals a config change can fix (3xx, 401, 403, 404, 407, a certificate that
    does not verify, a TLS handshake that cannot succeed) are retried."""
    notify_batch: int = env("ALERT_NOTIFY_BATCH", 5000, ge=1, le=100_000)
    """At most this many queued notifications are handled per delivery pass."""
    clock_skew_seconds: int = env("ALERT_CLOCK_SKEW_SECONDS", 60, ge=0, le=86400)
    """Readings dated further ahead than this are ignored (a wrong clock would hide newer ones)."""
    retention_days: int = env("ALERT_RETENTION_DAYS", 30, ge=1, le=36500)
    """Readings and delivered notifications older than this are deleted (see retention.py)."""

    @property
    def notifications_enabled(self) -> bool:
        return self.webhook_url is not None

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _http_url(cls, value: object) -> object:
        if isinstance(value, str):
            parsed = urllib.parse.urlsplit(value)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise setting_error(repr(redact_webhook_url(value)), "must be an http:// or https:// URL with a host")
            try:
                port = parsed.port  # raises for one that is not a number from 0 to 65535
            except ValueError:
                port = 0
            if port == 0:
                raise setting_error(repr(redact_webhook_url(value)), "has a port that is not a number from 1 to 65535")
        return value


def load_alert_settings(environ: Mapping[str, str] | None = None) -> AlertSettings:
    """Read and validate every ``ALERT_*`` variable; raise :class:`ConfigError` listing all bad ones."""
    return AlertSettings.load(environ)


@functools.cache
def get_alert_settings() -> AlertSettings:
    """The process's alert settings, read once when the code location loads (with every other
    area's: see :func:`~forecast_pipeline.settings.get_settings`)."""
    return load_all_settings().alerts
