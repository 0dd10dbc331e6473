"""Alert evaluation: pure logic, then real PostgreSQL (database ``forecast_test_alerts``, its own so
parallel runs on ``forecast_test`` are not disturbed), a local HTTP server as the webhook, and the
sensors evaluated the way Dagster does (``build_sensor_context`` on a real ephemeral instance)."""

import argparse
import dataclasses
import datetime as dt
import http.server
import json
import math
import os
import threading
import time

import pytest
import sqlalchemy as sa
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    DagsterInstance,
    Failure,
    Output,
    asset,
    build_sensor_context,
    materialize,
)

from forecast_pipeline.alerts import defaults, evaluate, notify, store
from forecast_pipeline.alerts.config import get_alert_settings, load_alert_settings
from forecast_pipeline.alerts.evaluate import AlertEvaluationError, Reading, decide, evaluate_threshold, extract_value
from forecast_pipeline.alerts.health import health_values
from forecast_pipeline.alerts.service import run_evaluation
from forecast_pipeline.app_db.alert_tables import alert_events, alert_notifications, alerts, devices, readings
from forecast_pipeline.app_db.metadata import app_metadata
from forecast_pipeline.app_db.schema import VERSION_TABLE
from forecast_pipeline.cli import alerts as alerts_cli
from forecast_pipeline.connections import make_engine
from forecast_pipeline.defs.alerts.sensors import (
    alert_evaluation_sensor,
    alert_notification_sensor,
    pipeline_health_sensor,
)
from forecast_pipeline.defs.forecasts.assets import ProductForecastsConfig
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.settings import ConfigError, load_settings
from forecast_pipeline_tests.conftest import POSTGRES_URL, _ensure_postgres_database, worker_database

ALERTS_DB_URL = worker_database(
    os.environ.get(
        "TEST_ALERTS_POSTGRES_URL",
        sa.engine.make_url(POSTGRES_URL).set(database="forecast_test_alerts").render_as_string(False),
    )
)
TABLES = [devices, readings, alerts, alert_events, alert_notifications]
NOW = dt.datetime(2025, 11, 10, 12, 0, tzinfo=dt.UTC)
OPS = (">", "<", "==", ">=", "<=", "!=")
# condition met for (below, at, above) the threshold
EXPECTED = {
    ">": (False, False, True),
    "<": (True, False, False),
    "==": (False, True, False),
    ">=": (False, True, True),
    "<=": (True, True, False),
    "!=": (True, False, True),
}

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def alerts_engine():
    _ensure_postgres_database(ALERTS_DB_URL)
    engine = make_engine(ALERTS_DB_URL)
    yield engine
    engine.dispose()


def _fresh(engine: sa.Engine) -> sa.Engine:
    """The alert tables as the release before migrations made them: the next upgrade adopts them.
    On PostgreSQL the whole schema goes: an earlier upgrade left the other tables and the queue's
    compatibility views, which the baseline cannot adopt (it would create forecast_jobs again)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
    else:
        app_metadata.drop_all(engine, tables=list(reversed(TABLES)), checkfirst=True)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    app_metadata.create_all(engine, tables=TABLES)
    return engine


@pytest.fixture
def db(alerts_engine):
    """Empty alert tables in the dedicated Postgres database."""
    return _fresh(alerts_engine)


@pytest.fixture
def sqlite_db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    yield _fresh(engine)
    engine.dispose()


def settings(**env: str):
    return load_alert_settings({"ALERT_WEBHOOK_BACKOFF_SECONDS": "0", **env})


class World:
    """Writes devices, alerts and readings."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def device(self, name: str, *, active: bool = True, poll: bool = True, kind: str = "sensor") -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                sa.insert(devices)
                .values(name=name, kind=kind, is_active=active, poll_enabled=poll)
                .returning(devices.c.id)
            ).scalar_one()

    def alert(self, device_id: int, metric: str, operator: str, threshold: float, path: str | None = None, **kw) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                sa.insert(alerts)
                .values(
                    device_id=device_id,
                    metric=metric,
                    operator=operator,
                    threshold_value=threshold,
                    value_path=path,
                    **kw,
                )
                .returning(alerts.c.id)
            ).scalar_one()

    def reading(self, device_id: int, metric: str, value=None, *, at: dt.datetime = NOW, json_value=None, meta=None):
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(readings).values(
                    device_id=device_id, metric=metric, value=value, json_value=json_value, metadata=meta, timestamp=at
                )
            )

    def events(self, alert_id: int | None = None) -> list[sa.Row]:
        query = sa.select(alert_events).order_by(alert_events.c.id)
        if alert_id is not None:
            query = query.where(alert_events.c.alert_id == alert_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def open_alert_ids(self) -> list[int]:
        with self.engine.connect() as conn:
            return sorted(r.alert_id for r in store.open_events(conn))

    def notifications(self) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(alert_notifications).order_by(alert_notifications.c.id)))

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.fixture
def world(db):
    return World(db)


