"""The bulk read (binary COPY + numpy, PostgreSQL) against the grouped queries it replaces.

Every test compares the two on real Postgres: the same eligible products and counts, the same
weekly matrix and LineQuality counts, the same customer activity, for as-of dates on every weekday,
far in the past, and after a late line arrives. Data: demo history with bad lines added.
"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from forecast_pipeline.source import demo_data, order_history, pg_copy

HISTORY_START = dt.date(2019, 1, 1)
LAST_DAY = dt.date(2021, 6, 30)
AS_OF_DATES = [
    *(dt.date(2021, 6, 20) + dt.timedelta(days=i) for i in range(7)),  # every weekday: weeks anchored at each
    dt.date(2021, 7, 1),  # the day after the last order
    dt.date(2020, 2, 29),
    dt.date(2019, 1, 20),  # two weeks of history
    dt.date(2019, 1, 3),  # no whole week yet
]
LEFT_JOIN_QUERY = """
    SELECT oi.order_id, c.id AS customer_id, oi.product_id, o.created_at AS ordered_at, oi.quantity
    FROM order_items oi
    JOIN orders o ON oi.order_id = o.id
    LEFT JOIN customers c ON c.id = o.customer_id AND c.name <> 'gone'
"""


def demo_history(sparse_order_ids: bool = False) -> demo_data.DemoHistory:
    """120 products, 2.5 years, with bad lines: returns (some larger than their week), zero
    quantities, quarter units (exact in binary, so sums are exact in any order), lines without a
    product, and customers a LEFT JOIN loses. NaN quantities are added once loaded (:func:`load`)."""
    history = demo_data.generate(products=120, customers=90, start=HISTORY_START, end=LAST_DAY, seed=3)
    items = history.order_items
    rng = np.random.default_rng(5)
    pick = rng.random(len(items))
    quantity = items["quantity"].to_numpy().copy()
    quantity[(pick >= 0.01) & (pick < 0.03)] *= -1
    quantity[(pick >= 0.03) & (pick < 0.05)] *= -40
    quantity[(pick >= 0.05) & (pick < 0.06)] = 0.0
    quantity[(pick >= 0.06) & (pick < 0.10)] += 0.25
    items["quantity"] = quantity
    history.customers.loc[history.customers["id"] % 9 == 0, "name"] = "gone"
    if sparse_order_ids:  # far apart and above 2**53: the binary-search join, exact 64-bit ids
        remap = 2**53 + history.orders["id"] * 7_919
        history.order_items["order_id"] = items["order_id"] * 7_919 + 2**53
        history.orders["id"] = remap
    return history


def load(engine: sa.Engine, history: demo_data.DemoHistory) -> sa.Engine:
    demo_data.load(engine, history)
    with engine.begin() as conn:  # the loader writes NaN as NULL, which the column refuses
        conn.execute(sa.text("UPDATE order_items SET quantity = 'NaN' WHERE id % 97 = 0"))
    return engine


@pytest.fixture
def demo_pg(pg):
    return load(pg, demo_history())


def window(as_of: dt.date) -> order_history.HistoryWindow:
    return order_history.HistoryWindow(as_of=as_of, history_start=HISTORY_START, min_customers=2, min_orders=3)


def by_pair(activity: pd.DataFrame) -> pd.DataFrame:
    return activity.sort_values(["product_id", "customer_id"]).reset_index(drop=True)


def assert_same_as_grouped_queries(engine: sa.Engine, as_of: dt.date, source_query: str | None = None) -> int:
    """Bulk and grouped reads agree for this date; returns how many products were eligible."""
    w = window(as_of)
    with engine.connect() as conn:
        assert pg_copy.supported(conn)
        eligible = order_history.fetch_eligible_products(conn, w, source_query)
        expected = order_history.sql_eligible_products(conn, w, source_query)
        pd.testing.assert_frame_equal(eligible, expected)
        ids = eligible["product_id"].tolist()
        weekly, activity = order_history.fetch_history(conn, w, ids, source_query)
        reference = order_history.sql_weekly_history(conn, w, ids, source_query)
        np.testing.assert_array_equal(weekly.matrix, reference.matrix)
        for kind in order_history.QUALITY_KINDS:
            np.testing.assert_array_equal(weekly.quality.counts[kind], reference.quality.counts[kind], err_msg=kind)
        expected_activity = order_history.sql_customer_activity(conn, w, ids, source_query)
        pd.testing.assert_frame_equal(by_pair(activity), by_pair(expected_activity), check_dtype=False)
        # the single-purpose functions take the same path
        np.testing.assert_array_equal(
            order_history.fetch_weekly_history(conn, w, ids, source_query).matrix, weekly.matrix
        )
        pd.testing.assert_frame_equal(
            by_pair(order_history.fetch_customer_activity(conn, w, ids, source_query)), by_pair(activity)
        )
    return len(ids)


@pytest.mark.parametrize("as_of", AS_OF_DATES, ids=str)
def test_bulk_read_equals_the_grouped_queries(demo_pg, as_of):
    eligible = assert_same_as_grouped_queries(demo_pg, as_of)
    if as_of > dt.date(2020, 1, 1):
        assert eligible > 50  # the comparison covered real histories, not empty frames


def test_the_demo_data_has_every_kind_of_bad_line(demo_pg):
    w = window(dt.date(2021, 7, 1))
    with demo_pg.connect() as conn:
        ids = order_history.fetch_eligible_products(conn, w)["product_id"].tolist()
        quality = order_history.fetch_weekly_history(conn, w, ids, LEFT_JOIN_QUERY).quality.summary()
    assert all(quality[kind] > 0 for kind in order_history.QUALITY_KINDS), quality


@pytest.mark.parametrize("as_of", [dt.date(2021, 6, 23), dt.date(2020, 2, 29)], ids=str)
def test_bulk_read_of_a_source_query_equals_the_grouped_queries(demo_pg, as_of):
    """Customers the LEFT JOIN loses are NULL: demand without a customer."""
    assert_same_as_grouped_queries(demo_pg, as_of, LEFT_JOIN_QUERY)


def test_sparse_order_ids_above_2_53(pg):
    load(pg, demo_history(sparse_order_ids=True))
    assert assert_same_as_grouped_queries(pg, dt.date(2021, 6, 24)) > 50


def test_a_subset_of_products_reads_only_theirs(demo_pg):
    """A shard: the rows of a subset equal the same products' rows of the whole read."""
    w = window(dt.date(2021, 6, 22))
    with demo_pg.connect() as conn:
        ids = order_history.fetch_eligible_products(conn, w)["product_id"].tolist()
        whole, whole_activity = order_history.fetch_history(conn, w, ids)
        subset = ids[5:40:3]
        part, part_activity = order_history.fetch_history(conn, w, subset)
        reference = order_history.sql_weekly_history(conn, w, subset)
    rows = [ids.index(p) for p in subset]
    np.testing.assert_array_equal(part.matrix, whole.matrix[rows])
    np.testing.assert_array_equal(part.matrix, reference.matrix)
    expected = whole_activity[whole_activity["product_id"].isin(subset)]
    pd.testing.assert_frame_equal(by_pair(part_activity), by_pair(expected))


