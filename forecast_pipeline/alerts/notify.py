"""Webhook delivery from the ``alert_notifications`` outbox: at least once, nothing dropped.

Every event change queues its notification in the same transaction (see :mod:`.store`), with or
without ``ALERT_WEBHOOK_URL``; a delivery pass (the ``alert_notification_sensor``, or
``forecast-pipeline alerts evaluate``) POSTs what is due, oldest first. Receivers deduplicate on
the ``X-Alert-Notification-Id`` header.

How an answer is handled (like a well-behaved HTTP client):

- 2xx: delivered (``sent_at``).
- No answer (connection refused, reset, the attempt's deadline), 408, 425, 429 and every 5xx:
  the webhook may answer next time. Retried, ``ALERT_WEBHOOK_BACKOFF_SECONDS`` after the first
  failure and doubling up to ``ALERT_WEBHOOK_MAX_BACKOFF_SECONDS``, for as long as it takes; a
  ``Retry-After`` (seconds or an HTTP date, at most :data:`MAX_RETRY_AFTER_SECONDS`) is honoured,
  and after a 429 or 503 it holds the whole endpoint, not just that notification.
- 3xx (never followed: a redirected POST becomes a body-less GET), 401, 403, 404, 407: refusals
  that a config change fixes (a proxy being moved, credentials being rotated). Retried the same
  way for ``ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS`` after the first one, then dead-lettered.
- An https:// certificate that does not verify (self-signed, expired, another host's), or a TLS
  handshake that cannot succeed (``https://`` to a plain-HTTP port, no TLS version in common, see
  :data:`TLS_CONFIG_MISMATCHES`): no retry fixes it, a config change (a trusted certificate, the
  right host name or scheme) does.
  Handled as those refusals, with the reason in the error; verification is never turned off.
- Any other 4xx (400, 405, 409, 410, 413, 415, 422, ...): the same request gets the same answer.
  Dead-lettered at once.

``refused_since`` dates a run of refusals, for the grace; any other answer (a 5xx too: the endpoint
is up, failing, not refusing) ends the run, so a later refusal gets the whole grace again.

Dead-lettered notifications (``rejected_at``) stay in the table until an operator resends them
(``forecast-pipeline alerts notifications list|resend``); retention never deletes them.

Order: a notification is not sent while an earlier one of the same alert is unsent (retrying, or
dead-lettered), so a receiver never sees a resolution before its trigger or an old event's
resolution after the next trigger. Other alerts' notifications are not held back by it. A pass
stops at the first answer that says the webhook is down or refusing (no point trying the rest
now); a dead letter does not stop it.

Bounds: each attempt has one total deadline (connect, send, and the whole answer), enforced by
closing the socket, so a webhook trickling its answer cannot hold a pass; a pass starts no attempt
it cannot finish within its budget. The claim stamps the row (``next_attempt_at`` as a lease) in a
short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a few rows at a time) committed
before the POST: no lock is held over HTTP, a second pass skips it, and a pass that dies mid-POST
leaves it to be retried when the lease ends.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from forecast_pipeline.alerts.config import AlertSettings, looks_like_token
from forecast_pipeline.app_db import leases
from forecast_pipeline.app_db.alert_tables import alert_events, alert_notifications
from forecast_pipeline.settings import SECRET_PARAMETER

USER_AGENT = "forecast-pipeline-alerts/2"
MAX_RETRY_AFTER_SECONDS = 900
"""A Retry-After is honoured up to 15 minutes: a bad header must not park delivery for days."""
LEASE_MARGIN_SECONDS = 60
"""A claimed notification is retried this long after its pass's deadline if the pass died."""
CLAIM_BATCH = 20
"""Notifications claimed per transaction."""
ENDPOINT_HOLD_STATUSES = (429, 503)
"""Answers about the endpoint, not the notification: their wait holds every notification."""
ERROR_BODY_CHARS = 200

DELIVERED, RETRY, REFUSED, DEAD = "delivered", "retry", "refused", "dead"


