"""Webhook notifications from the ``alert_notifications`` outbox.

An event change queues its notification in the same transaction (see :mod:`.store`), so nothing
is lost when the webhook is down: the row stays unsent (``sent_at`` NULL, ``attempts`` and
``last_error`` updated) and every later evaluation tries again, oldest first. Delivery is at least
once: receivers can deduplicate on the ``X-Alert-Notification-Id`` header.

Each delivery is an HTTP POST of the JSON payload with a timeout, retried with exponential backoff
on connection errors, timeouts, 408, 429 and 5xx. When a notification still fails, the pass stops
(the webhook is down; the next evaluation retries) so one tick never spends more than one failed
delivery's worth of timeouts. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
two evaluators never send the same notification at the same time.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.alerts.config import AlertSettings
from forecast_pipeline.alerts.schema import alert_notifications

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "forecast-pipeline-alerts/1"


class WebhookError(Exception):
    """The webhook did not accept the notification (after the retries, if it was worth retrying)."""


def post_json(
    url: str,
    payload: dict,
    *,
    timeout: float,
    retries: int,
    backoff: float,
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """POST ``payload`` as JSON; return the HTTP status (2xx) or raise :class:`WebhookError`.

    Attempt ``n`` (0-based) that fails with a retryable error waits ``backoff * 2**n`` seconds
    before the next, up to ``retries`` extra attempts.
    """
    body = json.dumps(payload, default=str).encode()
    request_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=request_headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in RETRY_STATUSES:
                raise WebhookError(f"{last_error} (not retried)") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"{type(reason).__name__}: {reason}"
    raise WebhookError(f"{last_error} after {retries + 1} attempt(s)")


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    pending: int = 0
    last_error: str | None = None


def pending_count(conn: sa.Connection) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(alert_notifications).where(alert_notifications.c.sent_at.is_(None))
    ).scalar_one()


def deliver_pending(
    engine: sa.Engine,
    settings: AlertSettings,
    *,
    budget_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
) -> DeliveryStats:
    """Send queued notifications oldest first, each in its own short transaction that holds the
    row. Stops at the first failure, after ``settings.notify_batch`` rows or ``budget_seconds``."""
    stats = DeliveryStats()
    if settings.webhook_url is None:
        return stats
    started = time.monotonic()
    after_id = 0
    while stats.sent + stats.failed < settings.notify_batch and time.monotonic() - started < budget_seconds:
        with engine.begin() as conn:
            row = conn.execute(
                sa.select(alert_notifications.c.id, alert_notifications.c.kind, alert_notifications.c.payload)
                .where(alert_notifications.c.sent_at.is_(None), alert_notifications.c.id > after_id)
                .order_by(alert_notifications.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                break
            after_id = row.id
            error = None
            try:
                post_json(
                    settings.webhook_url,
                    row.payload,
                    timeout=settings.webhook_timeout_seconds,
                    retries=settings.webhook_retries,
                    backoff=settings.webhook_backoff_seconds,
                    headers={"X-Alert-Notification-Id": str(row.id), "X-Alert-Event": row.kind},
                    sleep=sleep,
                )
            except WebhookError as exc:
                error = str(exc)
            now = dt.datetime.now(dt.UTC)
            conn.execute(
                sa.update(alert_notifications)
                .where(alert_notifications.c.id == row.id)
                .values(
                    attempts=alert_notifications.c.attempts + 1,
                    last_attempt_at=now,
                    last_error=error,
                    sent_at=None if error else now,
                )
            )
        if error:
            stats.failed += 1
            stats.last_error = error
            if log:
                log(f"Webhook notification {row.id} ({row.kind}) failed, kept for the next evaluation: {error}")
            break
        stats.sent += 1
    with engine.connect() as conn:
        stats.pending = pending_count(conn)
    return stats