def test_a_shard_copies_only_its_own_products_orders(demo_pg):
    """A shard's memory is bounded by its products, not the catalogue: the orders copied out
    are those holding one of its products' lines, not every order of the window (at 1,000,000
    products every shard copied all ~20M orders)."""
    w = window(dt.date(2021, 6, 22))
    since = dt.datetime.combine(HISTORY_START, dt.time())
    with demo_pg.connect() as conn:
        ids = order_history.fetch_eligible_products(conn, w)["product_id"].tolist()
        subset = ids[5:40:3]
        lines = order_history._read_lines(conn, since, w, subset, None)
        own_orders = conn.execute(
            sa.text(
                "SELECT count(DISTINCT o.id) FROM orders o JOIN order_items oi ON oi.order_id = o.id "
                "WHERE oi.product_id = ANY(:ids) AND o.created_at >= :since AND o.created_at < :as_of"
            ),
            {"ids": subset, "since": since, "as_of": w.as_of_ts},
        ).scalar()
        all_orders = conn.execute(
            sa.text("SELECT count(*) FROM orders WHERE created_at >= :since AND created_at < :as_of"),
            {"since": since, "as_of": w.as_of_ts},
        ).scalar()
    assert own_orders < all_orders / 2  # the subset is a small part of the catalogue
    assert lines.orders == own_orders
    assert set(np.unique(lines.product_id)) <= set(subset)