def classify(status: int | None) -> str:
    """What an HTTP status means for a notification (``None``: no answer at all)."""
    if status is None:
        return RETRY
    if 200 <= status < 300:
        return DELIVERED
    if status in (408, 425, 429) or 500 <= status < 600:
        return RETRY
    if 300 <= status < 400 or status in (401, 403, 404, 407):
        return REFUSED
    if 400 <= status < 500:
        return DEAD
    return RETRY  # 1xx or a non-standard code: some proxy in between, try again


@dataclass(frozen=True)
class Answer:
    """One attempt's result: the status (``None`` when there was no answer) and what to log."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None
    refused: bool = False
    """No answer, but a refusal a config change fixes (the certificate did not verify, the TLS
    handshake failed)."""


class _FinalResponse(http.client.HTTPResponse):
    """The final answer: interim 1xx answers (102 Processing, 103 Early Hints) are skipped as
    http.client skips 100 Continue, rather than taken for the answer to a POST the webhook then accepts."""

    def _read_status(self):
        while True:
            version, status, reason = super()._read_status()
            if not 102 <= status < 200:
                return version, status, reason
            http.client._read_headers(self.fp)  # the interim answer's headers


class _Deadline:
    """Closes the connection's socket when the attempt's time is up, which ends any blocked read."""

    def __init__(self, connection: http.client.HTTPConnection, seconds: float):
        self.connection = connection
        self.expired = False
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing left to end
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()


def _url_secrets(parts: urllib.parse.SplitResult, authorization: str | None) -> list[str]:
    """What of the URL must never show in an error: its password, the Basic credentials made of
    it, the path segments that look like tokens and the values of query parameters named like
    credentials (as :func:`~forecast_pipeline.alerts.config.redact_webhook_url` hides)."""
    found = [parts.password or "", (authorization or "").removeprefix("Basic ")]
    found += [v for v in parts.path.split("/") if looks_like_token(v)]
    found += [v for n, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if SECRET_PARAMETER.search(n)]
    found += [urllib.parse.quote(v, safe="") for v in found] + [urllib.parse.unquote(v) for v in found]
    return sorted({v for v in found if v}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


TLS_CONFIG_MISMATCHES = frozenset(
    {"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"}
)
"""OpenSSL's reasons for a handshake that fails the same way until the URL or the endpoint's TLS
versions change (``https://`` to a plain-HTTP port gives the first). Only during the handshake:
once connected the same reason means a garbled stream, and other handshake failures (an
``internal_error`` alert, a reset) may pass, so those are retried as any failure."""


def post_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST ``body`` once; the whole exchange ends within ``timeout`` seconds. Never raises for
    network or HTTP trouble, and never puts the URL's credentials in the error, even when the
    answer echoes them (a redirect's body naming the new location, a request echoed back)."""
    parts = urllib.parse.urlsplit(url)
    request_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        request_headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    secrets = _url_secrets(parts, request_headers.get("Authorization"))
    # read enough past the shown part that a secret straddling its end is still whole, so removed
    body_bytes = ERROR_BODY_CHARS + max((len(v) for v in secrets), default=0)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    connection.response_class = _FinalResponse
    deadline = _Deadline(connection, timeout)
    connected = False
    try:
        with deadline:
            connection.connect()
            connected = True
            if deadline.expired:
                raise TimeoutError
            connection.request("POST", path, body=body, headers=request_headers)
            response = connection.getresponse()
            status = response.status
            retry_after = response.getheader("Retry-After")
            text = "" if 200 <= status < 300 else response.read(body_bytes).decode("utf-8", "replace")
        if deadline.expired:
            raise TimeoutError
    except ssl.SSLCertVerificationError as exc:
        reason = _scrub(exc.verify_message or str(exc), secrets)
        return Answer(None, f"the TLS certificate did not verify: {reason}", refused=True)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.expired or isinstance(exc, TimeoutError):
            return Answer(None, f"no complete answer within {timeout:g} s")
        if not connected and isinstance(exc, ssl.SSLError) and exc.reason in TLS_CONFIG_MISMATCHES:
            reason = f"TLS handshake failed: {exc.reason} (is it an https:// endpoint, speaking a TLS version we do?)"
            return Answer(None, _scrub(reason, secrets), refused=True)
        return Answer(None, _scrub(f"{type(exc).__name__}: {exc}", secrets))
    finally:
        connection.close()
    if 200 <= status < 300:
        return Answer(status)
    error = _scrub(f"HTTP {status} {response.reason}".rstrip(), secrets)
    text = _scrub(text, secrets)
    if text.strip():
        error += f": {' '.join(text.split())[:ERROR_BODY_CHARS]}"
    return Answer(status, error, retry_after)


def retry_after_seconds(value: str | None, now: dt.datetime) -> float | None:
    """A Retry-After header (delay in seconds or an HTTP date) as seconds from ``now``, capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def backoff_seconds(settings: AlertSettings, attempts: int) -> float:
    """Wait after the ``attempts``-th failed attempt: doubling from the base, capped."""
    exponent = min(max(attempts - 1, 0), 30)
    return min(settings.webhook_max_backoff_seconds, settings.webhook_backoff_seconds * 2**exponent)


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    """Attempts that will be retried (no answer, 408/425/429/5xx, a refusal within its grace)."""
    dead_lettered: int = 0
    pending: int = 0
    held_until: dt.datetime | None = None
    """The endpoint asked to wait (429/503 with Retry-After or backoff): no attempt before this."""
    last_error: str | None = None

    def summary(self) -> str:
        text = f"{self.sent} sent, {self.failed} failed, {self.dead_lettered} dead-lettered, {self.pending} pending"
        if self.held_until is not None:
            text += f"; the webhook asked to wait until {self.held_until.isoformat(timespec='seconds')}"
        return text


PENDING = alert_notifications.c.sent_at.is_(None) & alert_notifications.c.rejected_at.is_(None)
DEAD_LETTERED = alert_notifications.c.sent_at.is_(None) & alert_notifications.c.rejected_at.is_not(None)


def pending_count(conn: sa.Connection) -> int:
    """Notifications still to send (dead-lettered ones wait for an operator, not counted)."""
    return conn.execute(sa.select(sa.func.count()).select_from(alert_notifications).where(PENDING)).scalar_one()


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def endpoint_held_until(conn: sa.Connection, now: dt.datetime) -> dt.datetime | None:
    """When the webhook's last 429/503 asked every notification to wait, until when."""
    held = conn.execute(
        sa.select(sa.func.max(alert_notifications.c.next_attempt_at)).where(
            PENDING,
            alert_notifications.c.last_status.in_(ENDPOINT_HOLD_STATUSES),
            alert_notifications.c.next_attempt_at > now,
        )
    ).scalar_one_or_none()
    return _utc(held)


def deliver_pending(
    engine: sa.Engine,
    settings: AlertSettings,
    *,
    budget_seconds: float = 40.0,
    log: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
) -> DeliveryStats:
    """One delivery pass (see the module docstring): due notifications, oldest first, until the
    webhook looks down or refusing, ``settings.notify_batch`` are handled, or ``budget_seconds``
    would be overrun.

    Which notifications are due, and whether the endpoint is held, is decided at the pass's start.
    What an attempt records (its time, and the wait before the next one: backoff, Retry-After, an
    endpoint hold) is measured from when its answer came, read from the clock after the attempt,
    so a Retry-After received late in a long pass is not cut short. ``now`` (tests) stops the
    clock: every time of the pass is ``now``."""
    stats = DeliveryStats()
    clock: Callable[[], dt.datetime] = (lambda: now) if now is not None else (lambda: dt.datetime.now(dt.UTC))
    started = clock()  # the pass's time
    with engine.connect() as conn:  # one connection for the pass; no transaction is open over HTTP
        if settings.webhook_url is not None:
            stats.held_until = endpoint_held_until(conn, started)
            conn.rollback()
            if stats.held_until is None:
                _deliver(conn, settings, stats, time.monotonic() + budget_seconds, started, clock, log)
        stats.pending = pending_count(conn)
        conn.rollback()
    return stats


def _begin(conn: sa.Connection):
    """A short transaction. On PostgreSQL its commit does not wait for the disk: a commit lost in
    a crash only means the notification is sent again, which at-least-once delivery allows."""
    transaction = conn.begin()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    return transaction


def _deliver(conn, settings, stats, deadline, now, clock, log) -> None:
    """``now``: the pass's time (which notifications are due); ``clock``: the time as it runs on."""
    timeout = settings.webhook_timeout_seconds
    refusing_past_grace = False  # the webhook has refused longer than the grace: dead-letter on refusal
    stop = False
    while not stop and stats.sent + stats.dead_lettered < settings.notify_batch:
        if deadline - time.monotonic() < timeout:
            break  # an attempt started now could outlive the pass
        lease = deadline - time.monotonic() + timeout + LEASE_MARGIN_SECONDS  # past any attempt of this pass
        limit = min(CLAIM_BATCH, settings.notify_batch - stats.sent - stats.dead_lettered)
        claimed = _claim(conn, now, clock() + dt.timedelta(seconds=lease), limit)
        if not claimed:
            break
        for position, item in enumerate(claimed):
            if stop or deadline - time.monotonic() < timeout:
                _release(conn, claimed[position:])
                stop = True
                break
            outcome, values = _attempt(settings, item, clock, refusing_past_grace)
            past_grace = values.pop("past_grace")  # popped always: it is no column
            refusing_past_grace = refusing_past_grace or past_grace
            with _begin(conn):
                conn.execute(sa.update(alert_notifications).where(alert_notifications.c.id == item.id).values(**values))
            if outcome == DELIVERED:
                stats.sent += 1
                continue
            stats.last_error = values["last_error"]
            if outcome == DEAD:
                stats.dead_lettered += 1
                if log:
                    log(
                        f"Webhook notification {item.id} ({item.kind}) dead-lettered: {values['last_error']}; "
                        f"`forecast-pipeline alerts notifications resend {item.id}` sends it again"
                    )
                continue
            stats.failed += 1
            if log:
                log(
                    f"Webhook notification {item.id} ({item.kind}) failed, retried from "
                    f"{values['next_attempt_at'].isoformat(timespec='seconds')}: {values['last_error']}"
                )
            stop = True  # the webhook is down or refusing: the others wait for the next pass


def _attempt(settings: AlertSettings, item: _Claimed, clock: Callable[[], dt.datetime], refusing_past_grace: bool):
    """POST one notification; the outcome and the row's new values, timed from its answer."""
    body = json.dumps(item.payload, default=str).encode()
    headers = {"X-Alert-Notification-Id": str(item.id), "X-Alert-Event": item.kind}
    answer = post_once(settings.webhook_url.get_secret_value(), body, headers, settings.webhook_timeout_seconds)
    now = clock()  # when the answer came (or the attempt gave up): every wait runs from here
    outcome = REFUSED if answer.refused else classify(answer.status)
    attempts = item.attempts + 1
    values: dict = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_status": answer.status,
        "last_error": answer.error,
        "past_grace": False,
    }
    if outcome == DELIVERED:
        values.update(sent_at=now, next_attempt_at=None, refused_since=None)
    elif outcome == DEAD:
        values.update(rejected_at=now, next_attempt_at=None)
    elif outcome == REFUSED:
        since = _utc(item.refused_since) or now
        values["refused_since"] = since
        if refusing_past_grace or (now - since).total_seconds() >= settings.webhook_refusal_grace_seconds:
            outcome = DEAD
            values.update(rejected_at=now, next_attempt_at=None, past_grace=True)
            values["last_error"] = f"{answer.error} (refused for longer than the grace period)"
        else:
            values["next_attempt_at"] = now + dt.timedelta(seconds=backoff_seconds(settings, attempts))
    else:
        if answer.status is not None:  # it answered: up, maybe failing, but no longer refusing
            values["refused_since"] = None
        wait = max(backoff_seconds(settings, attempts), retry_after_seconds(answer.retry_after, now) or 0.0)
        values["next_attempt_at"] = now + dt.timedelta(seconds=wait)
    return outcome, values


