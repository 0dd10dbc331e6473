"""Webhook delivery from the ``alert_notifications`` outbox, against real PostgreSQL and webhook
servers run on 127.0.0.1: how answers are classified, the dead-letter state and its CLI, the outbox
row written whatever the configuration, bounded attempts, draining after an outage, retention."""

import base64
import contextlib
import datetime as dt
import email.utils
import http.server
import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, build_sensor_context

from forecast_pipeline.alerts import notify, retention, store
from forecast_pipeline.alerts.config import load_alert_settings, redact_webhook_url
from forecast_pipeline.alerts.service import run_evaluation
from forecast_pipeline.app_db.alert_tables import alert_events, readings
from forecast_pipeline.cli import main as cli
from forecast_pipeline.defs.alerts.sensors import (
    alert_evaluation_sensor,
    alert_notification_sensor,
    alert_retention_sensor,
)
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline_tests import test_alerts as base
from forecast_pipeline_tests.test_alerts import ALERTS_DB_URL, NOW, World, settings

# the alert tests' fixtures: the dedicated Postgres database, empty tables, the ALERT_* environment
alerts_engine, db, world, alert_env = base.alerts_engine, base.db, base.world, base.alert_env
sqlite_db = base.sqlite_db

pytestmark = pytest.mark.integration