def test_a_late_line_is_read_for_every_date_it_belongs_to(demo_pg):
    """A line entered today for an order dated last year changes every as-of date after it, and
    the bulk read sees it as the grouped query does (nothing is cached between reads)."""
    late_day = dt.datetime(2020, 5, 12, 15, 30)
    dates = [dt.date(2020, 5, 13), dt.date(2020, 11, 4), dt.date(2021, 7, 1)]
    with demo_pg.connect() as conn:
        before = {d: order_history.fetch_weekly_history(conn, window(d), [7, 8]).matrix for d in dates}
    with demo_pg.begin() as conn:
        order_id = conn.execute(sa.text("SELECT max(id) + 1 FROM orders")).scalar()
        item_id = conn.execute(sa.text("SELECT max(id) + 1 FROM order_items")).scalar()
        conn.execute(
            sa.text("INSERT INTO orders (id, customer_id, created_at) VALUES (:o, 1, :t)"),
            {"o": order_id, "t": late_day},
        )
        conn.execute(
            sa.text(
                "INSERT INTO order_items (id, order_id, product_id, quantity) "
                "VALUES (:i, :o, 7, 1000), (:i + 1, :o, 8, -1000)"
            ),
            {"i": item_id, "o": order_id},
        )
    for d in dates:
        assert_same_as_grouped_queries(demo_pg, d)
        with demo_pg.connect() as conn:
            after = order_history.fetch_weekly_history(conn, window(d), [7, 8])
        week = window(d).weeks - 1 - ((d - late_day.date()).days - 1) // 7
        assert after.matrix[0, week] > before[d][0, week]
        assert after.matrix[1, week] == 0.0  # a return larger than the week's sales is floored
        assert after.quality.counts["weeks_floored_at_zero"][1] >= 1


def test_orders_without_a_unique_id_fall_back_to_postgres_join(pg):
    """A table created outside init-db may lack the primary key: duplicated order ids join to
    every copy in SQL, and the bulk read then lets PostgreSQL join too."""
    load(pg, demo_history())
    with pg.begin() as conn:
        conn.execute(sa.text("ALTER TABLE order_items DROP CONSTRAINT IF EXISTS order_items_order_id_fkey"))
        conn.execute(sa.text("ALTER TABLE orders DROP CONSTRAINT orders_pkey"))
        conn.execute(
            sa.text(
                "INSERT INTO orders (id, customer_id, created_at) "
                "SELECT id, customer_id, created_at FROM orders WHERE id % 50 = 0"
            )
        )
    assert assert_same_as_grouped_queries(pg, dt.date(2021, 6, 25)) > 50


def test_binary_copy_refuses_a_null():
    """A NULL changes the row size: the parser must refuse rather than misread every later row."""
    with pytest.raises(ValueError, match="NULL|size"):
        header = pg_copy.SIGNATURE + b"\x00" * 8
        row = (1).to_bytes(2, "big") + (8).to_bytes(4, "big") + (5).to_bytes(8, "big")
        null_row = (1).to_bytes(2, "big") + (-1).to_bytes(4, "big", signed=True)
        pg_copy.parse(header + row + null_row + row + (-1).to_bytes(2, "big", signed=True), ["int8"])


def test_binary_copy_round_trip(pg):
    with pg.connect() as conn:
        query = sa.select(
            sa.cast(sa.literal(2**63 - 1), sa.BigInteger),
            sa.cast(sa.literal(-3), sa.Integer),
            sa.cast(sa.literal(0.25), sa.Float),
            sa.literal(True),
        )
        big, small, number, flag = pg_copy.copy_columns(conn, query, ["int8", "int4", "float8", "bool"])
    assert big.tolist() == [2**63 - 1] and small.tolist() == [-3]
    assert number.tolist() == [0.25] and flag.tolist() == [True]


def test_a_missing_table_raises_sqlalchemys_error(pg):
    """The assets turn SQLAlchemy errors into a failure that names `forecast-pipeline init-db`."""
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE order_items"))
    with pg.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="order_items"):
        order_history.fetch_eligible_products(conn, window(dt.date(2021, 6, 25)))


# --- the eligibility read's lines reused by a one-shard date (in-process executor) ------------


@pytest.mark.parametrize("as_of", [dt.date(2021, 6, 23), dt.date(2021, 7, 1), dt.date(2019, 1, 20)], ids=str)
def test_history_from_the_eligibility_lines_equals_reading_it_again(demo_pg, as_of):
    w = window(as_of)
    with demo_pg.connect() as conn:
        eligible, kept = order_history.fetch_eligible_keeping_lines(conn, w, max_products=1000)
        pd.testing.assert_frame_equal(eligible, order_history.fetch_eligible_products(conn, w))
        ids = eligible["product_id"].tolist()
        weekly, activity = order_history.fetch_history(conn, w, ids)
    assert kept is not None and ids
    for products in (ids, ids[3:30:4]):  # the date, and a run for some of its products
        reused, reused_activity = order_history.history_from_lines(kept, w, products)
        rows = [ids.index(p) for p in products]
        np.testing.assert_array_equal(reused.matrix, weekly.matrix[rows])
        for kind in order_history.QUALITY_KINDS:
            np.testing.assert_array_equal(reused.quality.counts[kind], weekly.quality.counts[kind][rows], err_msg=kind)
        expected = activity[activity["product_id"].isin(products)]
        pd.testing.assert_frame_equal(by_pair(reused_activity), by_pair(expected))
    with pytest.raises(ValueError):  # lines of one date never serve another
        order_history.history_from_lines(kept, window(as_of - dt.timedelta(days=1)), ids)