def _claim(conn: sa.Connection, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[_Claimed]:
    """Claim up to ``limit`` of the oldest notifications due at ``now`` that no earlier unsent
    notification of their alert holds back, by giving them a lease (``next_attempt_at`` set to
    ``lease_until``) and committing, so the POSTs happen outside any transaction and other passes
    skip them."""
    n = alert_notifications.alias("n")
    event = alert_events.alias("event")
    earlier = alert_notifications.alias("earlier")
    earlier_event = alert_events.alias("earlier_event")
    held_back = (
        sa.select(earlier.c.id)
        .select_from(earlier.join(earlier_event, earlier_event.c.id == earlier.c.event_id))
        .where(earlier_event.c.alert_id == event.c.alert_id, earlier.c.id < n.c.id, earlier.c.sent_at.is_(None))
        .exists()
    )
    with _begin(conn):
        if conn.dialect.name == "sqlite":
            # pysqlite opens its transaction only at the UPDATE: two passes would both read, then
            # both claim, the same rows. Take SQLite's write lock before reading instead.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        rows = leases.claim(
            conn,
            sa.select(n.c.id, n.c.kind, n.c.payload, n.c.attempts, n.c.refused_since, n.c.next_attempt_at)
            .select_from(n.join(event, event.c.id == n.c.event_id))
            .where(
                n.c.sent_at.is_(None),
                n.c.rejected_at.is_(None),
                leases.lease_free(n.c.next_attempt_at, now),
                ~held_back,
            )
            .order_by(n.c.id)
            .limit(limit),
            table=alert_notifications,
            of=n,
            values={"next_attempt_at": lease_until},
        )
    return [_Claimed(r.id, r.kind, r.payload, r.attempts, r.refused_since, r.next_attempt_at) for r in rows]


