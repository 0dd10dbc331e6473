"""Webhook notifications from the ``alert_notifications`` outbox.

An event change queues its notification in the same transaction (see :mod:`.store`), so nothing
is lost when the webhook is down: the row stays unsent (``sent_at`` NULL, ``attempts`` and
``last_error`` updated) and every later evaluation tries again, oldest first. Delivery is at least
once: receivers can deduplicate on the ``X-Alert-Notification-Id`` header.

Each delivery is an HTTP POST of the JSON payload with a timeout, retried with exponential backoff
on connection errors, timeouts, 408, 429 and 5xx, never past the tick's deadline. Redirects are not
followed (urllib would turn the POST into a body-less GET): a 3xx, like a 4xx, is a rejection.

The oldest pending row is claimed by stamping ``last_attempt_at`` in a short transaction
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL), committed before the POST, so no lock or transaction is
held over HTTP and a second evaluator skips it; the outcome is recorded in a second short
transaction. Notifications go in order: after a failure (webhook down: connection error, timeout,
5xx) the pass stops, and the head waits ``RETRY_AFTER_SECONDS * 2**(attempts - 1)`` (at most an
hour) before it is tried again, the rest waiting behind it. A rejected notification (3xx/4xx but
408/429) is marked ``rejected_at`` and set aside, so it never holds back the ones after it.
"""

from __future__ import annotations

import datetime as dt
import http.client
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
RETRY_AFTER_SECONDS = 30
MAX_RETRY_AFTER_SECONDS = 3600


class WebhookError(Exception):
    """The webhook did not accept the notification (after the retries, if it was worth retrying).

    ``retryable`` is False for a rejection (3xx/4xx but 408/429): the webhook is up, the next
    notifications can still go."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} not followed", headers, fp)


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def post_json(
    url: str,
    payload: dict,
    *,
    timeout: float,
    retries: int,
    backoff: float,
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
) -> int:
    """POST ``payload`` as JSON; return the HTTP status (2xx) or raise :class:`WebhookError`.

    Attempt ``n`` (0-based) that fails with a retryable error waits ``backoff * 2**n`` seconds
    before the next, up to ``retries`` extra attempts, and none that could not finish before
    ``deadline`` (a ``time.monotonic()`` value).
    """
    body = json.dumps(payload, default=str).encode()
    request_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    last_error = "no attempt made"
    attempts = 0
    for attempt in range(retries + 1):
        wait = backoff * 2 ** (attempt - 1) if attempt else 0.0
        if attempt and deadline is not None and time.monotonic() + wait + timeout > deadline:
            break
        if wait:
            sleep(wait)
        request = urllib.request.Request(url, data=body, headers=request_headers, method="POST")
        attempts += 1
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in RETRY_STATUSES:
                raise WebhookError(f"{last_error} (not retried)", retryable=False) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"{type(reason).__name__}: {reason}"
    raise WebhookError(f"{last_error} after {attempts} attempt(s)")


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    pending: int = 0
    last_error: str | None = None


def pending_count(conn: sa.Connection) -> int:
    """Notifications still to send (rejected ones are set aside, not pending)."""
    pending = alert_notifications.c.sent_at.is_(None) & alert_notifications.c.rejected_at.is_(None)
    return conn.execute(sa.select(sa.func.count()).select_from(alert_notifications).where(pending)).scalar_one()


def deliver_pending(
    engine: sa.Engine,
    settings: AlertSettings,
    *,
    budget_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
) -> DeliveryStats:
    """Send pending notifications oldest first (see the module docstring). Stops when the webhook
    looks down or the head is waiting to be retried, after ``settings.notify_batch`` rows, or when
    ``budget_seconds`` are spent. ``now`` is the evaluation's time (retry waits are measured on it)."""
    stats = DeliveryStats()
    if settings.webhook_url is None:
        return stats
    now = now or dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + budget_seconds
    while stats.sent + stats.failed < settings.notify_batch and time.monotonic() < deadline:
        claimed = _claim_head(engine, now)
        if claimed is None:
            break
        error: WebhookError | None = None
        try:
            post_json(
                settings.webhook_url,
                claimed.payload,
                timeout=settings.webhook_timeout_seconds,
                retries=settings.webhook_retries,
                backoff=settings.webhook_backoff_seconds,
                headers={"X-Alert-Notification-Id": str(claimed.id), "X-Alert-Event": claimed.kind},
                sleep=sleep,
                deadline=deadline,
            )
        except WebhookError as exc:
            error = exc
        done_at = dt.datetime.now(dt.UTC)
        with engine.begin() as conn:
            conn.execute(
                sa.update(alert_notifications)
                .where(alert_notifications.c.id == claimed.id)
                .values(
                    last_error=str(error) if error else None,
                    sent_at=None if error else done_at,
                    rejected_at=done_at if error is not None and not error.retryable else None,
                )
            )
        if error is None:
            stats.sent += 1
            continue
        stats.failed += 1
        stats.last_error = str(error)
        if log:
            outcome = "kept for a later evaluation" if error.retryable else "rejected by the webhook, set aside"
            log(f"Webhook notification {claimed.id} ({claimed.kind}) failed, {outcome}: {error}")
        if error.retryable:
            break  # the webhook looks down: the next evaluation tries again
    with engine.connect() as conn:
        stats.pending = pending_count(conn)
    return stats


def _claim_head(engine: sa.Engine, now: dt.datetime):
    """Claim the oldest pending notification unless it is still waiting after a failure: stamp its
    attempt and commit, so the POST happens outside any transaction and other evaluators skip it."""
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(
                alert_notifications.c.id,
                alert_notifications.c.kind,
                alert_notifications.c.payload,
                alert_notifications.c.attempts,
                alert_notifications.c.last_attempt_at,
            )
            .where(alert_notifications.c.sent_at.is_(None), alert_notifications.c.rejected_at.is_(None))
            .order_by(alert_notifications.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            return None
        if row.last_attempt_at is not None:
            last = row.last_attempt_at if row.last_attempt_at.tzinfo else row.last_attempt_at.replace(tzinfo=dt.UTC)
            wait = min(MAX_RETRY_AFTER_SECONDS, RETRY_AFTER_SECONDS * 2 ** max(row.attempts - 1, 0))
            if (now - last).total_seconds() < wait:
                return None
        conn.execute(
            sa.update(alert_notifications)
            .where(alert_notifications.c.id == row.id)
            .values(attempts=alert_notifications.c.attempts + 1, last_attempt_at=now)
        )
        return row
