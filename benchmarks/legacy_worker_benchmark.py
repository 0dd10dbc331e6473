"""Side by side: a legacy-style forecast worker against the daily job, on the same database.

The legacy worker this project replaces forecast product by product: a pool of 10 processes, each
product one SQL query for its weekly history and one statsmodels Holt-Winters fit
(``ExponentialSmoothing``, additive trend and season 52), its forecast written to Redis. This
script runs such a worker on a random sample of the date's eligible products (``--sample``; the
whole catalogue would take hours) against the same PostgreSQL tables and indexes the job reads,
then (unless ``--skip-job``) the whole daily job once for every eligible product, exactly as
``materialize_benchmark.py`` does, and prints both rates in products per second.

Usage (from the repository root, after ``materialize_benchmark.py`` loaded the database)::

    .venv/bin/python benchmarks/legacy_worker_benchmark.py --sample 400 \\
        --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench --redis-url redis://127.0.0.1:6379/3

Not a test. It writes ``legacy:forecast:{id}`` keys into the Redis DB of ``--redis-url`` (which
the job's run flushes) and reads the database only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HORIZON = 12
WEEKLY_QUERY = """
    SELECT ((%(as_of)s::date - o.created_at::date - 1) / 7) AS week_back, SUM(oi.quantity)
    FROM order_items oi JOIN orders o ON o.id = oi.order_id
    WHERE oi.product_id = %(product)s AND o.created_at >= %(start)s AND o.created_at < %(as_of)s
    GROUP BY 1
"""

_state: dict = {}


def _connect(database_url: str, redis_url: str) -> None:
    """Pool initializer: each process its own connections, as each legacy worker had."""
    import psycopg2
    import redis
    import sqlalchemy as sa

    url = sa.engine.make_url(database_url)
    _state["db"] = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database
    )
    _state["db"].autocommit = True
    _state["redis"] = redis.Redis.from_url(redis_url)


def _forecast_one(task: tuple[int, str, str, int]) -> tuple[int, bool]:
    """One product: its query, its fit, its Redis key."""
    import warnings

    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    product, as_of, start, weeks = task
    with _state["db"].cursor() as cursor:
        cursor.execute(WEEKLY_QUERY, {"as_of": as_of, "start": start, "product": product})
        rows = cursor.fetchall()
    series = np.zeros(weeks)
    for week_back, quantity in rows:
        if 0 <= week_back < weeks:
            series[weeks - 1 - week_back] = max(float(quantity), 0.0)
    fitted = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ExponentialSmoothing(series, trend="add", seasonal="add", seasonal_periods=52).fit()
            forecast = np.clip(fit.forecast(HORIZON), 0.0, None)
        fitted = bool(np.isfinite(forecast).all())
    except Exception:  # noqa: BLE001 - a failed fit counts as failed, as the worker logged it
        fitted = False
    if not fitted:
        forecast = np.repeat(series[-52:][:HORIZON].mean() if len(series) else 0.0, HORIZON)
    doc = {"product_id": product, "as_of_date": as_of, "predictions": [round(float(q), 2) for q in forecast]}
    _state["redis"].set(f"legacy:forecast:{product}", json.dumps(doc))
    return product, fitted


def run_legacy(database_url: str, redis_url: str, product_ids: list[int], window, processes: int) -> dict:
    tasks = [(p, window.as_of.isoformat(), window.window_start_ts.isoformat(), window.weeks) for p in product_ids]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes, _connect, (database_url, redis_url)) as pool:
        results = pool.map(_forecast_one, tasks, chunksize=1)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's processes, reaped
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {
        "products": len(results),
        "fitted": sum(ok for _, ok in results),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "products_per_second": len(results) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=400, help="eligible products the legacy worker forecasts")
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--as-of", default="2026-11-16")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--skip-job", action="store_true", help="only the legacy worker")
    args = parser.parse_args(argv)

    from forecast_pipeline.connections import make_engine
    from forecast_pipeline.resources import ForecastParameters
    from forecast_pipeline.source import order_history

    window = ForecastParameters().window(dt.date.fromisoformat(args.as_of))
    engine = make_engine(args.database_url)
    with engine.connect() as conn:
        eligible = order_history.fetch_eligible_products(conn, window)["product_id"].to_numpy()
    engine.dispose()
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(eligible, size=min(args.sample, len(eligible)), replace=False).tolist())
    print(f"{len(eligible):,} eligible products for {args.as_of}; legacy worker on {len(sample)} of them", flush=True)
    legacy = run_legacy(args.database_url, args.redis_url, sample, window, args.processes)
    print(
        f"legacy worker ({args.processes} processes): {legacy['products']} products in "
        f"{legacy['wall_seconds']:.1f}s = {legacy['products_per_second']:.2f} products/s, "
        f"{legacy['cpu_seconds']:.1f}s CPU ({legacy['cpu_seconds'] / legacy['products']:.3f}s a product) "
        f"({legacy['fitted']} Holt-Winters fits succeeded)",
        flush=True,
    )
    if args.skip_job:
        return 0

    import materialize_benchmark as bench
    import redis

    home = tempfile.mkdtemp(prefix="forecast_legacy_home_")
    (Path(home) / "dagster.yaml").write_text(bench.DAGSTER_YAML)
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "DAGSTER_HOME": home,
        "FORECAST_EXECUTOR": "in_process",
        "FORECAST_WORKERS": "1",
    }
    redis.Redis.from_url(args.redis_url).flushdb()
    job = bench.run_once(env, window.as_of)
    job.update(bench.latest_figures(home))
    rate = job["total_products"] / job["wall_seconds"]
    cpu_each = job["cpu_seconds"] / job["total_products"]
    print(
        f"daily job (in_process, FORECAST_WORKERS=1, whole job): {job['total_products']:,} products in "
        f"{job['wall_seconds']:.1f}s = {rate:,.0f} products/s, {job['cpu_seconds']:.1f}s CPU "
        f"({cpu_each:.4f}s a product); {rate / legacy['products_per_second']:,.0f}x the legacy worker's "
        f"products/s, {legacy['cpu_seconds'] / legacy['products'] / cpu_each:,.0f}x less CPU a product"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