def tls_server_context(host: str, folder) -> tuple:
    """A self-signed certificate for ``host`` made by openssl in ``folder``, and a server context
    serving it: ``(certificate path, context)``. No client trusts it unless told to (``SSL_CERT_FILE``)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    kind = "IP" if host[0].isdigit() else "DNS"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={host}"]
        + ["-addext", f"subjectAltName={kind}:{host}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


class Endpoint:
    """A webhook on 127.0.0.1: ``answer(notification_id)`` returns ``(status, headers)``; 204 by default.
    ``tls_host``: served over HTTPS with a self-signed certificate for that name, made by openssl in
    ``tls_dir`` (``self.cert``); no client trusts it unless told to (``SSL_CERT_FILE``)."""

    def __init__(self, tls_host: str | None = None, tls_dir=None):
        self.answer = lambda notification_id: (204, {})
        self.received: list[dict] = []
        self.attempts: list[str] = []
        self.delay = 0.0
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                notification_id = self.headers["X-Alert-Notification-Id"]
                hook.attempts.append(notification_id)
                if hook.delay:
                    time.sleep(hook.delay)
                status, headers = hook.answer(notification_id)
                if 200 <= status < 300:
                    hook.received.append({"id": notification_id, "body": json.loads(body)})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        if tls_host is not None:
            self.cert, context = tls_server_context(tls_host, tls_dir)
            # the handshake happens in accept(): a client that rejects the certificate fails it quietly
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = self.url.replace("http://", "https://")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer_always(self, status: int, headers: dict | None = None) -> None:
        self.answer = lambda notification_id: (status, headers or {})

    def types(self) -> list[tuple[int, str]]:
        return [(r["body"]["event"]["id"], r["body"]["type"]) for r in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    hook = Endpoint()
    yield hook
    hook.close()


def trigger(world: World, name: str = "tank", value: float = 99.0, at: dt.datetime = NOW) -> tuple[int, int]:
    """A source and an alert over 82 that the reading ``value`` at ``at`` decides."""
    source = world.device(name)
    alert = world.alert(source, "temp", ">", 82.0, name=f"{name} too warm")
    world.reading(source, "temp", value, at=at)
    return source, alert


def deliver(world: World, url: str, at: dt.datetime, **env: str) -> notify.DeliveryStats:
    """One delivery pass at ``at`` with the default backoff (5 s doubling to 60 s)."""
    cfg = load_alert_settings({"ALERT_WEBHOOK_URL": url, **env})
    return notify.deliver_pending(world.engine, cfg, now=at, budget_seconds=20)


def state(world: World) -> list[tuple[str, int]]:
    """(status, attempts) of each notification: sent, pending or dead."""
    out = []
    for n in world.notifications():
        status = "sent" if n.sent_at else "dead" if n.rejected_at else "pending"
        out.append((status, n.attempts))
    return out


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 521, 522, 523, 524])
def test_answers_that_can_succeed_later_are_retried_with_backoff(world, endpoint, status):
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.answer_always(status)
    stats = deliver(world, endpoint.url, NOW)
    assert (stats.sent, stats.failed, stats.dead_lettered, stats.pending) == (0, 1, 0, 1)
    [n] = world.notifications()
    assert n.rejected_at is None and n.sent_at is None and f"HTTP {status}" in n.last_error
    assert n.next_attempt_at is not None and n.next_attempt_at > NOW
    endpoint.answer_always(204)
    assert deliver(world, endpoint.url, NOW + dt.timedelta(minutes=2)).sent == 1
    assert state(world) == [("sent", 2)] and len(endpoint.received) == 1


@pytest.mark.parametrize("status", [400, 405, 409, 410, 413, 415, 422])
def test_answers_that_cannot_succeed_on_a_retry_are_dead_lettered_not_dropped(world, endpoint, status):
    trigger(world, "a")
    trigger(world, "b")
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.answer = lambda notification_id: (status, {}) if notification_id == "1" else (204, {})
    stats = deliver(world, endpoint.url, NOW)
    assert (stats.sent, stats.dead_lettered, stats.pending) == (1, 1, 0)
    assert state(world) == [("dead", 1), ("sent", 1)]  # the dead one does not hold back the next
    assert f"HTTP {status}" in world.notifications()[0].last_error
    assert deliver(world, endpoint.url, NOW + dt.timedelta(hours=2)).sent == 0  # parked: never retried by itself
    assert endpoint.attempts == ["1", "2"]


@pytest.mark.parametrize("status", [301, 302, 307, 401, 403, 404, 407])
def test_refusals_a_config_change_can_fix_are_retried_for_the_grace_period(world, endpoint, status):
    """A proxy being moved or credentials being rotated: retried for ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS
    after the first such answer, then dead-lettered (3xx are never followed: a POST would turn into a GET);
    the notifications after it in that pass too, without waiting a grace of their own."""
    trigger(world, "a")
    trigger(world, "b")
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.answer_always(status, {"Location": endpoint.url} if status < 400 else {})
    grace = {"ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS": "600"}
    assert deliver(world, endpoint.url, NOW, **grace).pending == 2
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=300), **grace).pending == 2
    assert state(world) == [("pending", 2), ("pending", 0)]
    stats = deliver(world, endpoint.url, NOW + dt.timedelta(seconds=601), **grace)
    assert (stats.dead_lettered, stats.pending) == (2, 0)
    assert state(world) == [("dead", 3), ("dead", 1)] and endpoint.received == []


def test_retry_after_is_honoured_for_the_whole_endpoint(world, endpoint):
    trigger(world, "a")
    trigger(world, "b")
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.answer_always(429, {"Retry-After": "120"})
    assert deliver(world, endpoint.url, NOW).failed == 1
    [first, second] = world.notifications()
    assert first.next_attempt_at == NOW + dt.timedelta(seconds=120)
    endpoint.answer_always(204)
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=60)).sent == 0  # not even the second one
    assert endpoint.attempts == ["1"]
    # an HTTP date works too, and the wait ends when it says
    endpoint.answer_always(503, {"Retry-After": email.utils.format_datetime(NOW + dt.timedelta(seconds=200), True)})
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=121)).failed == 1
    assert world.notifications()[0].next_attempt_at == NOW + dt.timedelta(seconds=200)
    endpoint.answer_always(204)
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=199)).sent == 0
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=200)).sent == 2
    assert [r["id"] for r in endpoint.received] == ["1", "2"]


@pytest.mark.parametrize(
    ("status", "headers", "wait", "via"),
    [
        (503, {"Retry-After": "10"}, 10, "sensor"),
        (429, {"Retry-After": "10"}, 10, "sensor"),
        (500, {}, 5, "sensor"),  # no Retry-After: the first backoff, 5 s
        (503, {"Retry-After": "10"}, 10, "alerts evaluate"),
    ],
)
def test_a_wait_counts_from_the_failing_answer_not_from_the_start_of_the_pass(
    world, endpoint, status, headers, wait, via
):
    """A pass on the real clock (the sensor's, or the one ``alerts evaluate`` runs after evaluating):
    three slow 204s take 1.5 s, then the webhook fails. Its Retry-After (or the backoff) and the
    endpoint hold run from that answer, not from the start of the pass, so the next pass does not
    retry it (or anything) too early."""
    for name in "abcd":
        trigger(world, name, at=dt.datetime.now(dt.UTC))
    if via == "sensor":
        run_evaluation(world.engine, settings(), deliver=False)  # the evaluation sensor: no webhook I/O
    failed: list[dt.datetime] = []

    def answer(notification_id):
        if notification_id != "4":
            time.sleep(0.5)
            return 204, {}
        failed.append(dt.datetime.now(dt.UTC))  # the answer leaves the webhook after this
        return status, headers

    endpoint.answer = answer
    cfg = load_alert_settings({"ALERT_WEBHOOK_URL": endpoint.url})
    started = dt.datetime.now(dt.UTC)
    if via == "sensor":
        stats = notify.deliver_pending(world.engine, cfg, budget_seconds=20)
        figures = (stats.sent, stats.failed, stats.pending)
    else:
        evaluated = run_evaluation(world.engine, cfg).stats
        figures = (evaluated.notifications_sent, evaluated.notifications_failed, evaluated.notifications_pending)
    ended = dt.datetime.now(dt.UTC)
    assert figures == (3, 1, 1)
    [failed_at] = failed
    assert failed_at - started >= dt.timedelta(seconds=1.5)
    [n] = [n for n in world.notifications() if n.sent_at is None]
    assert n.last_status == status
    assert failed_at + dt.timedelta(seconds=wait) <= n.next_attempt_at <= ended + dt.timedelta(seconds=wait)

    # the next pass, half a second before the wait the webhook asked for is over: nothing is tried
    endpoint.answer_always(204)
    early = deliver(world, endpoint.url, failed_at + dt.timedelta(seconds=wait - 0.5))
    assert (early.sent, early.pending) == (0, 1) and endpoint.attempts == ["1", "2", "3", "4"]
    if status in notify.ENDPOINT_HOLD_STATUSES:  # the whole endpoint is held, not just this notification
        assert early.held_until is not None and early.held_until >= failed_at + dt.timedelta(seconds=wait)
    # once it is over, it goes
    assert deliver(world, endpoint.url, ended + dt.timedelta(seconds=wait)).sent == 1
    assert endpoint.attempts == ["1", "2", "3", "4", "4"]


# ---------------------------------------------------------------- dead letters: list and resend


def run_cli(monkeypatch, capsys, *argv: str, **env: str) -> tuple[int, str, str]:
    monkeypatch.setenv("DATABASE_URL", ALERTS_DB_URL)
    for name in ("APP_DATABASE_URL", "ALERT_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_operator_lists_and_resends_dead_letters(world, endpoint, monkeypatch, capsys):
    for name in ("a", "b", "c"):
        trigger(world, name)
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.answer_always(400)
    assert deliver(world, endpoint.url, NOW).dead_lettered == 3
    code, out, _ = run_cli(monkeypatch, capsys, "alerts", "notifications", "list")
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert all(" dead " in line and "HTTP 400" in line for line in lines[1:])
    code, out, _ = run_cli(monkeypatch, capsys, "alerts", "notifications", "list", "--status", "pending", "--json")
    assert code == 0 and json.loads(out) == []

    # the receiver is fixed: resend one by id, then all; each is delivered once
    endpoint.answer_always(204)
    resend = ("alerts", "notifications", "resend")
    code, out, _ = run_cli(monkeypatch, capsys, *resend, "2", ALERT_WEBHOOK_URL=endpoint.url)
    assert code == 0 and "requeued 1" in out and "1 sent" in out
    assert [r["id"] for r in endpoint.received] == ["2"]
    code, out, _ = run_cli(monkeypatch, capsys, "alerts", "notifications", "resend", "--all")
    assert code == 0 and "requeued 2" in out  # no URL in this shell: queued for the sensor
    assert state(world) == [("pending", 1), ("sent", 2), ("pending", 1)]
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=1)).sent == 2
    assert sorted(r["id"] for r in endpoint.received) == ["1", "2", "3"]
    code, _, err = run_cli(monkeypatch, capsys, "alerts", "notifications", "resend", "99")
    assert code == 2 and "no dead-lettered notification 99" in err
    code, _, err = run_cli(monkeypatch, capsys, "alerts", "notifications", "resend")
    assert code == 2 and "--all" in err


# ---------------------------------------------------------------- the outbox row, whatever the configuration


def test_events_from_a_shell_without_a_webhook_are_notified_later_trigger_first(world, endpoint):
    source, _ = trigger(world)
    assert run_evaluation(world.engine, settings(), now=NOW).stats.triggered == 1  # no ALERT_WEBHOOK_URL
    world.reading(source, "temp", 70.0, at=NOW + dt.timedelta(seconds=30))
    assert run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(seconds=30)).stats.resolved == 1
    assert [n.kind for n in world.notifications()] == ["triggered", "resolved"]
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=60)).sent == 2
    assert [kind for _, kind in endpoint.types()] == ["alert.triggered", "alert.resolved"]


def test_a_resolution_never_overtakes_its_trigger(world, endpoint):
    """An event opened before this version (no outbox row) still gets its trigger first, and a
    resolution waits while its trigger is retried or dead-lettered."""
    source, alert = trigger(world)
    with world.engine.begin() as conn:
        conn.execute(
            sa.insert(alert_events).values(
                alert_id=alert, device_id=source, current_value=99.0, threshold_value=82, operator=">", metric="temp"
            )
        )
    world.reading(source, "temp", 70.0, at=NOW)
    assert run_evaluation(world.engine, settings(), now=NOW).stats.resolved == 1
    assert [n.kind for n in world.notifications()] == ["triggered", "resolved"]
    endpoint.answer = lambda notification_id: (400, {}) if notification_id == "1" else (204, {})
    stats = deliver(world, endpoint.url, NOW)
    assert (stats.sent, stats.dead_lettered, stats.pending) == (0, 1, 1)  # the resolution waits
    assert endpoint.attempts == ["1"]
    endpoint.answer_always(204)
    with world.engine.begin() as conn:
        assert notify.requeue(conn, ids=[1]) == 1
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=1)).sent == 2
    assert [kind for _, kind in endpoint.types()] == ["alert.triggered", "alert.resolved"]


# ---------------------------------------------------------------- bounded attempts


class SocketWebhook:
    """A webhook on a raw socket, for answers http.server cannot give; ``_handle(conn)`` answers
    each connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._handle(conn)

    def close(self):
        self.sock.close()


class TricklingServer(SocketWebhook):
    """Answers a POST one byte every ``interval`` seconds: each read returns in time, the whole never does."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: abcdefghijklmnopq\r\n\r\n"

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        super().__init__()

    def _handle(self, conn):
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.recv(65536)
            try:
                for byte in self.ANSWER:
                    conn.sendall(bytes([byte]))
                    time.sleep(self.interval)
            except OSError:
                pass


def test_a_trickling_answer_is_cut_at_the_attempt_timeout(world):
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    server = TricklingServer(interval=0.1)  # the whole answer would take ~7 s
    try:
        started = time.monotonic()
        stats = deliver(world, server.url, NOW, ALERT_WEBHOOK_TIMEOUT_SECONDS="0.5")
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < 1.5, elapsed
    assert (stats.sent, stats.failed, stats.pending) == (0, 1, 1)
    assert "0.5" in world.notifications()[0].last_error


def test_a_delivery_pass_never_starts_an_attempt_it_cannot_finish_within_its_budget(world, endpoint):
    for name in "abcde":
        trigger(world, name)
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.delay = 0.45
    cfg = settings(ALERT_WEBHOOK_URL=endpoint.url, ALERT_WEBHOOK_TIMEOUT_SECONDS="0.9")
    started = time.monotonic()
    stats = notify.deliver_pending(world.engine, cfg, now=NOW, budget_seconds=1.0)
    assert time.monotonic() - started < 1.0
    assert (stats.sent, stats.pending) == (1, 4)


def test_the_evaluation_sensor_does_no_webhook_io_the_delivery_sensor_does(world, alert_env, endpoint):
    alert_env.setenv("ALERT_WEBHOOK_URL", endpoint.url)
    endpoint.delay = 2.0
    trigger(world, at=dt.datetime.now(dt.UTC))
    resources = {"app_db": AppDatabase(url=ALERTS_DB_URL)}
    with DagsterInstance.ephemeral() as instance:
        started = time.monotonic()
        with build_sensor_context(instance=instance, resources=resources) as context:
            evaluated = alert_evaluation_sensor(context)
        assert time.monotonic() - started < 1.5 and endpoint.attempts == []
        assert json.loads(evaluated.cursor)["triggered"] == 1
        endpoint.delay = 0.0
        with build_sensor_context(instance=instance, resources=resources) as context:
            delivered = alert_notification_sensor(context)
    assert "1 sent" in delivered.skip_reason.skip_message and len(endpoint.received) == 1
    assert delivered.run_requests in (None, [])


# ---------------------------------------------------------------- draining after an outage


def test_the_backlog_drains_within_two_minutes_after_an_hour_long_outage(world, endpoint):
    sources = [world.device(f"tank-{i}") for i in range(20)]
    for s in sources:
        world.alert(s, "temp", ">", 82.0)
        world.reading(s, "temp", 99.0, at=NOW)
    run_evaluation(world.engine, settings(), now=NOW)
    endpoint.answer_always(503)
    at = NOW
    while at < NOW + dt.timedelta(hours=1):  # the delivery sensor's ticks during the outage
        deliver(world, endpoint.url, at)
        at += dt.timedelta(seconds=15)
    assert endpoint.received == [] and len(endpoint.attempts) >= 30  # kept trying all along
    endpoint.answer_always(204)
    back_up = at
    while len(endpoint.received) < 20 and at < back_up + dt.timedelta(minutes=10):
        deliver(world, endpoint.url, at)
        at += dt.timedelta(seconds=15)
    assert len(endpoint.received) == 20
    assert at - back_up <= dt.timedelta(minutes=2), at - back_up


# ---------------------------------------------------------------- retention


def test_retention_deletes_old_readings_and_delivered_notifications_only(world, alert_env, endpoint):
    """Kept: recent readings, each source's latest reading, the reading an open event fired on,
    every undelivered notification and every notification of an open event."""
    alert_env.setenv("ALERT_RETENTION_DAYS", "7")
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(days=10)
    resolved_src, _ = trigger(world, "resolved", at=old)
    open_src, open_alert = trigger(world, "open", at=old)
    dead_src, _ = trigger(world, "dead", at=old)
    run_evaluation(world.engine, settings(), now=old)
    world.reading(resolved_src, "temp", 70.0, at=old + dt.timedelta(minutes=1))
    world.reading(dead_src, "temp", 70.0, at=old + dt.timedelta(minutes=1))
    run_evaluation(world.engine, settings(), now=old + dt.timedelta(minutes=1))
    endpoint.answer = lambda notification_id: (400, {}) if notification_id == "3" else (204, {})
    deliver(world, endpoint.url, old + dt.timedelta(minutes=2))
    for minutes in range(3, 8):  # older readings of the open source, then recent ones
        world.reading(open_src, "temp", 99.0, at=old + dt.timedelta(minutes=minutes))
    world.reading(open_src, "temp", 99.0, at=now - dt.timedelta(days=1))
    with world.engine.connect() as conn:
        fired_on = {e.alert_id: e.metadata["reading_id"] for e in conn.execute(sa.select(alert_events))}
        before = {r.id for r in conn.execute(sa.select(readings.c.id))}
    kinds = {(n.event_id, n.kind): n for n in world.notifications()}
    assert len(before) == 11 and len(kinds) == 5

    with DagsterInstance.ephemeral() as instance:
        resources = {"app_db": AppDatabase(url=ALERTS_DB_URL)}
        with build_sensor_context(instance=instance, resources=resources) as context:
            result = alert_retention_sensor(context)
    assert "deleted 7 readings, 2 notifications" in result.skip_reason.skip_message
    with world.engine.connect() as conn:
        after = {r.id: (r.device_id, r.timestamp) for r in conn.execute(sa.select(readings))}
    latest = {src: max(ts for d, ts in after.values() if d == src) for src in (resolved_src, open_src, dead_src)}
    assert latest[resolved_src] == latest[dead_src] == old + dt.timedelta(minutes=1)
    assert latest[open_src] == now - dt.timedelta(days=1)
    assert fired_on[open_alert] in after  # the reading the open event fired on
    assert len(after) == 4 and len(fired_on) == 3
    left = [(n.kind, "sent" if n.sent_at else "dead" if n.rejected_at else "pending") for n in world.notifications()]
    # the resolved event's two delivered rows are gone; the open event's trigger and the
    # dead-lettered trigger (with its waiting resolution) stay
    assert sorted(left) == [("resolved", "pending"), ("triggered", "dead"), ("triggered", "sent")]


# ---------------------------------------------------------------- review: duplicates, order, secrets


def test_two_delivery_passes_at_once_on_sqlite_send_a_notification_once(sqlite_db, endpoint):
    """The sensor and `alerts evaluate` (or `resend`) deliver at the same time on the embedded
    SQLite: both passes read the due rows before either claims them (held here until both have
    read, if they can); only one may POST it."""
    w = World(sqlite_db)
    trigger(w)
    run_evaluation(sqlite_db, settings(), now=NOW)
    both_read = threading.Barrier(2, timeout=1)

    def after_claim_read(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and " earlier" in statement:
            with contextlib.suppress(threading.BrokenBarrierError):  # the other pass waits for this one's claim
                both_read.wait()

    sa.event.listen(sqlite_db, "after_cursor_execute", after_claim_read)
    cfg = load_alert_settings({"ALERT_WEBHOOK_URL": endpoint.url})
    passes = [
        threading.Thread(
            target=notify.deliver_pending, args=(sqlite_db, cfg), kwargs={"now": NOW, "budget_seconds": 20}
        )
        for _ in range(2)
    ]
    try:
        for one in passes:
            one.start()
        for one in passes:
            one.join()
    finally:
        sa.event.remove(sqlite_db, "after_cursor_execute", after_claim_read)
    assert endpoint.attempts == ["1"]
    assert state(w) == [("sent", 1)]


class EchoingWebhook:
    """Answers ``status`` with a body that echoes the request, as Apache's, Express's and
    Werkzeug's redirects name the new location (the same URL over https)."""

    def __init__(self, status: int):
        hook = self
        self.status = status

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                location = f"https://{self.headers['Host']}{self.path}"
                body = (
                    f'<html><body>The document has moved <a href="{location}">here</a>. '
                    f"You sent: Authorization: {self.headers['Authorization']}</body></html>"
                ).encode()
                self.send_response(hook.status)
                self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.server.server_address[1]
        self.url = f"http://hook:pa%24%24word@127.0.0.1:{port}/hook?channel=ops&token=t0ken-of-the-hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [301, 400])
def test_an_answer_echoing_the_url_never_puts_its_credentials_in_the_dead_letter_or_the_log(world, status):
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    server = EchoingWebhook(status)
    logged: list[str] = []
    cfg = settings(ALERT_WEBHOOK_URL=server.url, ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS="0")
    try:
        stats = notify.deliver_pending(world.engine, cfg, now=NOW, log=logged.append)
    finally:
        server.close()
    assert stats.dead_lettered == 1
    [n] = world.notifications()
    basic = base64.b64encode(b"hook:pa$$word").decode()
    for text in [n.last_error, *logged]:
        assert f"HTTP {status}" in text and "/hook?channel=ops&token=***" in text  # where it points stays
        for secret in ("t0ken-of-the-hook", "pa$$word", "pa%24%24word", basic):
            assert secret not in text


class RawWebhook(SocketWebhook):
    """Sends ``answer`` (raw bytes) to every POST."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.posts = 0
        super().__init__()

    def _handle(self, conn):
        with conn:
            conn.recv(65536)
            self.posts += 1
            conn.sendall(self.answer)
            conn.recv(1)  # until the client closes


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", b"HTTP/1.1 102 Processing\r\n\r\n"],
)
def test_an_interim_1xx_answer_is_not_taken_for_the_final_one(world, interim):
    """A proxy's 103 Early Hints (or a WebDAV 102) comes before the webhook's real answer: that
    200 is the answer, not a failure to retry, which would send it again."""
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    server = RawWebhook(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        stats = deliver(world, server.url, NOW)
        again = deliver(world, server.url, NOW + dt.timedelta(minutes=5))
    finally:
        server.close()
    assert (stats.sent, stats.failed, again.sent, server.posts) == (1, 0, 0, 1)
    assert state(world) == [("sent", 1)]


def test_a_second_evaluator_resolving_late_never_requeues_a_trigger_retention_deleted(world, endpoint):
    """Two evaluators (the sensor, `alerts evaluate`) both saw the event open. The first resolves
    it; both notifications go out; retention deletes the trigger delivered long ago. The second
    evaluator's resolve, now a no-op, must not queue the trigger again: the receiver would get
    "triggered" after "resolved" for an event that is over."""
    old = NOW - dt.timedelta(days=40)
    source, _ = trigger(world, at=old)
    run_evaluation(world.engine, settings(), now=old)
    deliver(world, endpoint.url, old)
    world.reading(source, "temp", 70.0, at=NOW)
    with world.engine.connect() as conn:
        [stale] = store.load_inputs(conn)  # the second evaluator's view: the event is open
    assert run_evaluation(world.engine, settings(), now=NOW).stats.resolved == 1
    assert deliver(world, endpoint.url, NOW).sent == 1
    assert retention.purge(world.engine, NOW + dt.timedelta(hours=1), 30).notifications == 1
    with world.engine.begin() as conn:
        assert store.resolve_event(conn, stale.open_event_id, 70.0, NOW) is False
    assert [n.kind for n in world.notifications()] == ["resolved"]
    deliver(world, endpoint.url, NOW + dt.timedelta(minutes=1))
    assert [kind for _, kind in endpoint.types()] == ["alert.triggered", "alert.resolved"]


# ---------------------------------------------------------------- review: certificates, refused_since, path tokens


@pytest.mark.parametrize("problem", ["self-signed", "for another host"])
def test_a_certificate_that_does_not_verify_is_retried_for_the_grace_then_dead_lettered(
    world, tmp_path, monkeypatch, problem
):
    """A certificate that does not verify (self-signed, another host's, expired) verifies no better
    on a retry: a config change fixes it (a trusted certificate, the right host name), as it does a
    401. So it is retried for ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS, then dead-lettered saying why;
    verification stays on (trusted, the same server gets the notifications)."""
    trigger(world, "a")
    trigger(world, "b")
    run_evaluation(world.engine, settings(), now=NOW)
    hook = Endpoint(tls_host="127.0.0.1" if problem == "self-signed" else "localhost", tls_dir=tmp_path)
    if problem != "self-signed":
        monkeypatch.setenv("SSL_CERT_FILE", str(hook.cert))  # trusted, but not for 127.0.0.1
    grace = {"ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS": "600"}
    try:
        first = deliver(world, hook.url, NOW, **grace)
        assert (first.failed, first.dead_lettered, first.pending) == (1, 0, 2)
        assert world.notifications()[0].refused_since == NOW
        assert deliver(world, hook.url, NOW + dt.timedelta(seconds=300), **grace).pending == 2
        last = deliver(world, hook.url, NOW + dt.timedelta(seconds=601), **grace)
        assert (last.dead_lettered, last.pending) == (2, 0)
        assert state(world) == [("dead", 3), ("dead", 1)] and hook.received == []
        for n in world.notifications():
            assert "certificate did not verify" in n.last_error and "grace" in n.last_error, n.last_error

        monkeypatch.setenv("SSL_CERT_FILE", str(hook.cert))
        url = hook.url if problem == "self-signed" else hook.url.replace("127.0.0.1", "localhost")
        with world.engine.begin() as conn:
            notify.requeue(conn)
        assert deliver(world, url, NOW + dt.timedelta(seconds=602)).sent == 2
    finally:
        hook.close()


def test_https_to_a_plain_http_endpoint_is_retried_for_the_grace_then_dead_lettered(world, endpoint):
    """``https://`` to a port that speaks plain HTTP (or a server with no TLS version in common)
    fails the handshake on every retry; the URL is what needs changing. Retried for
    ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS, then dead-lettered saying why, never retried for ever."""
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    url = endpoint.url.replace("http://", "https://")
    grace = {"ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS": "600"}
    first = deliver(world, url, NOW, **grace)
    assert (first.failed, first.dead_lettered, first.pending) == (1, 0, 1)
    assert world.notifications()[0].refused_since == NOW
    last = deliver(world, url, NOW + dt.timedelta(seconds=601), **grace)
    assert (last.dead_lettered, last.pending) == (1, 0) and endpoint.received == []
    [n] = world.notifications()
    assert "TLS handshake failed" in n.last_error and "WRONG_VERSION_NUMBER" in n.last_error, n.last_error
    with world.engine.begin() as conn:
        notify.requeue(conn)
    assert deliver(world, endpoint.url, NOW + dt.timedelta(seconds=602)).sent == 1  # the URL fixed


class GarbledTlsWebhook(SocketWebhook):
    """Completes the TLS handshake with a certificate the client trusts, reads the request, then
    answers in plain text under the TLS layer: a TLS error after the connection was made, the
    endpoint's trouble, not the URL's."""

    def __init__(self, tls_dir):
        self.cert, self.context = tls_server_context("127.0.0.1", tls_dir)
        super().__init__()
        self.url = self.url.replace("http://", "https://")

    def _handle(self, conn):
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)
                # plain text where a TLS record belongs: the client's TLS layer fails reading it
                # (WRONG_VERSION_NUMBER, the very reason https:// to a plain-HTTP port gives)
                os.write(tls.fileno(), b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n" * 20)
                time.sleep(0.3)  # closed at once, the client would read an EOF instead
        except (OSError, ssl.SSLError):
            pass


def test_a_tls_error_after_the_connection_is_made_is_retried_until_delivered(world, tmp_path, monkeypatch):
    """Only a handshake the endpoint refuses for want of a config change (https:// to a plain-HTTP
    port, no TLS version in common) is a refusal; TLS trouble once connected (a garbled record, a
    reset) is retried as any failure is, past the grace too, until the endpoint answers."""
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    hook = GarbledTlsWebhook(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(hook.cert))
    grace = {"ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS": "600"}
    try:
        first = deliver(world, hook.url, NOW, **grace)
        assert (first.failed, first.dead_lettered, first.pending) == (1, 0, 1)
        [n] = world.notifications()
        assert n.refused_since is None and "SSL" in n.last_error and "handshake" not in n.last_error, n.last_error
        later = deliver(world, hook.url, NOW + dt.timedelta(seconds=601), **grace)
        assert (later.dead_lettered, later.pending) == (0, 1)
    finally:
        hook.close()


def test_an_endpoint_that_refused_then_answers_5xx_is_failing_not_refusing(world, endpoint):
    """``refused_since`` dates a run of refusals (3xx, 401, 403, 404, 407, a certificate that does
    not verify) that dead-letters once longer than the grace. Any other answer ends the run: after
    a 401 and then two hours of 503s the endpoint is up but failing, retried per the 5xx policy,
    and its next 401 starts a new grace instead of being dead-lettered as refused for two hours."""
    trigger(world)
    run_evaluation(world.engine, settings(), now=NOW)
    grace = {"ALERT_WEBHOOK_REFUSAL_GRACE_SECONDS": "600"}
    defaults = load_alert_settings({})  # deliver()'s backoff
    endpoint.answer_always(401)
    assert deliver(world, endpoint.url, NOW, **grace).failed == 1
    assert world.notifications()[0].refused_since == NOW
    endpoint.answer_always(503)
    for minutes in (5, 30, 60, 120):
        at = NOW + dt.timedelta(minutes=minutes)
        stats = deliver(world, endpoint.url, at, **grace)
        assert (stats.failed, stats.dead_lettered, stats.pending) == (1, 0, 1)
        [n] = world.notifications()
        assert n.refused_since is None and n.last_status == 503
        assert n.next_attempt_at == at + dt.timedelta(seconds=notify.backoff_seconds(defaults, n.attempts))
    endpoint.answer_always(401)
    again = at + dt.timedelta(minutes=2)
    stats = deliver(world, endpoint.url, again, **grace)
    assert (stats.failed, stats.dead_lettered, stats.pending) == (1, 0, 1)
    assert world.notifications()[0].refused_since == again
    assert deliver(world, endpoint.url, again + dt.timedelta(seconds=601), **grace).dead_lettered == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/aB3dE5fG7hJ9kL1mN3pQ5rS7", "/services/T000/B000/***"),
        ("https://hooks.slack.com/services/T01ABCD2EF/B01ABCD2EF/aB3dE5fG7hJ9kL1m", "/services/***/***/***"),
        ("https://discord.com/api/webhooks/112233445566778899/Zq-xYwVuTsRqPoNmLkJiHg", "/api/webhooks/***/***"),
        ("https://x.webhook.office.com/webhookb2/1f0e@2c3d/IncomingWebhook/9a8b7c6d5e4f", "/***/IncomingWebhook/***"),
        ("http://u:pw@alerts.internal:8080/hook?channel=ops&token=t0k", ":8080/hook?channel=ops&token=***"),
        (  # Teams Workflows (Power Automate): the secret is the signature in the query
            "https://prod-12.westus.logic.azure.com:443/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke"
            "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=Ab12Cd34Ef56Gh78Ij90",
            "/***/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=***",
        ),
        ("https://fn.azurewebsites.net/api/alert?code=Zz9Yy8Xx7Ww6", "/api/alert?code=***"),  # Azure Functions
    ],
)
def test_the_webhook_url_is_shown_with_what_may_be_a_token_masked(url, shown):
    """The rule: a path segment of 16 characters or more, or of 8 or more with a digit, is ``***``."""
    redacted = redact_webhook_url(url)
    assert redacted.endswith(shown) and redacted.split("/")[2] == url.split("/")[2].replace(":pw@", ":***@")


PATH_TOKEN = "aB3dE5fG7hJ9kL1mN3pQ5rS7"
"""The secret part of a Slack-style webhook URL (https://hooks.slack.com/services/T000/B000/<token>)."""


def test_a_token_in_the_webhook_urls_path_is_never_shown(world, alert_env, capsys, caplog):
    """Slack, Discord and Teams put the webhook's secret in the URL's path. Answers echoing the URL
    (503 to the sensor, 400), the webhook down, the CLI's lists and its delivery log, a URL refused
    at load and the settings printed: the token is in none of them, where the URL points still is."""
    caplog.set_level(logging.DEBUG)
    trigger(world, "a")
    trigger(world, "b")
    run_evaluation(world.engine, settings(), now=NOW)
    server = EchoingWebhook(503)
    url = f"http://127.0.0.1:{server.server.server_address[1]}/services/T000/B000/{PATH_TOKEN}"
    alert_env.setenv("ALERT_WEBHOOK_URL", url)
    cfg = settings(ALERT_WEBHOOK_URL=url)
    shown: list[str] = [str(cfg.webhook_url), repr(cfg.webhook_url), repr(cfg)]
    logged: list[str] = []
    try:
        shown.append(base._tick(alert_notification_sensor))
        sensor_log = capsys.readouterr().err  # Dagster's handler writes the tick's log to stderr
        assert "Webhook notification 1 (triggered) failed" in sensor_log
        shown.append(sensor_log)
        assert "/services/T000/B000/***" in world.notifications()[0].last_error  # where it points stays
        server.status = 400
        assert notify.deliver_pending(world.engine, cfg, log=logged.append).dead_lettered == 2
        shown += [n.last_error for n in world.notifications()]
        shown += run_cli(alert_env, capsys, "alerts", "notifications", "resend", "--all", ALERT_WEBHOOK_URL=url)[1:]
    finally:
        server.close()
    shown += run_cli(alert_env, capsys, "alerts", "notifications", "resend", "--all", ALERT_WEBHOOK_URL=url)[1:]
    for listing in (["list"], ["list", "--json"]):
        shown += run_cli(alert_env, capsys, "alerts", "notifications", *listing)[1:]
    code, out, err = run_cli(alert_env, capsys, "alerts", "evaluate", ALERT_WEBHOOK_URL="ftp" + url[4:])
    assert code == 2 and "/services/T000/B000/***" in err
    shown += [out, err, *logged, caplog.text]
    assert any("refused" in text.lower() for text in shown)  # the down webhook was tried
    for text in shown:
        assert PATH_TOKEN not in text, text