class Webhook:
    """A local HTTP server on a free port: ``mode`` is "ok" (204), "down" (503), "reject" (404) or
    "slow" (answers after ``slow_seconds``)."""

    def __init__(self):
        self.mode = "ok"
        self.received: list[dict] = []
        self.attempts = 0
        self.slow_seconds = 1.0
        self.reject_ids: set[str] = set()
        self.gets = 0
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                hook.attempts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.mode == "slow":
                    time.sleep(hook.slow_seconds)
                if hook.mode in ("down", "reject"):
                    self.send_response(503 if hook.mode == "down" else 404)
                    self.end_headers()
                    return
                if hook.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", hook.url)
                    self.end_headers()
                    return
                if self.headers["X-Alert-Notification-Id"] in hook.reject_ids:
                    self.send_response(400)
                    self.end_headers()
                    return
                hook.received.append(
                    {
                        "body": json.loads(body),
                        "id": self.headers["X-Alert-Notification-Id"],
                        "content_type": self.headers["Content-Type"],
                    }
                )
                self.send_response(204)
                self.end_headers()

            def do_GET(self):  # noqa: N802 - a followed redirect would arrive here, body-less
                hook.gets += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def free_port_url() -> str:
    """A URL nothing listens on (connection refused)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/hook"


def reading_at(value=None, json_value=None, metadata=None, at=NOW) -> Reading:
    return Reading(1, "m", value, json_value, metadata, at)


# ---------------------------------------------------------------- pure logic


@pytest.mark.parametrize("operator", OPS)
def test_every_operator_below_at_and_above_its_threshold(operator):
    assert tuple(evaluate_threshold(v, operator, 10.0) for v in (9.5, 10.0, 10.5)) == EXPECTED[operator]
    # exact: 0.1 + 0.2 is the double just above 0.3, and compares as above it
    assert evaluate_threshold(0.1 + 0.2, operator, 0.3) == EXPECTED[operator][2]


def test_an_unknown_operator_is_an_evaluation_error():
    with pytest.raises(AlertEvaluationError, match="unknown operator '=>'"):
        evaluate_threshold(1.0, "=>", 1.0)


def test_values_come_from_value_json_value_or_metadata_along_a_path():
    assert extract_value(reading_at(85.2), None, NOW) == 85.2
    assert extract_value(reading_at(None, json_value=7), None, NOW) == 7.0
    doc = {"water": {"temp": 25.5, "probes": [{"ph": 8.1}, {"ph": "8.3"}]}, "on": True}
    r = reading_at(1.0, json_value=doc, metadata={"battery": {"level": 41}})
    assert extract_value(r, "water.temp", NOW) == 25.5
    assert extract_value(r, "json_value.water.probes.1.ph", NOW) == 8.3  # numeric strings are parsed
    assert extract_value(r, "on", NOW) == 1.0
    assert extract_value(r, "metadata.battery.level", NOW) == 41.0
    old = reading_at(1.0, at=NOW - dt.timedelta(days=9))
    assert extract_value(old, "$age", NOW) == 9 * 86400


@pytest.mark.parametrize(
    ("reading", "path", "message"),
    [
        (reading_at(None), None, "no numeric value"),
        (reading_at(None, json_value={"a": 1}), None, "no numeric value"),
        (reading_at(1.0, json_value={"a": "high"}), "a", "json_value.a is not numeric: 'high'"),
        (reading_at(1.0, json_value={"a": {"b": 1}}), "a", "json_value.a is not numeric: dict"),
        (reading_at(1.0, json_value={"a": 1}), "b", "path json_value.b not found"),
        (reading_at(1.0, json_value={"a": [1]}), "a.3", "no list item '3'"),
        (reading_at(1.0, json_value={"a": 1}), "a.b", "cannot look inside a int"),
        (reading_at(1.0, json_value={"a": 1}), "a..b", "bad path"),
        (reading_at(1.0), "metadata.x", "metadata is empty"),
        (reading_at(1.0, json_value={"a": float("nan")}), "a", "not a finite number"),
    ],
)
def test_a_bad_path_or_non_numeric_value_is_an_evaluation_error(reading, path, message):
    with pytest.raises(AlertEvaluationError, match=message.replace(".", r"\.").replace("(", r"\(")):
        extract_value(reading, path, NOW)


def test_decisions_cover_missing_inactive_stale_trigger_resolve():
    alert = evaluate.Alert(1, 5, "temp", ">", 82.0)
    src = evaluate.Source(5, "tank", True, True)
    fresh = Reading(9, "temp", 85.2, None, None, NOW - dt.timedelta(seconds=300))
    stale = Reading(9, "temp", 85.2, None, None, NOW - dt.timedelta(seconds=301))
    assert decide(alert, None, fresh, False, NOW, 300).action == evaluate.ERROR
    assert decide(alert, evaluate.Source(5, "tank", False, True), fresh, False, NOW, 300).action == evaluate.SKIP
    assert decide(alert, src, None, False, NOW, 300).action == evaluate.SKIP
    skipped = decide(alert, src, stale, False, NOW, 300)
    assert skipped.action == evaluate.SKIP and "301s old" in skipped.message
    # a non-polling source (e.g. the pipeline, one reading set per run) is judged on its latest
    assert decide(alert, evaluate.Source(5, "p", True, False), stale, False, NOW, 300).action == evaluate.TRIGGER
    triggered = decide(alert, src, fresh, False, NOW, 300)
    assert (triggered.action, triggered.value, triggered.message) == ("trigger", 85.2, "threshold crossed: 85.2 > 82")
    # every digit it was judged on: six significant ones said "threshold crossed: 1200 > 1200"
    close = Reading(9, "temp", 1200.004, None, None, NOW)
    at_1200 = dataclasses.replace(alert, threshold_value=1200.0)
    assert decide(at_1200, src, close, False, NOW, 300).message == "threshold crossed: 1200.004 > 1200"
    assert decide(alert, src, fresh, True, NOW, 300).action == evaluate.STILL_OPEN
    normal = Reading(9, "temp", 80.0, None, None, NOW)
    assert decide(alert, src, normal, True, NOW, 300).action == evaluate.RESOLVE
    assert decide(alert, src, normal, False, NOW, 300).action == evaluate.NORMAL


def test_stats_count_each_outcome_once():
    stats = evaluate.EvaluationStats()
    for action in ("trigger", "resolve", "still_open", "normal", "skip", "error", "trigger"):
        stats.count(evaluate.Decision(1, action, 1.0 if action not in ("skip", "error") else None))
    stats.count(evaluate.Decision(1, "trigger", 1.0), applied=False)
    figures = stats.as_dict()
    assert {k: figures[k] for k in ("total", "evaluated", "triggered", "resolved", "errors", "skipped")} == {
        "total": 8,
        "evaluated": 6,
        "triggered": 2,
        "resolved": 1,
        "errors": 1,
        "skipped": 1,
    }
    assert stats.summary().startswith("8 alerts: 6 evaluated, 2 triggered, 1 resolved, 1 errors, 1 skipped")


def test_config_defaults_and_errors_name_each_variable():
    s = load_alert_settings({})
    assert (s.freshness_seconds, s.webhook_url, s.webhook_timeout_seconds) == (300, None, 5.0)
    assert (s.webhook_backoff_seconds, s.webhook_max_backoff_seconds, s.webhook_refusal_grace_seconds) == (5, 60, 3600)
    assert (s.clock_skew_seconds, s.retention_days, s.notify_batch) == (60, 30, 5000)
    assert not s.notifications_enabled
    with pytest.raises(ConfigError) as info:
        load_alert_settings(
            {
                "ALERT_FRESHNESS_SECONDS": "5m",
                "ALERT_WEBHOOK_URL": "ftp://user:secret@host/x",
                "ALERT_WEBHOOK_TIMEOUT_SECONDS": "nan",
                "ALERT_WEBHOOK_MAX_BACKOFF_SECONDS": "0",
                "ALERT_CLOCK_SKEW_SECONDS": "-1",
                "ALERT_RETENTION_DAYS": "0",
            }
        )
    text = str(info.value)
    assert "ALERT_FRESHNESS_SECONDS='5m' is not a whole number" in text
    assert "ALERT_WEBHOOK_URL=" in text and "must be an http:// or https:// URL" in text and "secret" not in text
    assert "ALERT_WEBHOOK_TIMEOUT_SECONDS=nan must be between" in text
    assert "ALERT_WEBHOOK_MAX_BACKOFF_SECONDS=0.0 must be between 1 and 3600" in text
    assert "ALERT_CLOCK_SKEW_SECONDS=-1 must be between 0 and 86400" in text
    assert "ALERT_RETENTION_DAYS=0 must be between 1 and 36500" in text
    # an attempt must fit in a delivery tick
    with pytest.raises(ConfigError, match="ALERT_WEBHOOK_TIMEOUT_SECONDS=31.0 must be between 0.1 and 30"):
        load_alert_settings({"ALERT_WEBHOOK_TIMEOUT_SECONDS": "31"})


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "delivered"), (204, "delivered"), (None, "retry"), (408, "retry"), (425, "retry"), (429, "retry")]
    + [(s, "retry") for s in (500, 501, 502, 503, 504, 520, 521, 522, 523, 524, 599)]
    + [(s, "refused") for s in (301, 302, 303, 307, 308, 401, 403, 404, 407)]
    + [(s, "dead") for s in (400, 405, 406, 409, 410, 411, 413, 414, 415, 422, 451)],
)
def test_webhook_answers_are_classified(status, outcome):
    assert notify.classify(status) == outcome


@pytest.mark.parametrize("url", ["http://hooks.example:80a/x", "https://hooks.example:99999/x", "http://h:0/x"])
def test_a_webhook_url_whose_port_is_not_a_port_is_refused_at_load(url):
    """Accepted, it raised in every delivery pass outside the attempt: the claimed notifications
    stayed leased, and no dead letter said why."""
    with pytest.raises(ConfigError) as info:
        load_alert_settings({"ALERT_WEBHOOK_URL": url})
    assert "ALERT_WEBHOOK_URL=" in str(info.value) and "port" in str(info.value)


def test_backoff_doubles_up_to_its_cap_and_retry_after_is_read_both_ways():
    cfg = load_alert_settings({"ALERT_WEBHOOK_BACKOFF_SECONDS": "5", "ALERT_WEBHOOK_MAX_BACKOFF_SECONDS": "60"})
    assert [notify.backoff_seconds(cfg, n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert notify.backoff_seconds(cfg, 10_000) == 60
    assert notify.retry_after_seconds("120", NOW) == 120
    assert notify.retry_after_seconds("Mon, 10 Nov 2025 12:01:30 GMT", NOW) == 90
    assert notify.retry_after_seconds("86400", NOW) == notify.MAX_RETRY_AFTER_SECONDS
    assert notify.retry_after_seconds("soon", NOW) is None and notify.retry_after_seconds(None, NOW) is None


def test_post_once_sends_json_and_reports_the_status(webhook):
    assert notify.post_once(webhook.url, b'{"a": 1}', {"X-Alert-Notification-Id": "7"}, 2).status == 204
    assert webhook.received[-1] == {"body": {"a": 1}, "id": "7", "content_type": "application/json"}
    webhook.mode = "reject"
    answer = notify.post_once(webhook.url, b"{}", {"X-Alert-Notification-Id": "8"}, 2)
    assert (answer.status, answer.error) == (404, "HTTP 404 Not Found")
    webhook.mode, webhook.slow_seconds = "slow", 1.0
    started = time.monotonic()
    answer = notify.post_once(webhook.url, b"{}", {"X-Alert-Notification-Id": "9"}, 0.2)
    assert time.monotonic() - started < 0.8
    assert (answer.status, answer.error) == (None, "no complete answer within 0.2 s")
    refused = notify.post_once(free_port_url(), b"{}", {}, 2)
    assert refused.status is None and "refused" in refused.error.lower()


# ---------------------------------------------------------------- real Postgres


def test_every_operator_against_postgres_at_above_and_below(world):
    ids = {}
    for position, value in zip(("below", "at", "above"), (81.9, 82.0, 82.1), strict=True):
        device = world.device(f"tank-{position}")
        world.reading(device, "temp", value, at=NOW - dt.timedelta(seconds=10))
        for operator in OPS:
            ids[(operator, position)] = world.alert(device, "temp", operator, 82.0)
    result = run_evaluation(world.engine, settings(), now=NOW)
    opened = set(world.open_alert_ids())
    for operator in OPS:
        got = tuple(ids[(operator, p)] in opened for p in ("below", "at", "above"))
        assert got == EXPECTED[operator], operator
    expected_triggers = sum(sum(v) for v in EXPECTED.values())
    assert (result.stats.total, result.stats.evaluated, result.stats.triggered) == (18, 18, expected_triggers)
    event = world.events(ids[(">", "above")])[0]
    assert (event.current_value, event.threshold_value, event.operator, event.metric) == (82.1, 82.0, ">", "temp")
    assert event.is_resolved is False and event.device_id is not None and event.metadata["message"]


def test_stale_readings_are_skipped_with_a_configurable_window(world):
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0)
    world.reading(tank, "temp", 90.0, at=NOW - dt.timedelta(seconds=301))
    result = run_evaluation(world.engine, settings(), now=NOW)
    assert (result.stats.skipped, result.stats.evaluated, result.stats.triggered) == (1, 0, 0)
    assert world.events() == []
    # the latest reading counts, even if an older fresh-looking one was higher
    result = run_evaluation(world.engine, settings(ALERT_FRESHNESS_SECONDS="600"), now=NOW)
    assert result.stats.triggered == 1 and world.open_alert_ids() == [alert]


def test_trigger_then_no_duplicate_then_resolve_with_the_resolution_value(world):
    tank = world.device("Main Tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank too warm")
    world.reading(tank, "temp", 85.2, at=NOW)
    first = run_evaluation(world.engine, settings(), now=NOW)
    assert first.stats.triggered == 1 and "threshold crossed: 85.2 > 82" in first.outcomes[0].line()
    world.reading(tank, "temp", 86.0, at=NOW + dt.timedelta(seconds=30))
    second = run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(seconds=30))
    assert (second.stats.triggered, second.stats.evaluated) == (0, 1)
    assert second.outcomes[0].decision.action == "still_open"
    assert len(world.events(alert)) == 1
    world.reading(tank, "temp", 81.5, at=NOW + dt.timedelta(seconds=60))
    third = run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(seconds=60))
    assert third.stats.resolved == 1
    [event] = world.events(alert)
    assert event.is_resolved is True and event.resolution_value == 81.5 and event.current_value == 85.2
    assert event.resolved_at == NOW + dt.timedelta(seconds=60)
    # crossing again opens a new event; the resolved one stays as history
    world.reading(tank, "temp", 90.0, at=NOW + dt.timedelta(seconds=90))
    run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(seconds=90))
    assert [e.is_resolved for e in world.events(alert)] == [True, False]


def test_a_reading_within_the_threshold_says_normal_once(world):
    tank = world.device("Main Tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank too warm")
    world.reading(tank, "temp", 70.0, at=NOW)
    [outcome] = run_evaluation(world.engine, settings(), now=NOW).outcomes
    assert outcome.line() == f"alert {alert} [tank too warm]: normal: not 70 > 82"


def test_the_database_refuses_a_second_open_event_for_an_alert(world):
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0)
    row = {"alert_id": alert, "device_id": tank, "threshold_value": 82, "operator": ">", "metric": "temp"}
    with world.engine.begin() as conn:
        conn.execute(sa.insert(alert_events).values(**row, is_resolved=False))
    with pytest.raises(sa.exc.IntegrityError, match="uq_alert_events_open"), world.engine.begin() as conn:
        conn.execute(sa.insert(alert_events).values(**row, is_resolved=False))
    with world.engine.begin() as conn:  # resolved ones are not limited
        conn.execute(sa.insert(alert_events), [{**row, "is_resolved": True}] * 2)


def test_one_bad_alert_is_logged_and_skipped_and_the_rest_go_on(world):
    tank = world.device("tank")
    world.reading(tank, "temp", 85.0, json_value={"probe": "broken"}, meta={"battery": 12})
    good = world.alert(tank, "temp", ">", 82.0)
    missing_source = world.alert(9999, "temp", ">", 82.0)
    non_numeric = world.alert(tank, "temp", ">", 1.0, path="probe")
    bad_path = world.alert(tank, "temp", ">", 1.0, path="metadata.nowhere")
    by_metadata = world.alert(tank, "temp", "<", 20.0, path="metadata.battery")
    lines = []
    result = run_evaluation(world.engine, settings(), now=NOW, log=lambda level, m: lines.append((level, m)))
    assert (result.stats.total, result.stats.errors, result.stats.evaluated, result.stats.triggered) == (5, 3, 2, 2)
    assert world.open_alert_ids() == [good, by_metadata]
    messages = {o.alert_id: o.decision.message for o in result.outcomes}
    assert messages[missing_source] == "source 9999 does not exist"
    assert "json_value.probe is not numeric: 'broken'" in messages[non_numeric]
    assert "path metadata.nowhere not found" in messages[bad_path]
    assert [level for level, m in lines if "does not exist" in m] == ["warning"]


def test_a_disabled_alert_or_inactive_source_is_not_evaluated(world):
    on, off = world.device("on"), world.device("off", active=False)
    world.reading(on, "temp", 99.0)
    world.reading(off, "temp", 99.0)
    world.alert(on, "temp", ">", 1.0, is_enabled=False)
    world.alert(off, "temp", ">", 1.0)
    result = run_evaluation(world.engine, settings(), now=NOW)
    assert (result.stats.total, result.stats.skipped, result.stats.triggered) == (1, 1, 0)
    assert world.events() == []


def test_two_transactions_inserting_at_once_leave_exactly_one_open_event(world):
    """The race at its narrowest: B inserts while A's insert is uncommitted; B waits, then yields."""
    tank = world.device("tank")
    alert_id = world.alert(tank, "temp", ">", 82.0)
    world.reading(tank, "temp", 90.0)
    with world.engine.connect() as conn:
        [item] = store.load_inputs(conn)
    decision = decide(item.alert, item.source, item.reading, False, NOW, 300)
    a_inserted, results = threading.Event(), {}

    def evaluator_a():
        with world.engine.begin() as conn:
            results["a"] = store.create_event(conn, item, decision, NOW)
            a_inserted.set()
            time.sleep(0.5)  # hold the uncommitted row while B tries

    def evaluator_b():
        a_inserted.wait(5)
        started = time.monotonic()
        with world.engine.begin() as conn:
            results["b"] = store.create_event(conn, item, decision, NOW)
        results["b_waited"] = time.monotonic() - started

    threads = [threading.Thread(target=evaluator_a), threading.Thread(target=evaluator_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results["a"] is not None and results["b"] is None
    assert results["b_waited"] >= 0.3  # B really ran into A's uncommitted insert
    assert world.open_alert_ids() == [alert_id]
    assert [n.kind for n in world.notifications()] == ["triggered"]


def test_racing_evaluators_produce_exactly_one_open_event_per_alert(world):
    """Two full evaluations started together, ten rounds of trigger and resolve over 30 alerts."""
    sources = [world.device(f"tank-{i}") for i in range(30)]
    ids = [world.alert(s, "temp", ">", 82.0) for s in sources]
    engines = [make_engine(ALERTS_DB_URL), make_engine(ALERTS_DB_URL)]
    cfg = settings(ALERT_WEBHOOK_URL=free_port_url(), ALERT_NOTIFY_BATCH="1")  # queue notifications too
    lost = []  # decisions the other evaluator applied first: proof that the two really raced
    try:
        for round_ in range(10):
            at = NOW + dt.timedelta(minutes=round_)
            value = 90.0 if round_ % 2 == 0 else 70.0
            for s in sources:
                world.reading(s, "temp", value, at=at)
            barrier, stats = threading.Barrier(2), []

            def evaluator(engine, at=at, barrier=barrier, stats=stats, lost=lost):
                barrier.wait()
                result = run_evaluation(engine, cfg, now=at)
                stats.append(result.stats)
                lost.extend(o for o in result.outcomes if "another evaluator" in o.decision.message)

            threads = [threading.Thread(target=evaluator, args=(e,)) for e in engines]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(stats) == 2 and all(s.errors == 0 for s in stats)
            if value > 82:
                assert world.open_alert_ids() == ids
                assert sum(s.triggered for s in stats) == 30
            else:
                assert world.open_alert_ids() == []
                assert sum(s.resolved for s in stats) == 30
    finally:
        for e in engines:
            e.dispose()
    assert world.count(alert_events) == 30 * 5
    kinds = [n.kind for n in world.notifications()]
    assert (kinds.count("triggered"), kinds.count("resolved")) == (150, 150)  # one per change, none twice
    assert len(lost) > 0


def test_the_webhook_down_and_back_loses_no_event(world, webhook):
    tank = world.device("Main Tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank too warm")
    cfg = load_alert_settings({"ALERT_WEBHOOK_URL": webhook.url, "ALERT_WEBHOOK_TIMEOUT_SECONDS": "2"})
    webhook.mode = "down"
    world.reading(tank, "temp", 85.2, at=NOW)
    first = run_evaluation(world.engine, cfg, now=NOW)
    assert first.stats.triggered == 1
    assert (first.stats.notifications_sent, first.stats.notifications_failed, first.stats.notifications_pending) == (
        0,
        1,
        1,
    )
    assert webhook.attempts == 1
    [pending] = world.notifications()
    assert pending.sent_at is None and pending.attempts == 1 and "HTTP 503" in pending.last_error
    assert pending.next_attempt_at == NOW + dt.timedelta(seconds=5)  # the first backoff
    # still down while the value returns to normal: the resolution queues behind the trigger
    world.reading(tank, "temp", 80.0, at=NOW + dt.timedelta(seconds=30))
    second = run_evaluation(world.engine, cfg, now=NOW + dt.timedelta(seconds=30))
    assert second.stats.resolved == 1 and second.stats.notifications_pending == 2
    assert webhook.received == [] and webhook.attempts == 2  # the trigger again, not the resolution
    # back up: the trigger waits out its backoff (10 s after the second failure), then both go, in order, once
    webhook.mode = "ok"
    waiting = run_evaluation(world.engine, cfg, now=NOW + dt.timedelta(seconds=35))
    assert (waiting.stats.notifications_sent, waiting.stats.notifications_pending) == (0, 2)
    third = run_evaluation(world.engine, cfg, now=NOW + dt.timedelta(seconds=40))
    assert (third.stats.notifications_sent, third.stats.notifications_pending) == (2, 0)
    assert [r["body"]["type"] for r in webhook.received] == ["alert.triggered", "alert.resolved"]
    triggered, resolved = (r["body"]["event"] for r in webhook.received)
    assert triggered["alert_id"] == alert and triggered["current_value"] == 85.2
    assert triggered["device_name"] == "Main Tank" and triggered["alert_name"] == "tank too warm"
    assert resolved["is_resolved"] is True and resolved["resolution_value"] == 80.0
    assert [int(r["id"]) for r in webhook.received] == [n.id for n in world.notifications()]
    assert all(n.sent_at is not None for n in world.notifications())
    run_evaluation(world.engine, cfg, now=NOW + dt.timedelta(seconds=120))
    assert len(webhook.received) == 2  # nothing sent twice


def test_an_unreachable_webhook_keeps_the_event_and_its_notification(world):
    tank = world.device("tank")
    world.alert(tank, "temp", ">", 82.0)
    world.reading(tank, "temp", 99.0)
    result = run_evaluation(world.engine, settings(ALERT_WEBHOOK_URL=free_port_url()), now=NOW)
    assert result.stats.triggered == 1 and result.stats.notifications_failed == 1
    [n] = world.notifications()
    assert n.sent_at is None and n.rejected_at is None and "refused" in n.last_error.lower()
    assert len(world.events()) == 1


def test_without_a_webhook_the_outbox_still_fills(world):
    tank = world.device("tank")
    world.alert(tank, "temp", ">", 82.0)
    world.reading(tank, "temp", 99.0)
    result = run_evaluation(world.engine, settings(), now=NOW)
    assert result.stats.triggered == 1 and result.stats.notifications_sent == 0
    [n] = world.notifications()
    assert (n.kind, n.attempts, n.sent_at) == ("triggered", 0, None)


def test_the_same_evaluation_on_sqlite(sqlite_db):
    w = World(sqlite_db)
    tank = w.device("tank")
    alert = w.alert(tank, "temp", ">=", 82.0)
    w.reading(tank, "temp", 82.0, at=NOW - dt.timedelta(seconds=5))
    assert run_evaluation(sqlite_db, settings(), now=NOW).stats.triggered == 1
    assert run_evaluation(sqlite_db, settings(), now=NOW).stats.triggered == 0
    w.reading(tank, "temp", 81.0, at=NOW)
    assert run_evaluation(sqlite_db, settings(), now=NOW).stats.resolved == 1
    [event] = w.events(alert)
    assert event.is_resolved and event.resolution_value == 81.0
    w.reading(tank, "temp", 99.0, at=NOW - dt.timedelta(seconds=301))
    assert run_evaluation(sqlite_db, settings(), now=NOW).stats.skipped == 0  # the 81.0 one is latest


def test_on_sqlite_whole_second_and_microsecond_timestamps_order_by_time(sqlite_db):
    """SQLite keeps timestamps as text: the app writes them with microseconds, a source relying on
    the column's default (CURRENT_TIMESTAMP) without. Compared as text, the latest reading and
    the clock-skew cut-off still go by time (a shorter string sorts before its own extensions)."""
    w = World(sqlite_db)
    tank = w.device("tank")
    alert = w.alert(tank, "temp", ">", 82.0)

    def by_default(value: float, at: dt.datetime) -> None:  # as CURRENT_TIMESTAMP writes it
        with sqlite_db.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO readings (device_id, metric, value, timestamp) VALUES (?, 'temp', ?, ?)",
                (tank, value, at.strftime("%Y-%m-%d %H:%M:%S")),
            )

    half = dt.timedelta(milliseconds=500)
    w.reading(tank, "temp", 99.0, at=NOW - half)  # '11:59:59.500000'
    by_default(50.0, NOW)  # '12:00:00': later, so the latest
    assert run_evaluation(sqlite_db, settings(), now=NOW + half).outcomes[0].decision.action == "normal"
    w.reading(tank, "temp", 99.0, at=NOW + half)  # '12:00:00.500000': later than '12:00:00'
    assert run_evaluation(sqlite_db, settings(), now=NOW + half).stats.triggered == 1
    by_default(10.0, NOW + dt.timedelta(seconds=61))  # '12:01:01': past the 60 s skew at 12:00:00.5
    result = run_evaluation(sqlite_db, settings(), now=NOW + half)
    assert (result.stats.future_readings, result.outcomes[0].decision.action) == (1, "still_open")
    assert w.open_alert_ids() == [alert]


# ---------------------------------------------------------------- defaults, health, sensors, CLI


def test_defaults_are_seeded_once_and_user_changes_are_kept(world):
    with world.engine.begin() as conn:
        assert len(defaults.ensure_defaults(conn)) == 3
    with world.engine.begin() as conn:
        conn.execute(sa.update(alerts).where(alerts.c.metric == "failure_rate").values(threshold_value=0.1))
        assert defaults.ensure_defaults(conn) == []
    with world.engine.connect() as conn:
        rows = {r.metric: r for r in conn.execute(sa.select(alerts))}
        source = conn.execute(sa.select(devices)).one()
    assert (source.name, source.kind, source.poll_enabled) == ("forecast_pipeline", "pipeline", False)
    assert {m: (r.operator, r.threshold_value, r.value_path) for m, r in rows.items()} == {
        "failure_rate": (">", 0.1, None),
        "elapsed_seconds": (">", 1200.0, None),
        "last_run_age_seconds": (">", 8 * 86400.0, "$age"),
    }


@pytest.fixture
def alert_env(monkeypatch):
    """The sensors read ALERT_* from the environment, once: reset around each test."""
    get_alert_settings.cache_clear()
    monkeypatch.setenv("ALERT_WEBHOOK_BACKOFF_SECONDS", "0")
    yield monkeypatch
    get_alert_settings.cache_clear()


def test_the_sensor_evaluates_logs_and_reports_its_figures(world, alert_env, webhook):
    alert_env.setenv("ALERT_WEBHOOK_URL", webhook.url)
    tank = world.device("tank")
    world.alert(tank, "temp", ">", 82.0)
    world.alert(tank, "temp", "<", 20.0)
    world.alert(4242, "temp", "<", 20.0)
    world.reading(tank, "temp", 85.0, at=dt.datetime.now(dt.UTC))
    with DagsterInstance.ephemeral() as instance:
        resources = {"app_db": AppDatabase(url=ALERTS_DB_URL)}
        with build_sensor_context(instance=instance, resources=resources) as context:
            result = alert_evaluation_sensor(context)
    assert result.run_requests in (None, [])
    reason = result.skip_reason.skip_message
    assert reason.startswith("Alert evaluation: 3 alerts: 2 evaluated, 1 triggered, 0 resolved, 1 errors, 0 skipped")
    assert "notifications" not in reason  # the delivery sensor sends them
    figures = json.loads(result.cursor)
    assert {k: figures[k] for k in ("total", "evaluated", "triggered", "resolved", "errors", "skipped")} == {
        "total": 3,
        "evaluated": 2,
        "triggered": 1,
        "resolved": 0,
        "errors": 1,
        "skipped": 0,
    }
    assert webhook.received == [] and len(world.events()) == 1 and len(world.notifications()) == 1


def _tick(sensor) -> str:
    """One tick of ``sensor`` on a real (ephemeral) instance, as the daemon runs it; its skip reason."""
    with DagsterInstance.ephemeral() as instance:
        resources = {"app_db": AppDatabase(url=ALERTS_DB_URL)}
        with build_sensor_context(instance=instance, resources=resources) as context:
            return sensor(context).skip_reason.skip_message


def test_disabling_an_alert_closes_its_open_event_and_tells_the_receiver_why(world, alert_env, webhook):
    """Nothing evaluates a disabled alert, so its open event would stay open for ever (and the
    receiver's incident with it): the next evaluation closes it, marked resolved because the
    alert was disabled (no value ended it), and queues the resolution like any other. Once."""
    alert_env.setenv("ALERT_WEBHOOK_URL", webhook.url)
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank too warm")
    world.reading(tank, "temp", 85.0, at=dt.datetime.now(dt.UTC))
    assert "1 triggered" in _tick(alert_evaluation_sensor)
    with world.engine.begin() as conn:
        conn.execute(sa.update(alerts).where(alerts.c.id == alert).values(is_enabled=False))

    reason = _tick(alert_evaluation_sensor)
    [event] = world.events(alert)
    assert (event.is_resolved, event.resolution_value) == (True, None) and event.resolved_at is not None
    assert "1 open event(s) closed (alert disabled or changed, or source inactive)" in reason
    assert event.metadata["resolved_reason"] == "alert_disabled"
    assert "closed" not in _tick(alert_evaluation_sensor)  # once
    assert [n.kind for n in world.notifications()] == ["triggered", "resolved"]
    _tick(alert_notification_sensor)
    assert [r["body"]["type"] for r in webhook.received] == ["alert.triggered", "alert.resolved"]
    assert webhook.received[1]["body"]["event"]["metadata"]["resolved_reason"] == "alert_disabled"

    with world.engine.begin() as conn:  # enabled again, still over the threshold: a new event
        conn.execute(sa.update(alerts).where(alerts.c.id == alert).values(is_enabled=True))
    assert "1 triggered" in _tick(alert_evaluation_sensor)
    assert world.open_alert_ids() == [alert] and len(world.events(alert)) == 2


def tank_too_warm(world) -> tuple[int, int]:
    """A source "tank" whose alert "temp > 82" has an open event (a reading of 85, evaluated)."""
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank too warm")
    world.reading(tank, "temp", 85.0, at=NOW)
    run_evaluation(world.engine, settings(), now=NOW)
    return tank, alert


def test_an_open_event_of_a_source_made_inactive_is_closed_saying_why(world):
    """Nothing evaluates the alerts of an inactive source, so its open event stayed open for ever,
    with the receiver's incident (found by a hunting helper), as a disabled alert's did."""
    tank, alert = tank_too_warm(world)
    with world.engine.begin() as conn:
        conn.execute(sa.update(devices).where(devices.c.id == tank).values(is_active=False))
    result = run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(minutes=1))
    assert world.open_alert_ids() == [] and result.stats.closed_disabled == 1
    [event] = world.events(alert)
    assert event.metadata["resolved_reason"] == "source_inactive" and event.resolution_value is None
    assert [n.kind for n in world.notifications()] == ["triggered", "resolved"]


