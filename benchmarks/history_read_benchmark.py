"""The history reads alone: grouped SQL queries against the bulk read (binary COPY + numpy).

Times, for one as-of date on the database of ``materialize_benchmark.py`` (load it there first),
the eligibility read and the product_forecasts read (weekly history + customer activity), each way,
alternating the two ways in every round so that both see the same machine load; prints the median
of ``--runs`` rounds, and checks that both ways give the same eligible products, weekly matrix,
line-quality counts and customer activity::

    .venv/bin/python benchmarks/history_read_benchmark.py --runs 3 \\
        --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench

CPU seconds (this process plus the PostgreSQL backends serving it, from /proc) are printed with the
wall times: on a shared machine they say more than the wall time. Option (c) of issue 15 can be
tried on the grouped queries with ``--parallel-workers N`` (sets ``max_parallel_workers_per_gather``
for their session; parallel workers' own CPU is then not counted, as they exit before it is read).
Not a test: it reads millions of rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd
import sqlalchemy as sa

from forecast_pipeline.connections import make_engine
from forecast_pipeline.source import order_history


def grouped(conn: sa.Connection, window, ids):
    return (
        order_history.sql_weekly_history(conn, window, ids),
        order_history.sql_customer_activity(conn, window, ids),
    )


def backend_cpu_seconds(database: str) -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL backend connected to ``database`` (Linux /proc;
    the server runs on this host). Backends that exit before the next call are not counted."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read()  # "postgres: [cluster: ]user database host(port) state"
            if not (title.startswith(b"postgres: ") and f" postgres {database} ".encode() in title):
                continue
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def timed(engine: sa.Engine, setup: list[str], read, *args):
    """The read's result, wall seconds and CPU seconds (this process plus the server's backends):
    the wall time depends on what else runs on the machine, the CPU time much less."""
    with engine.connect() as conn:
        for statement in setup:
            conn.exec_driver_sql(statement)
        server_before = backend_cpu_seconds(engine.url.database)
        cpu_before = time.process_time()
        started = time.perf_counter()
        result = read(conn, *args)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        server_after = backend_cpu_seconds(engine.url.database)
        server = sum(seconds - server_before.get(pid, 0.0) for pid, seconds in server_after.items())
        return result, wall, cpu + server


def same(bulk, reference) -> None:
    (weekly, activity), (weekly_ref, activity_ref) = bulk, reference
    assert np.array_equal(weekly.matrix, weekly_ref.matrix), "weekly matrices differ"
    for kind in order_history.QUALITY_KINDS:
        assert np.array_equal(weekly.quality.counts[kind], weekly_ref.quality.counts[kind]), kind
    key = ["product_id", "customer_id"]
    pd.testing.assert_frame_equal(
        activity.sort_values(key).reset_index(drop=True), activity_ref.sort_values(key).reset_index(drop=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench")
    parser.add_argument("--as-of", default="2026-11-16")
    parser.add_argument("--history-start", default="2019-01-01")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel-workers", type=int, help="max_parallel_workers_per_gather for the grouped queries")
    args = parser.parse_args(argv)
    engine = make_engine(args.database_url)
    window = order_history.HistoryWindow(
        as_of=dt.date.fromisoformat(args.as_of),
        history_start=dt.date.fromisoformat(args.history_start),
        min_customers=2,
        min_orders=3,
    )
    setup = [] if args.parallel_workers is None else [f"SET max_parallel_workers_per_gather = {args.parallel_workers}"]
    with engine.connect() as conn:
        lines = conn.exec_driver_sql("SELECT count(*) FROM order_items").scalar()
    names = ("eligible_sql", "eligible_bulk", "history_sql", "history_bulk")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}

    def record(name, measured):
        result, seconds, cpu_seconds = measured
        wall[name].append(seconds)
        cpu[name].append(cpu_seconds)
        return result

    for i in range(args.runs):
        load = os.getloadavg()[0]
        eligible_ref = record("eligible_sql", timed(engine, setup, order_history.sql_eligible_products, window))
        eligible = record("eligible_bulk", timed(engine, [], order_history.fetch_eligible_products, window))
        pd.testing.assert_frame_equal(eligible, eligible_ref)
        ids = eligible["product_id"].tolist()
        reference = record("history_sql", timed(engine, setup, grouped, window, ids))
        bulk = record("history_bulk", timed(engine, [], order_history.fetch_history, window, ids))
        same(bulk, reference)
        print(
            f"round {i + 1} (load {load:.1f}): "
            + ", ".join(f"{k} {wall[k][-1]:.2f}s wall {cpu[k][-1]:.2f}s CPU" for k in names),
            flush=True,
        )
    print(f"\n{lines:,} order lines, {len(ids):,} eligible products, as-of {window.as_of}, median of {args.runs}")
    print("| read | grouped SQL: wall s | CPU s | bulk: wall s | CPU s | same result |")
    print("|---|---|---|---|---|---|")
    for read in ("eligible", "history"):
        figures = [statistics.median(d[f"{read}_{way}"]) for way in ("sql", "bulk") for d in (wall, cpu)]
        print(f"| {read} | " + " | ".join(f"{f:.2f}" for f in figures) + " | yes |")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