def test_no_lines_are_kept_for_a_date_of_several_shards_or_a_large_table(demo_pg, monkeypatch):
    w = window(dt.date(2021, 6, 23))
    with demo_pg.connect() as conn:
        eligible, kept = order_history.fetch_eligible_keeping_lines(conn, w, max_products=10)
        assert len(eligible) > 10 and kept is None
        pd.testing.assert_frame_equal(eligible, order_history.fetch_eligible_products(conn, w))
        monkeypatch.setattr(order_history, "KEEP_LINES_LIMIT", 1000)  # fewer than the table holds
        eligible, kept = order_history.fetch_eligible_keeping_lines(conn, w, max_products=1000)
        assert len(eligible) > 10 and kept is None


# --- the eligibility read of a large catalogue, in parts -----------------------------------------


@pytest.mark.parametrize("source_query", [None, LEFT_JOIN_QUERY], ids=["default tables", "source query"])
def test_a_large_catalogue_is_checked_for_eligibility_in_parts(demo_pg, monkeypatch, source_query):
    """The eligibility step's memory follows ELIGIBLE_PART_LINES, not the catalogue: the lines are
    copied and counted a part of the products at a time (every product in exactly one part), and
    the table is the grouped query's."""
    w = window(dt.date(2021, 6, 23))
    with demo_pg.connect() as conn:
        whole = order_history.fetch_eligible_products(conn, w, source_query)
        lines = conn.execute(sa.text("SELECT count(*) FROM order_items")).scalar()
        counted = []
        count_part = order_history._eligible_from_lines

        def spy(part, window):
            counted.append(len(part.product_id))
            return count_part(part, window)

        monkeypatch.setattr(order_history, "_eligible_from_lines", spy)
        monkeypatch.setattr(order_history, "ELIGIBLE_PART_LINES", lines // 5)
        in_parts = order_history.fetch_eligible_products(conn, w, source_query)
        expected = order_history.sql_eligible_products(conn, w, source_query)
    assert len(counted) >= 5 and max(counted) < lines / 3, counted
    pd.testing.assert_frame_equal(in_parts, expected)
    pd.testing.assert_frame_equal(in_parts, whole)


# --- a source query with percent signs (psycopg2's parameter marker) ------------------------------

PERCENT_QUERY = LEFT_JOIN_QUERY + " WHERE oi.order_id % 1 = 0 AND CAST(o.created_at AS TEXT) LIKE '%-%'"
"""LEFT_JOIN_QUERY with a modulo and a LIKE pattern that keep every line."""


@pytest.mark.parametrize("as_of", [dt.date(2021, 6, 23), dt.date(2019, 1, 20)], ids=str)
def test_a_source_query_with_percent_signs_reads_like_one_without(demo_pg, as_of):
    """`%` in FORECAST_SOURCE_QUERY is SQL (LIKE, modulo), never a driver placeholder: the bulk
    read (and its planner estimate) gives what the query without it gives."""
    assert assert_same_as_grouped_queries(demo_pg, as_of, PERCENT_QUERY) == assert_same_as_grouped_queries(
        demo_pg, as_of, LEFT_JOIN_QUERY
    )
    w = window(as_of)
    with demo_pg.connect() as conn:
        with_percent = order_history.fetch_eligible_products(conn, w, PERCENT_QUERY)
        pd.testing.assert_frame_equal(with_percent, order_history.fetch_eligible_products(conn, w, LEFT_JOIN_QUERY))
        ids = with_percent["product_id"].tolist()
        np.testing.assert_array_equal(
            order_history.fetch_weekly_history(conn, w, ids, PERCENT_QUERY).matrix,
            order_history.fetch_weekly_history(conn, w, ids, LEFT_JOIN_QUERY).matrix,
        )


def test_a_source_query_with_percent_signs_is_read_in_parts(demo_pg, monkeypatch):
    """The planner's estimate decides the parts: it reads the query with its `%` as they are."""
    w = window(dt.date(2021, 6, 23))
    with demo_pg.connect() as conn:
        lines = conn.execute(sa.text("SELECT count(*) FROM order_items")).scalar()
        monkeypatch.setattr(order_history, "ELIGIBLE_PART_LINES", lines // 3)
        in_parts = order_history.fetch_eligible_products(conn, w, PERCENT_QUERY)
        expected = order_history.sql_eligible_products(conn, w, LEFT_JOIN_QUERY)
    pd.testing.assert_frame_equal(in_parts, expected)