def test_an_alert_whose_rule_changed_while_its_event_was_open_closes_it_and_judges_afresh(world):
    """Edited from "> 82" to "< 20" while open at 86, the event was resolved by the new rule and the
    receiver told "temp > 82 resolved at 86" (found by a hunting helper). It is closed as
    alert_changed, with no value, and the new rule judges the reading in the same pass."""
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank")
    world.reading(tank, "temp", 86.0, at=NOW)
    run_evaluation(world.engine, settings(), now=NOW)
    with world.engine.begin() as conn:
        conn.execute(sa.update(alerts).where(alerts.c.id == alert).values(operator=">", threshold_value=84.0))
    run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(minutes=1))
    first, second = world.events(alert)
    assert (first.is_resolved, first.resolution_value) == (True, None)
    assert first.metadata["resolved_reason"] == "alert_changed"
    assert (second.is_resolved, second.threshold_value, second.current_value) == (False, 84.0, 86.0)
    with world.engine.begin() as conn:
        conn.execute(sa.update(alerts).where(alerts.c.id == alert).values(operator="<", threshold_value=20.0))
    run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(minutes=2))
    assert world.open_alert_ids() == [] and world.events(alert)[1].metadata["resolved_reason"] == "alert_changed"


@pytest.mark.parametrize("database", ["db", "sqlite_db"])
def test_a_slow_evaluator_never_acts_on_a_reading_another_one_has_seen_superseded(database, request):
    """Evaluator A loads the alerts and stalls; B triggers on 85, a reading of 70 arrives and B
    resolves. A then opened a second event on its 85, left open on a series now at 70, with a
    second trigger sent (found by a hunting helper). A's decision is checked against the latest
    reading and the alert as they are when it writes."""
    from forecast_pipeline.alerts import service

    world = World(request.getfixturevalue(database))
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0, name="tank")
    world.reading(tank, "temp", 85.0, at=NOW)
    with world.engine.connect() as conn:
        [slow] = store.load_inputs(conn, NOW)
    run_evaluation(world.engine, settings(), now=NOW)  # B triggers
    world.reading(tank, "temp", 70.0, at=NOW + dt.timedelta(seconds=30))
    run_evaluation(world.engine, settings(), now=NOW + dt.timedelta(seconds=40))  # B resolves
    decision = decide(slow.alert, slow.source, slow.reading, False, NOW, 300)
    assert decision.action == evaluate.TRIGGER
    outcome = service.Outcome(alert, "tank", "tank", "temp", decision)
    service._apply(world.engine, slow, outcome, NOW + dt.timedelta(seconds=50), NOW + dt.timedelta(minutes=5))
    assert not outcome.applied and outcome.decision.action == evaluate.SKIP
    assert "newer reading" in outcome.decision.message
    assert world.open_alert_ids() == [] and len(world.events(alert)) == 1
    assert [n.kind for n in world.notifications()] == ["triggered", "resolved"]


