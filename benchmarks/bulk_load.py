"""Fast synthetic order history for the 100,000- and 1,000,000-product benchmarks.

``demo_data`` builds the whole history in memory and is realistic (seasons, trends, customers
who come and go); at a million products it would need tens of GB. This loader generates the
rows product chunk by product chunk with numpy and streams each chunk into PostgreSQL with
``COPY``, then builds the primary keys and the indexes the pipeline's reads use, and ANALYZEs.

The histories are sparser and simpler than the demo's (stated with every figure quoted):

- each product gets a Poisson number of order lines with a log-normal mean around
  ``--lines-per-product`` (so a few products are dense and most are sparse), one line per order;
- its first sale is at the history start for 60% of products, else uniformly later (new items);
- its orders come from 1-6 customers of its own (drawn from ``products / 2.5`` customers);
- order days are uniform between its first sale and the day before the as-of date, with a mild
  yearly season; quantities are 1 + Poisson(3).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bulk_load.py --products 1000000 --lines-per-product 30 \\
        --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench_1m

It replaces the default tables (``customers``, ``products``, ``orders``, ``order_items``) in the
database named, and nothing else. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import time

import numpy as np
import pandas as pd
import sqlalchemy as sa

DDL = """
DROP TABLE IF EXISTS order_items, orders, products, customers CASCADE;
CREATE TABLE customers (id BIGINT NOT NULL, name VARCHAR(200));
CREATE TABLE products (id BIGINT NOT NULL, name VARCHAR(200));
CREATE TABLE orders (id BIGINT NOT NULL, customer_id BIGINT NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE order_items (id BIGINT NOT NULL, order_id BIGINT NOT NULL, product_id BIGINT, quantity FLOAT NOT NULL);
"""
INDEXES = """
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE products ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
ALTER TABLE order_items ADD PRIMARY KEY (id);
CREATE INDEX ix_orders_created_at ON orders (created_at);
CREATE INDEX ix_order_items_order_id ON order_items (order_id);
CREATE INDEX ix_order_items_product_id ON order_items (product_id);
"""


def chunk_rows(
    products: np.ndarray, customers: int, days: int, lines_per_product: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(product, customer, day offset, quantity) of every line of these products."""
    n = len(products)
    means = rng.lognormal(np.log(lines_per_product) - 0.5, 1.0, n)
    lines = rng.poisson(means)
    first = np.where(rng.random(n) < 0.6, 0, rng.integers(0, int(days * 0.9), n))
    product = np.repeat(products, lines)
    first_day = np.repeat(first, lines)
    # a mild yearly season: accept-reject on a sine of the day of the year
    raw = first_day + (rng.random(len(product)) * (days - first_day)).astype(np.int64)
    keep = rng.random(len(raw)) < 0.75 + 0.25 * np.sin(2 * np.pi * raw / 365.25)
    product, raw = product[keep], raw[keep]
    own = np.repeat(rng.integers(1, 7, n), lines)[keep]
    base = np.repeat(rng.integers(0, customers, n), lines)[keep]
    customer = (base + (rng.random(len(product)) * own).astype(np.int64)) % customers + 1
    quantity = 1.0 + rng.poisson(3.0, len(product))
    return product, customer, raw, quantity


def _copy(raw, table: str, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with raw.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", buffer)


def load(url: str, products: int, lines_per_product: float, as_of: dt.date, start: dt.date, seed: int) -> dict:
    engine = sa.create_engine(url)
    customers = max(400, int(products / 2.5))
    days = (as_of - start).days
    started = time.perf_counter()
    raw = engine.raw_connection()
    counts = {"products": products, "customers": customers, "orders": 0}
    try:
        with raw.cursor() as cursor:
            cursor.execute(DDL)
        ids = np.arange(1, customers + 1)
        _copy(raw, "customers", pd.DataFrame({"id": ids, "name": [f"customer {i}" for i in ids]}))
        ids = np.arange(1, products + 1)
        _copy(raw, "products", pd.DataFrame({"id": ids, "name": [f"product {i}" for i in ids]}))
        next_order = 1
        origin = np.datetime64(start.isoformat(), "s")
        for chunk_start in range(1, products + 1, 50_000):
            rng = np.random.default_rng([seed, chunk_start])
            chunk = np.arange(chunk_start, min(chunk_start + 50_000, products + 1))
            product, customer, day, quantity = chunk_rows(chunk, customers, days, lines_per_product, rng)
            order_ids = np.arange(next_order, next_order + len(product))
            next_order += len(product)
            seconds = day * 86400 + rng.integers(6 * 3600, 20 * 3600, len(day))
            created = pd.Series(origin + seconds.astype("timedelta64[s]")).dt.strftime("%Y-%m-%d %H:%M:%S")
            _copy(raw, "orders", pd.DataFrame({"id": order_ids, "customer_id": customer, "created_at": created}))
            items = {"id": order_ids, "order_id": order_ids, "product_id": product, "quantity": quantity}
            _copy(raw, "order_items", pd.DataFrame(items))
            counts["orders"] += len(product)
            print(f"  products up to {chunk[-1]:,}: {counts['orders']:,} lines", flush=True)
        copy_seconds = time.perf_counter() - started
        with raw.cursor() as cursor:
            cursor.execute(INDEXES)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    counts["order_items"] = counts["orders"]
    return {**counts, "copy_seconds": copy_seconds, "total_seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--lines-per-product", type=float, default=30.0, help="mean order lines per product")
    parser.add_argument("--as-of", default="2026-11-16")
    parser.add_argument("--history-start", default="2019-01-01")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench_1m")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from materialize_benchmark import ensure_database

    ensure_database(args.database_url)
    result = load(
        args.database_url,
        args.products,
        args.lines_per_product,
        dt.date.fromisoformat(args.as_of),
        dt.date.fromisoformat(args.history_start),
        args.seed,
    )
    print(
        f"{result['products']:,} products, {result['customers']:,} customers, {result['order_items']:,} order lines "
        f"(one per order): COPY {result['copy_seconds']:.0f}s, with keys, indexes and ANALYZE "
        f"{result['total_seconds']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