def _release(conn: sa.Connection, items: Sequence[_Claimed]) -> None:
    """Give back claimed notifications this pass will not try, due as they were."""
    with _begin(conn):
        for item in items:
            leases.release(
                conn, alert_notifications, (alert_notifications.c.id == item.id,), next_attempt_at=item.next_attempt_at
            )


@dataclass(frozen=True)
class _Claimed:
    id: int
    kind: str
    payload: dict
    attempts: int
    """Attempts before this one."""
    refused_since: dt.datetime | None
    next_attempt_at: dt.datetime | None
    """When it was due before the claim (restored if the pass does not try it)."""


# ---------------------------------------------------------------- operators: list and resend

STATUSES = ("pending", "dead", "sent", "unsent", "all")


def list_notifications(conn: sa.Connection, status: str = "unsent", limit: int = 50) -> list[dict]:
    """Notifications for an operator, oldest first: ``pending``, ``dead`` (dead-lettered),
    ``sent``, ``unsent`` (pending and dead) or ``all``."""
    n = alert_notifications
    query = sa.select(n, alert_events.c.alert_id).select_from(n.join(alert_events, alert_events.c.id == n.c.event_id))
    where = {
        "pending": PENDING,
        "dead": DEAD_LETTERED,
        "sent": n.c.sent_at.is_not(None),
        "unsent": n.c.sent_at.is_(None),
    }
    if status in where:
        query = query.where(where[status])
    rows = conn.execute(query.order_by(n.c.id).limit(limit)).mappings().all()
    listed = []
    for row in rows:
        state = "sent" if row["sent_at"] else "dead" if row["rejected_at"] else "pending"
        listed.append(
            {
                "id": row["id"],
                "event_id": row["event_id"],
                "alert_id": row["alert_id"],
                "kind": row["kind"],
                "status": state,
                "attempts": row["attempts"],
                "created_at": _iso(row["created_at"]),
                "last_attempt_at": _iso(row["last_attempt_at"]),
                "next_attempt_at": _iso(row["next_attempt_at"]) if state == "pending" else None,
                "sent_at": _iso(row["sent_at"]),
                "dead_lettered_at": _iso(row["rejected_at"]),
                "last_status": row["last_status"],
                "last_error": row["last_error"],
            }
        )
    return listed


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat(timespec="seconds")


def requeue(conn: sa.Connection, ids: Sequence[int] | None = None) -> int:
    """Put dead-lettered notifications (these ids, or all when ``ids`` is None) back in the queue,
    due at once; returns how many. Attempts and the last error are kept for the record."""
    query = (
        sa.update(alert_notifications)
        .where(DEAD_LETTERED)
        .values(rejected_at=None, next_attempt_at=None, refused_since=None)
    )
    if ids is not None:
        query = query.where(alert_notifications.c.id.in_(list(ids)))
    return conn.execute(query).rowcount