def test_an_alert_enabled_again_before_its_event_is_closed_keeps_the_event_open(world):
    """Another evaluator, or an operator, may enable the alert between reading the disabled
    alerts' open events and closing one: the close then leaves it (the alert is evaluated again)."""
    tank, alert = tank_too_warm(world)
    with world.engine.begin() as conn:
        conn.execute(sa.update(alerts).where(alerts.c.id == alert).values(is_enabled=False))
        [event] = store.orphaned_open_events(conn)
        conn.execute(sa.update(alerts).where(alerts.c.id == alert).values(is_enabled=True))
        assert store.close_orphaned_event(conn, event.id, event.reason, NOW) is False
    assert world.open_alert_ids() == [alert] and [n.kind for n in world.notifications()] == ["triggered"]


def test_the_sensor_skips_with_a_reason_when_the_tables_are_missing(tmp_path, alert_env):
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(instance=instance, resources={"app_db": AppDatabase(url=url)}) as context:
            result = alert_evaluation_sensor(context)
        with build_sensor_context(instance=instance, resources={"app_db": AppDatabase(url=url)}) as context:
            health = pipeline_health_sensor(context)
    reason = result.skip_reason.skip_message
    assert reason.startswith("Alert tables missing in sqlite:///") and "forecast-pipeline alerts init" in reason
    assert "devices, readings, alerts, alert_events, alert_notifications" in reason
    assert "forecast-pipeline alerts init" in health.skip_reason.skip_message and health.cursor is None


