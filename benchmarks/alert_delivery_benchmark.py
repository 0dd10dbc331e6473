"""Alert delivery benchmark: how fast the outbox drains into a webhook on 127.0.0.1.

Queues ``--notifications`` trigger notifications (one alert each) with no webhook configured, as
``forecast-pipeline alerts evaluate`` does in a shell without ``ALERT_WEBHOOK_URL``, then runs
delivery passes exactly as ``alert_notification_sensor`` does (``deliver_pending`` with its 40 s
budget and the default settings) against a local HTTP server answering 204 until the outbox is
empty. Reports wall time, notifications per second and passes (each pass is one 15 s sensor tick,
so passes x 15 s bounds the drain time a deployment sees). ``--runs`` repeats it; medians.

Usage (from the repository root)::

    .venv/bin/python benchmarks/alert_delivery_benchmark.py --notifications 2000 --runs 3

Not a test. It drops and recreates the five alert tables in ``--database-url`` only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import statistics
import threading
import time

import sqlalchemy as sa

from forecast_pipeline.alerts.config import load_alert_settings
from forecast_pipeline.alerts.notify import deliver_pending
from forecast_pipeline.alerts.service import run_evaluation
from forecast_pipeline.app_db.alert_tables import alert_events, alert_notifications, alerts, devices, readings
from forecast_pipeline.app_db.metadata import app_metadata
from forecast_pipeline.connections import make_engine
from forecast_pipeline.defs.alerts.sensors import DELIVERY_BUDGET_SECONDS

TABLES = [devices, readings, alerts, alert_events, alert_notifications]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def queue(engine: sa.Engine, count: int, now: dt.datetime) -> None:
    app_metadata.drop_all(engine, tables=list(reversed(TABLES)), checkfirst=True)
    app_metadata.create_all(engine, tables=TABLES)
    with engine.begin() as conn:
        conn.execute(sa.insert(devices), [{"name": f"source-{i}"} for i in range(count)])
        ids = list(conn.execute(sa.select(devices.c.id).order_by(devices.c.id)).scalars())
        conn.execute(
            sa.insert(alerts), [{"device_id": d, "metric": "temp", "operator": ">", "threshold_value": 1} for d in ids]
        )
        rows = [{"device_id": d, "metric": "temp", "value": 2.0, "timestamp": now} for d in ids]
        conn.execute(sa.insert(readings), rows)
    result = run_evaluation(engine, load_alert_settings({}), now=now)
    assert result.stats.triggered == count, result.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/forecast_test_alerts")
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    settings = load_alert_settings({"ALERT_WEBHOOK_URL": url})
    engine = make_engine(args.database_url)
    walls, passes_per_run = [], []
    try:
        for run in range(args.runs):
            now = dt.datetime.now(dt.UTC)
            queue(engine, args.notifications, now)
            started, passes, sent = time.perf_counter(), 0, 0
            while True:
                stats = deliver_pending(engine, settings, budget_seconds=DELIVERY_BUDGET_SECONDS, now=now)
                passes += 1
                sent += stats.sent
                if stats.pending == 0:
                    break
            wall = time.perf_counter() - started
            assert sent == args.notifications, sent
            walls.append(wall)
            passes_per_run.append(passes)
            print(f"run {run + 1}: {sent} sent in {wall:.2f} s ({sent / wall:.0f}/s), {passes} pass(es)")
    finally:
        app_metadata.drop_all(engine, tables=list(reversed(TABLES)), checkfirst=True)
        engine.dispose()
        server.shutdown()
    wall = statistics.median(walls)
    print(
        f"median: {args.notifications} notifications in {wall:.2f} s ({args.notifications / wall:.0f}/s), "
        f"{statistics.median(passes_per_run):g} pass(es) of at most {settings.notify_batch}"
    )


if __name__ == "__main__":
    main()
