"""Claiming from the forecast request queue: 2,000 queued requests (priorities 0-4, one in ten with one
of 40 concurrency keys) claimed 50 at a time with ``claim_due_requests``, the queue sensor's path,
each batch closed before the next so the capacity and key checks see a live queue.

The database named on the command line is used for it (its queue tables are dropped). Usage
(from the repository root)::

    .venv/bin/python benchmarks/claim_benchmark.py postgresql://postgres@127.0.0.1:5432/<scratch db>
"""

import sys
import time

import sqlalchemy as sa

from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.connections import make_engine
from forecast_pipeline.forecast_queue import request_queue

url = sys.argv[1]
engine = make_engine(url)
with engine.begin() as conn:
    for t in ("forecast_request_audit", "forecast_requests", "forecast_predictions"):
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {t} CASCADE"))
upgrade_app_schema(engine)
with engine.begin() as conn:
    conn.execute(
        sa.text(
            "INSERT INTO forecast_requests (parameters, priority, concurrency_key) "
            "SELECT json_build_object('as_of_date','2025-11-10'), i % 5, CASE WHEN i % 10 = 0 THEN 'k' || (i % 40) END "
            "FROM generate_series(1, 2000) i"
        )
    )
start = time.perf_counter()
n = 0
while True:
    got = request_queue.claim_due_requests(engine, 50)
    if not got:
        break
    n += len(got)
    with engine.begin() as conn:  # close them so the capacity/key checks see what a live queue sees
        conn.execute(sa.text("UPDATE forecast_requests SET status='succeeded' WHERE status='claimed'"))
queue_s = time.perf_counter() - start
print(f"queue: {n} jobs claimed in {queue_s:.3f} s")