@asset(name="product_forecasts")
def stub_forecasts(context: AssetExecutionContext, config: ProductForecastsConfig):
    """Stands in for the real asset: same key, config and figure names; like it, records the
    figures as an observation and, over the 5% limit, fails without materializing."""
    failed = int(os.environ.get("STUB_FAILED", "0"))
    figures = {
        "total_products": 200,
        "successful": 190 - failed,
        "failed": failed,
        "no_forecast": 10,
        "failure_rate": round(failed / 200, 4),
        "compute_seconds": 1.5,
    }
    context.log_event(AssetObservation(asset_key=context.asset_key, metadata=figures))
    if failed / 200 > 0.05:
        raise Failure(description=f"{failed} of 200 products failed: nothing was published")
    # as the Redis IO manager records it: False for a backfill of a date older than the one cached
    newest = os.environ.get("STUB_OLDER_DATE") != "1"
    return Output(None, metadata={**figures, "last_run_updated": newest})


def test_pipeline_health_readings_feed_the_default_alerts(world, alert_env):
    app_db = AppDatabase(url=ALERTS_DB_URL)
    with DagsterInstance.ephemeral() as instance:

        def tick(sensor, cursor=None):
            with build_sensor_context(instance=instance, cursor=cursor, resources={"app_db": app_db}) as context:
                return sensor(context)

        empty = tick(pipeline_health_sensor)
        assert empty.skip_reason.skip_message == "No new product_forecasts run figures" and empty.cursor == "0"
        alert_env.setenv("STUB_FAILED", "20")  # 10% of the products failed: the run fails, publishing nothing
        assert not materialize([stub_forecasts], instance=instance, raise_on_error=False).success
        first = tick(pipeline_health_sensor, empty.cursor)
        assert "Recorded pipeline health of 1 forecast run" in first.skip_reason.skip_message
        with world.engine.connect() as conn:
            values = dict(conn.execute(sa.select(readings.c.metric, readings.c.value)).all())
        assert values["failure_rate"] == 0.1 and values["no_forecast_rate"] == 0.05
        assert 0 < values["elapsed_seconds"] < 60
        # it published nothing: the age of the last published forecasts is not reset by it
        assert "last_run_age_seconds" not in values
        assert world.count(alerts) == 3  # the defaults were seeded with the first readings

        result = tick(alert_evaluation_sensor)
        assert json.loads(result.cursor)["triggered"] == 1
        [event] = world.events()
        assert (event.metric, event.current_value, event.threshold_value) == ("failure_rate", 0.1, 0.05)

        # nothing new: the cursor holds; a run limited to chosen products is ignored
        assert "No new" in tick(pipeline_health_sensor, first.cursor).skip_reason.skip_message
        alert_env.setenv("STUB_FAILED", "0")
        config = {"ops": {"product_forecasts": {"config": {"product_ids": [1]}}}}
        assert materialize([stub_forecasts], instance=instance, run_config=config).success
        limited = tick(pipeline_health_sensor, first.cursor)
        assert "ignored 1 run(s) limited to chosen products" in limited.skip_reason.skip_message
        assert world.count(readings) == 3

        # a healthy full run resolves the failure-rate event
        assert materialize([stub_forecasts], instance=instance).success
        assert "Recorded pipeline health of 1" in tick(pipeline_health_sensor, limited.cursor).skip_reason.skip_message
        assert json.loads(tick(alert_evaluation_sensor).cursor)["resolved"] == 1
        assert world.events()[0].resolution_value == 0.0
        healthy = tick(pipeline_health_sensor, limited.cursor).cursor

        # a later run that publishes nothing leaves the healthy run's age reading the newest
        alert_env.setenv("STUB_FAILED", "20")
        assert not materialize([stub_forecasts], instance=instance, raise_on_error=False).success
        unpublished = tick(pipeline_health_sensor, healthy)
        assert "Recorded pipeline health of 1" in unpublished.skip_reason.skip_message
        with world.engine.connect() as conn:
            ages = conn.execute(sa.select(readings.c.value).where(readings.c.metric == "last_run_age_seconds")).all()
        assert len(ages) == 1

        # a backfill of an older date publishes that date but leaves the cache's newest date (and
        # last_run) as they were: the cache is as stale as before, so the age is not reset either
        alert_env.setenv("STUB_FAILED", "0")
        alert_env.setenv("STUB_OLDER_DATE", "1")
        assert materialize([stub_forecasts], instance=instance).success
        older = tick(pipeline_health_sensor, unpublished.cursor).skip_reason.skip_message
        assert "Recorded pipeline health of 1" in older and "last_run_age_seconds" not in older
        with world.engine.connect() as conn:
            ages = conn.execute(sa.select(readings.c.value).where(readings.c.metric == "last_run_age_seconds")).all()
        assert len(ages) == 1

    # the age of the last run is computed at evaluation time: 9 days later, the 8-day alert fires
    later = run_evaluation(world.engine, settings(), now=dt.datetime.now(dt.UTC) + dt.timedelta(days=9))
    [age] = [o for o in later.outcomes if o.metric == "last_run_age_seconds"]
    assert age.decision.action == "trigger" and age.decision.value > 8 * 86400


def test_the_failure_rate_reading_is_the_gates_exact_rate_of_the_whole_run():
    """The gate failed 51 of 1,019 (5.0049% > 5%), but the reading was the observation's rate
    rounded to 0.05, not above the alert's 0.05; and a range run's gate judges the whole run while
    each date's observation gave its own rate, the last date's deciding (found by a hunting helper)."""
    assert health_values({"total_products": 1019, "failed": 51, "failure_rate": 0.05}, None)["failure_rate"] > 0.05
    day = {"total_products": 200, "failed": 0, "failure_rate": 0.0, "run_total_products": 400, "run_failed": 40}
    assert health_values(day, None)["failure_rate"] == 0.1


PUBLISHING = threading.Event()  # set by the test: the stub below then finishes its publish


@asset(name="product_forecasts")
def slow_publish_forecasts(context: AssetExecutionContext):
    """Records its figures, then publishes only when the test lets it (a long publish)."""
    context.log_event(AssetObservation(asset_key=context.asset_key, metadata={"total_products": 5, "failed": 0}))
    assert PUBLISHING.wait(60)
    return Output(None)


def test_a_run_still_publishing_is_recorded_once_it_finishes(world):
    """The figures are observed before the publish; a tick in between must neither say the run
    published nothing (no last-run age) nor skip it for good."""
    app_db = AppDatabase(url=ALERTS_DB_URL)
    PUBLISHING.clear()
    with DagsterInstance.ephemeral() as instance:

        def tick(cursor):
            with build_sensor_context(instance=instance, cursor=cursor, resources={"app_db": app_db}) as context:
                return pipeline_health_sensor(context)

        start = tick(None).cursor
        running = threading.Thread(target=materialize, args=([slow_publish_forecasts],), kwargs={"instance": instance})
        running.start()
        try:
            deadline = time.monotonic() + 30
            while not instance.fetch_observations(AssetKey("product_forecasts"), limit=1).records:
                assert time.monotonic() < deadline, "the run never recorded its figures"
                time.sleep(0.05)
            early = tick(start)
            assert "waiting for run" in early.skip_reason.skip_message and early.cursor == start
            assert world.count(readings) == 0
        finally:
            PUBLISHING.set()
            running.join(60)
        done = tick(early.cursor)
        assert "Recorded pipeline health of 1" in done.skip_reason.skip_message
        with world.engine.connect() as conn:
            metrics = set(conn.execute(sa.select(readings.c.metric)).scalars())
        assert "last_run_age_seconds" in metrics


def test_the_health_readings_are_written_once_per_materialization(world):
    when = NOW
    values = {"failure_rate": 0.01, "elapsed_seconds": 3.0, "no_forecast_rate": 0.0, "last_run_age_seconds": 0.0}
    from forecast_pipeline.alerts.health import record_pipeline_health

    with world.engine.begin() as conn:
        assert record_pipeline_health(conn, values, when, {"run_id": "r1"}) == 4
    with world.engine.begin() as conn:
        assert record_pipeline_health(conn, values, when, {"run_id": "r1"}) == 0
    assert world.count(readings) == 4


def test_the_alert_sensors_are_in_the_code_location():
    from forecast_pipeline.definitions import defs

    repo = defs().get_repository_def()
    evaluation = repo.get_sensor_def("alert_evaluation_sensor")
    assert evaluation.minimum_interval_seconds == 30
    assert evaluation.required_resource_keys == {"app_db"}
    assert repo.get_sensor_def("pipeline_health_sensor").required_resource_keys == {"app_db"}
    delivery = repo.get_sensor_def("alert_notification_sensor")
    retention = repo.get_sensor_def("alert_retention_sensor")
    assert (delivery.minimum_interval_seconds, retention.minimum_interval_seconds) == (15, 3600)
    assert delivery.required_resource_keys == retention.required_resource_keys == {"app_db"}


def _cli_args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    alerts_cli.add_alert_commands(parser.add_subparsers(dest="command"))
    argv = ["alerts", kw.pop("sub")] + [f"--{k.replace('_', '-')}" for k, v in kw.items() if v]
    return parser.parse_args(argv)


def test_cli_init_then_evaluate_dry_run_writes_nothing(db, capsys, monkeypatch):
    for name in ("ALERT_WEBHOOK_URL", "ALERT_FRESHNESS_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings_ = load_settings({"DATABASE_URL": ALERTS_DB_URL})
    args = _cli_args(sub="init")
    assert alerts_cli.ALERT_COMMANDS["alerts"](settings_, args) == 0
    assert alerts_cli.cmd_alerts(settings_, args) == 0  # safe to repeat
    out = capsys.readouterr().out
    assert "Created default alerts" in out and "already present" in out
    w = World(db)
    source = w.device("tank")
    w.alert(source, "temp", ">", 82.0)
    w.reading(source, "temp", 90.0, at=dt.datetime.now(dt.UTC))
    before = (w.count(alert_events), w.count(alert_notifications), w.count(readings))
    assert alerts_cli.cmd_alerts(settings_, _cli_args(sub="evaluate", dry_run=True)) == 0
    out = capsys.readouterr().out
    assert "would trigger" in out and out.strip().splitlines()[-1].startswith("Dry run (nothing written): 4 alerts")
    assert (w.count(alert_events), w.count(alert_notifications), w.count(readings)) == before
    assert alerts_cli.cmd_alerts(settings_, _cli_args(sub="evaluate", json=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stats"]["triggered"] == 1 and printed["dry_run"] is False
    assert {o["action"] for o in printed["outcomes"]} == {"trigger", "skip"}  # the pipeline has no reading yet
    assert w.count(alert_events) == 1


def test_cli_evaluate_exits_1_when_an_alert_errors(world, capsys, monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    world.alert(777, "temp", ">", 1.0)
    assert alerts_cli.cmd_alerts(load_settings({"DATABASE_URL": ALERTS_DB_URL}), _cli_args(sub="evaluate")) == 1
    assert "source 777 does not exist" in capsys.readouterr().out


def test_nan_is_never_a_reading_value():
    with pytest.raises(AlertEvaluationError):
        evaluate.to_number(math.inf, "value")


def test_a_redirect_is_not_followed_and_the_notification_is_kept(world, webhook):
    """urllib would follow a 302 with a body-less GET and report success: the event would be lost."""
    tank = world.device("tank")
    world.alert(tank, "temp", ">", 82.0)
    world.reading(tank, "temp", 99.0, at=NOW)
    webhook.mode = "redirect"
    result = run_evaluation(world.engine, settings(ALERT_WEBHOOK_URL=webhook.url), now=NOW)
    assert result.stats.notifications_failed == 1 and result.stats.notifications_sent == 0
    assert webhook.gets == 0 and webhook.received == []
    [n] = world.notifications()
    assert n.sent_at is None and n.rejected_at is None and n.refused_since == NOW and "302" in n.last_error


def test_a_rejected_notification_does_not_hold_back_the_next(world, webhook):
    tank = world.device("tank")
    first = world.alert(tank, "temp", ">", 82.0, name="warm")
    world.alert(tank, "temp", ">", 90.0, name="hot")
    world.reading(tank, "temp", 99.0, at=NOW)
    webhook.reject_ids = {"1"}  # fresh tables: the first notification queued gets id 1
    result = run_evaluation(world.engine, settings(ALERT_WEBHOOK_URL=webhook.url), now=NOW)
    assert (result.stats.notifications_sent, result.stats.notifications_dead_lettered) == (1, 1)
    assert (result.stats.notifications_failed, result.stats.notifications_pending) == (0, 0)
    rejected, sent = world.notifications()
    assert rejected.id == 1 and rejected.rejected_at is not None and "HTTP 400" in rejected.last_error
    assert sent.sent_at is not None and webhook.received[0]["body"]["event"]["alert_id"] != first


def test_init_adds_the_one_open_event_index_to_an_existing_table(db):
    """A pre-existing (legacy) alert_events table without the partial unique index gets it."""
    with db.begin() as conn:
        conn.execute(sa.text("DROP INDEX uq_alert_events_open"))
    assert "uq_alert_events_open" not in {i["name"] for i in sa.inspect(db).get_indexes("alert_events")}
    from forecast_pipeline.app_db.schema import upgrade_app_schema

    upgrade_app_schema(db)
    upgrade_app_schema(db)  # still safe to repeat
    assert "uq_alert_events_open" in {i["name"] for i in sa.inspect(db).get_indexes("alert_events")}


# ---------------------------------------------------------------- inputs: future readings, thresholds


def test_readings_dated_in_the_future_are_ignored_and_counted(world):
    """A reading from a clock far ahead would stay the latest for ever and hide every newer one."""
    tank = world.device("tank")
    alert = world.alert(tank, "temp", ">", 82.0)
    world.reading(tank, "temp", 70.0, at=NOW + dt.timedelta(days=365))  # a clock a year ahead
    world.reading(tank, "temp", 71.0, at=NOW + dt.timedelta(hours=2))
    world.reading(tank, "temp", 99.0, at=NOW + dt.timedelta(seconds=30))  # within the clock skew
    lines = []
    result = run_evaluation(
        world.engine, settings(), now=NOW, log=lambda level, message: lines.append((level, message))
    )
    assert (result.stats.triggered, result.stats.future_readings) == (1, 2)
    assert result.outcomes[0].decision.value == 99.0 and world.open_alert_ids() == [alert]
    assert json.loads(json.dumps(result.stats.as_dict()))["future_readings"] == 2
    assert any(level == "warning" and "2 reading(s) dated more than 60s ahead" in m for level, m in lines)
    # a wider skew accepts the reading two hours ahead as the latest
    wide = run_evaluation(world.engine, settings(ALERT_CLOCK_SKEW_SECONDS="10800"), now=NOW, dry_run=True)
    assert wide.outcomes[0].decision.value == 71.0 and wide.stats.future_readings == 1


def test_comparisons_are_exact():
    assert evaluate_threshold(1e10 + 5, ">", 1e10)
    assert not evaluate_threshold(1e10 + 5, "<=", 1e10)
    assert evaluate_threshold(1e10 + 5, "!=", 1e10) and not evaluate_threshold(1e10 + 5, "==", 1e10)
    assert evaluate_threshold(1e-12, ">", 0.0)
    assert evaluate_threshold(10**17 + 1, ">", 1e17)  # a whole number in JSON keeps every digit
    assert extract_value(reading_at(None, json_value={"n": 10**17 + 1}), "n", NOW) == 10**17 + 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_database_refuses_a_non_finite_threshold(world, sqlite_db, bad):
    tank = world.device("tank")
    with pytest.raises(sa.exc.IntegrityError, match="ck_alerts_threshold_finite"):
        world.alert(tank, "temp", ">", bad)
    with pytest.raises(sa.exc.IntegrityError):
        World(sqlite_db).alert(World(sqlite_db).device("tank"), "temp", ">", bad)
    world.alert(tank, "temp", ">", 1.7976931348623157e308)  # the largest finite double is fine


def test_an_existing_alerts_table_gets_the_finite_threshold_constraint(db):
    from forecast_pipeline.app_db.schema import upgrade_app_schema

    with db.begin() as conn:
        conn.execute(sa.text("ALTER TABLE alerts DROP CONSTRAINT ck_alerts_threshold_finite"))
    w = World(db)
    tank = w.device("tank")
    legacy = w.alert(tank, "temp", ">", math.nan)  # a row written before the constraint existed
    w.reading(tank, "temp", 99.0)
    upgrade_app_schema(db)
    upgrade_app_schema(db)  # safe to repeat
    with pytest.raises(sa.exc.IntegrityError, match="ck_alerts_threshold_finite"):
        w.alert(tank, "temp", ">", math.inf)
    # the legacy row cannot be evaluated: an error, not "normal" for ever
    result = run_evaluation(db, settings(), now=NOW)
    [outcome] = [o for o in result.outcomes if o.alert_id == legacy]
    assert outcome.decision.action == "error" and "threshold nan is not a finite number" in outcome.decision.message
    assert result.stats.errors == 1


def test_cli_add_refuses_a_non_finite_threshold_and_adds_a_good_alert(db, capsys, monkeypatch):
    from forecast_pipeline.cli import main as cli

    monkeypatch.setenv("DATABASE_URL", ALERTS_DB_URL)
    monkeypatch.delenv("APP_DATABASE_URL", raising=False)
    base = ["alerts", "add", "--source", "tank", "--metric", "temp", "--operator", ">"]
    for bad in ("nan", "inf", "-Infinity", "warm"):
        with pytest.raises(SystemExit) as info:
            cli.main([*base, "--threshold", bad])
        assert info.value.code == 2 and "--threshold" in capsys.readouterr().err
    assert World(db).count(alerts) == 0
    assert cli.main([*base, "--threshold", "82.5", "--name", "tank too warm"]) == 0
    assert "added alert 1" in capsys.readouterr().out
    with db.connect() as conn:
        row = conn.execute(sa.select(alerts)).one()
    assert (row.name, row.metric, row.operator, row.threshold_value) == ("tank too warm", "temp", ">", 82.5)


def test_an_existing_outbox_gets_the_delivery_columns(db, webhook):
    """An alert_notifications table created by the previous version is upgraded in place."""
    from forecast_pipeline.app_db.schema import upgrade_app_schema

    with db.begin() as conn:
        for column in ("next_attempt_at", "last_status", "refused_since"):
            conn.execute(sa.text(f"ALTER TABLE alert_notifications DROP COLUMN {column}"))
    upgrade_app_schema(db)
    upgrade_app_schema(db)  # safe to repeat
    columns = {c["name"] for c in sa.inspect(db).get_columns("alert_notifications")}
    assert {"next_attempt_at", "last_status", "refused_since"} <= columns
    w = World(db)
    tank = w.device("tank")
    w.alert(tank, "temp", ">", 82.0)
    w.reading(tank, "temp", 99.0)
    assert run_evaluation(db, settings(ALERT_WEBHOOK_URL=webhook.url), now=NOW).stats.notifications_sent == 1


def test_delivery_on_sqlite(sqlite_db, webhook):
    w = World(sqlite_db)
    tank = w.device("tank")
    w.alert(tank, "temp", ">", 82.0)
    w.reading(tank, "temp", 99.0, at=NOW)
    webhook.mode = "down"
    first = run_evaluation(sqlite_db, settings(ALERT_WEBHOOK_URL=webhook.url), now=NOW)
    assert (first.stats.notifications_failed, first.stats.notifications_pending) == (1, 1)
    w.reading(tank, "temp", 70.0, at=NOW + dt.timedelta(seconds=30))
    webhook.mode = "ok"
    second = run_evaluation(sqlite_db, settings(ALERT_WEBHOOK_URL=webhook.url), now=NOW + dt.timedelta(seconds=30))
    assert (second.stats.notifications_sent, second.stats.notifications_pending) == (2, 0)
    assert [r["body"]["type"] for r in webhook.received] == ["alert.triggered", "alert.resolved"]


def test_a_whole_number_sent_as_a_string_keeps_every_digit():
    """64-bit counters often travel as JSON strings (JavaScript cannot hold them as numbers)."""
    reading = reading_at(None, json_value={"n": "100000000000000001", "m": " 9007199254740993 "})
    assert extract_value(reading, "n", NOW) == 10**17 + 1
    assert evaluate_threshold(extract_value(reading, "n", NOW), ">", 1e17)
    assert evaluate_threshold(extract_value(reading, "m", NOW), "!=", 2.0**53)
    assert extract_value(reading_at(None, json_value={"x": "8.3"}), "x", NOW) == 8.3  # decimals still parse
