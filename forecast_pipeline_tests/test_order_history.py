"""Eligibility and the weekly history, on real Postgres and SQLite."""

import dataclasses
import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa

from forecast_pipeline.source import order_history, pg_copy
from forecast_pipeline_tests.conftest import AS_OF

WINDOW = order_history.HistoryWindow(as_of=AS_OF, history_start=dt.date(2019, 1, 1), min_customers=2, min_orders=3)
DAY = dt.timedelta(days=1)


def eligible_ids(engine, window=WINDOW, source_query=None):
    with engine.connect() as conn:
        return order_history.fetch_eligible_products(conn, window, source_query)["product_id"].tolist()


def test_exactly_three_orders_from_two_customers_is_eligible(orders, any_db):
    for customer in (1, 2, 1):
        orders.add(customer, 10, AS_OF - 30 * DAY)
    assert eligible_ids(any_db) == [10]


def test_three_orders_from_one_customer_is_not(orders, any_db):
    for _ in range(3):
        orders.add(1, 10, AS_OF - 30 * DAY)
    assert eligible_ids(any_db) == []


def test_two_lines_of_one_order_count_as_one_order(orders, any_db):
    orders.add_order(1, [(10, 1), (10, 2)], AS_OF - 10 * DAY)
    orders.add(2, 10, AS_OF - 9 * DAY)
    assert eligible_ids(any_db) == []
    orders.add(2, 10, AS_OF - 8 * DAY)
    assert eligible_ids(any_db) == [10]


def test_lines_without_a_product_are_never_eligible(orders, any_db):
    for customer in (1, 2, 3):
        orders.add(customer, None, AS_OF - 5 * DAY)
    assert eligible_ids(any_db) == []


def test_orders_on_or_after_the_as_of_date_are_not_counted(orders, any_db):
    orders.add(1, 10, AS_OF - DAY)
    orders.add(2, 10, dt.datetime.combine(AS_OF - DAY, dt.time(23, 59, 59)))
    orders.add(1, 10, dt.datetime.combine(AS_OF, dt.time(0, 0, 0)))  # on the as-of date
    orders.add(2, 10, AS_OF + 3 * DAY)
    assert eligible_ids(any_db) == []


def test_orders_before_the_history_start_are_not_counted(orders, any_db):
    orders.add(1, 10, dt.date(2018, 12, 31))
    orders.add(2, 10, dt.date(2019, 1, 1))
    orders.add(1, 10, dt.date(2019, 1, 2))
    assert eligible_ids(any_db) == []
    orders.add(3, 10, dt.date(2019, 1, 3))
    assert eligible_ids(any_db) == [10]


def test_products_are_sorted_by_order_count(orders, any_db):
    for product, n in ((10, 3), (11, 5), (12, 4)):
        for i in range(n):
            orders.add(i % 2 + 1, product, AS_OF - (i + 1) * DAY)
    with any_db.connect() as conn:
        frame = order_history.fetch_eligible_products(conn, WINDOW)
    assert frame["product_id"].tolist() == [11, 12, 10]
    assert frame["order_count"].tolist() == [5, 4, 3]
    assert frame["customer_count"].tolist() == [2, 2, 2]


def test_thresholds_follow_the_configuration(orders, any_db):
    for customer in (1, 2, 3, 1):
        orders.add(customer, 10, AS_OF - 3 * DAY)
    strict = order_history.HistoryWindow(AS_OF, dt.date(2019, 1, 1), min_customers=4, min_orders=3)
    assert eligible_ids(any_db, strict) == []
    loose = order_history.HistoryWindow(AS_OF, dt.date(2019, 1, 1), min_customers=3, min_orders=4)
    assert eligible_ids(any_db, loose) == [10]


def test_weekly_buckets_end_the_day_before_the_as_of_date(orders, any_db):
    orders.add(1, 10, AS_OF - DAY, 5)  # last history week (-1)
    orders.add(2, 10, AS_OF - 7 * DAY, 7)  # still week -1 (7 days before)
    orders.add(1, 10, AS_OF - 8 * DAY, 11)  # week -2
    orders.add(2, 10, AS_OF, 1000)  # the as-of date itself: never read
    with any_db.connect() as conn:
        matrix = order_history.fetch_weekly_history(conn, WINDOW, [10]).matrix
    assert matrix.shape == (1, WINDOW.weeks)
    assert matrix[0, -1] == 12 and matrix[0, -2] == 11
    assert matrix.sum() == 23


def test_customer_activity_counts_weeks_back(orders, any_db):
    orders.add(1, 10, AS_OF - 2 * DAY)
    orders.add(1, 10, AS_OF - 20 * DAY)
    orders.add(2, 10, AS_OF - 40 * DAY)
    with any_db.connect() as conn:
        activity = order_history.fetch_customer_activity(conn, WINDOW, [10])
    rows = {r.customer_id: r for r in activity.itertuples()}
    assert (rows[1].orders, rows[1].first_week_back, rows[1].last_week_back) == (2, 2, 0)
    assert (rows[2].orders, rows[2].first_week_back, rows[2].last_week_back) == (1, 5, 5)


def test_a_customer_who_only_returned_or_ordered_nothing_is_not_an_active_buyer(orders, any_db):
    """Active customers are customers who ordered the product: a return (negative quantity) or a
    zero-quantity line is no buying. A line of unknown quantity still is (it was an order). Every
    read path: grouped SQL, the bulk read (PostgreSQL) and the eligibility read's kept lines."""
    orders.add(1, 10, AS_OF - 2 * DAY, 4.0)
    orders.add(2, 10, AS_OF - 3 * DAY, -1.0)  # only a return
    orders.add(3, 10, AS_OF - 4 * DAY, 0.0)  # only a zero line
    orders.add(4, 10, AS_OF - 5 * DAY, 2.0)
    orders.add(4, 10, AS_OF - 30 * DAY, -2.0)  # a buyer's return: not a week of buying
    unknown = "'lots'" if any_db.dialect.name == "sqlite" else "'NaN'"  # no NULLs in order_items
    with any_db.begin() as conn:
        conn.execute(sa.text(f"UPDATE order_items SET quantity = {unknown} WHERE quantity = 2.0"))
    window = dataclasses.replace(WINDOW, min_customers=1, min_orders=1)
    with any_db.connect() as conn:
        reads = {
            "fetch": order_history.fetch_customer_activity(conn, window, [10]),
            "sql": order_history.sql_customer_activity(conn, window, [10]),
            "history": order_history.fetch_history(conn, window, [10])[1],
        }
        if pg_copy.supported(conn):
            _, kept = order_history.fetch_eligible_keeping_lines(conn, window, max_products=10)
            reads["kept"] = order_history.history_from_lines(kept, window, [10])[1]
    for name, activity in reads.items():
        rows = {r.customer_id: (r.orders, r.first_week_back) for r in activity.itertuples()}
        assert rows == {1: (1, 0), 4: (1, 0)}, (name, rows)


def test_a_line_of_null_quantity_from_a_source_query_is_still_an_order_of_its_customer(orders, any_db):
    """A source query can give NULL quantities; the grouped read's "known quantity" test was NULL for
    them on PostgreSQL, which dropped the customer from the activity the bulk read kept (found by
    a hunting helper)."""
    orders.add(1, 10, AS_OF - 2 * DAY, 4.0)
    orders.add(4, 10, AS_OF - 5 * DAY, 2.0)
    query = (
        "SELECT oi.order_id AS order_id, o.customer_id AS customer_id, oi.product_id AS product_id, "
        "o.created_at AS ordered_at, CASE WHEN oi.quantity = 2.0 THEN NULL ELSE oi.quantity END AS quantity "
        "FROM order_items oi JOIN orders o ON o.id = oi.order_id"
    )
    window = dataclasses.replace(WINDOW, min_customers=1, min_orders=1)
    with any_db.connect() as conn:
        reads = {
            "fetch": order_history.fetch_customer_activity(conn, window, [10], query),
            "sql": order_history.sql_customer_activity(conn, window, [10], query),
        }
    for name, activity in reads.items():
        assert sorted(activity.customer_id) == [1, 4], name


LEGACY_DDL = [
    "CREATE TABLE legacy_client_agreement (id INTEGER PRIMARY KEY, client_id INTEGER NOT NULL)",
    (
        "CREATE TABLE legacy_order (id INTEGER PRIMARY KEY, client_agreement_id INTEGER NOT NULL, "
        '"Created" TIMESTAMP NOT NULL)'
    ),
    (
        "CREATE TABLE legacy_order_item (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, product_id INTEGER, "
        "qty REAL NOT NULL)"
    ),
]
LEGACY_QUERY = """
SELECT oi.order_id AS order_id, ca.client_id AS customer_id, oi.product_id AS product_id,
       o."Created" AS ordered_at, oi.qty AS quantity
FROM legacy_order_item oi
JOIN legacy_order o ON oi.order_id = o.id
JOIN legacy_client_agreement ca ON o.client_agreement_id = ca.id
"""


def test_a_source_query_maps_another_schema(any_db):
    """The legacy worker joined OrderItem, Order and ClientAgreement: one query replaces the schema.
    Two agreements of the same client count as one customer."""
    with any_db.begin() as conn:
        for ddl in LEGACY_DDL:
            conn.execute(sa.text(ddl))
        conn.execute(sa.text("INSERT INTO legacy_client_agreement VALUES (1, 100), (2, 100), (3, 200)"))
        day = dt.datetime.combine(AS_OF - 3 * DAY, dt.time(8))
        for order_id, agreement in ((1, 1), (2, 2), (3, 1), (4, 3), (5, 1)):
            conn.execute(
                sa.text("INSERT INTO legacy_order VALUES (:i, :a, :d)"), {"i": order_id, "a": agreement, "d": day}
            )
        # product 7: orders 1, 2, 3 all from client 100 -> one customer; product 8: clients 100 and 200
        for item, order_id, product in ((1, 1, 7), (2, 2, 7), (3, 3, 7), (4, 1, 8), (5, 4, 8), (6, 5, 8)):
            conn.execute(
                sa.text("INSERT INTO legacy_order_item VALUES (:i, :o, :p, 2)"),
                {"i": item, "o": order_id, "p": product},
            )
    assert eligible_ids(any_db, source_query=LEGACY_QUERY) == [8]
    with any_db.connect() as conn:
        matrix = order_history.fetch_weekly_history(conn, WINDOW, [8], LEGACY_QUERY).matrix
    assert matrix[0, -1] == 6


LEFT_JOIN_QUERY = """
SELECT oi.order_id, c.id AS customer_id, oi.product_id, o.created_at AS ordered_at, oi.quantity
FROM order_items oi
JOIN orders o ON oi.order_id = o.id
LEFT JOIN customers c ON c.id = o.customer_id AND c.name <> 'gone'
"""


def test_an_order_without_a_customer_does_not_count_toward_the_minimum_orders(orders, any_db):
    """Eligibility ignores lines without a customer (README, *Bad order lines*), as the legacy
    query's INNER JOIN on ClientAgreement did: two customers' two orders and one order no customer
    can be found for are two orders, not three. The line is still demand."""
    orders.add(1, 10, AS_OF - 30 * DAY)
    orders.add(2, 10, AS_OF - 20 * DAY)
    orders.add(77, 10, AS_OF - 10 * DAY)  # customer 77 is "gone": the LEFT JOIN finds none
    with any_db.begin() as conn:
        conn.execute(sa.text("UPDATE customers SET name = 'gone' WHERE id = 77"))
    assert eligible_ids(any_db, source_query=LEFT_JOIN_QUERY) == []
    with any_db.connect() as conn:
        assert order_history.sql_eligible_products(conn, WINDOW, LEFT_JOIN_QUERY).empty
        assert order_history.why_not_eligible(conn, WINDOW, [10], LEFT_JOIN_QUERY) == {10: "2 customers, 2 orders"}
    orders.add(2, 10, AS_OF - 5 * DAY)
    assert eligible_ids(any_db, source_query=LEFT_JOIN_QUERY) == [10]
    with any_db.connect() as conn:
        history = order_history.fetch_weekly_history(conn, WINDOW, [10], LEFT_JOIN_QUERY)
    assert history.matrix.sum() == 4  # the order without a customer is still demand


def test_an_unsupported_dialect_names_itself():
    from sqlalchemy.dialects import oracle

    query = sa.select(order_history.weeks_before(sa.column("t"), sa.literal("2025-01-01")))
    with pytest.raises(sa.exc.CompileError, match="oracle"):
        query.compile(dialect=oracle.dialect())


def test_history_window_drops_the_partial_oldest_week():
    window = order_history.HistoryWindow(dt.date(2019, 1, 16), dt.date(2019, 1, 1), 2, 3)
    assert window.weeks == 2
    assert window.window_start_ts == dt.datetime(2019, 1, 2)
    assert np.isclose((window.as_of_ts - window.window_start_ts).days, 14)


# --- dates SQLite keeps as text, written by other tools -------------------------------------------
#
# SQLite has no datetime type: SQLAlchemy writes '2025-11-10 00:00:00.000000', Python's sqlite3
# (its default adapter, str(datetime)) '2025-11-10 00:00:00', a DATE column or a CSV import
# '2025-11-10'. Whatever the form, orders on the as-of date are never read and orders on the
# history start day are.

WINDOW_START = AS_OF - 70 * DAY  # ten whole weeks: the history start is the weekly window's start
TEXT_DATES = order_history.HistoryWindow(AS_OF, WINDOW_START, min_customers=2, min_orders=3)
# (order id, customer, product, when, quantity): products 7 and 8 have three orders each before D
DATED_LINES = [
    (1, 1, 7, dt.datetime.combine(WINDOW_START, dt.time(0)), 3.0),  # the history start day, at midnight
    (2, 2, 7, dt.datetime.combine(AS_OF - DAY, dt.time(14)), 5.0),
    (3, 1, 7, dt.datetime.combine(AS_OF - 8 * DAY, dt.time(10)), 11.0),
    (4, 1, 8, dt.datetime.combine(AS_OF - DAY, dt.time(9)), 5.0),
    (5, 2, 8, dt.datetime.combine(AS_OF - 7 * DAY, dt.time(0)), 7.0),  # still the last history week
    (6, 1, 8, dt.datetime.combine(AS_OF - 20 * DAY, dt.time(9)), 2.0),
    (7, 2, 8, dt.datetime.combine(AS_OF, dt.time(0)), 1000.0),  # the as-of date, at midnight: never read
    (8, 1, 8, dt.datetime.combine(AS_OF + 2 * DAY, dt.time(9)), 999.0),
    (9, 2, 7, dt.datetime.combine(WINDOW_START - DAY, dt.time(23, 59, 59)), 500.0),  # before the history start
]
TEXT_FORMS = {
    "sqlite3 default adapter (seconds)": lambda when: str(when),  # '2025-11-10 00:00:00'
    "date only": lambda when: when.date().isoformat(),  # '2025-11-10'
    "ISO 8601 with T": lambda when: when.isoformat(),  # '2025-11-10T00:00:00'
    "microseconds (SQLAlchemy's own)": lambda when: when.isoformat(" ", "microseconds"),
    # the day as written, not its UTC day: date() moved midnight +02:00 to the day before (and its
    # week), while the window compared the text (found by a hunting helper)
    "ISO 8601 with a UTC offset": lambda when: when.isoformat() + "+02:00",
}


def assert_reads_the_window_of_dated_lines(engine, source_query=None, date_only=False):
    with engine.connect() as conn:
        eligible = order_history.fetch_eligible_products(conn, TEXT_DATES, source_query)
        weekly = order_history.fetch_weekly_history(conn, TEXT_DATES, [7, 8], source_query).matrix
        activity = order_history.fetch_customer_activity(conn, TEXT_DATES, [7, 8], source_query)
    assert eligible.to_dict("records") == [
        {"product_id": 7, "order_count": 3, "customer_count": 2},  # the start day's order counts
        {"product_id": 8, "order_count": 3, "customer_count": 2},  # the as-of date's does not
    ]
    expected = np.zeros((2, 10))
    expected[0, [0, -2, -1]] = [3, 11, 5]  # the start day is the oldest week's first day
    expected[1, [-3, -1]] = [2, 5 + 7]  # not 1012: the as-of date's 1000 is never read
    np.testing.assert_array_equal(weekly, expected)
    rows = {
        (r.product_id, r.customer_id): (r.orders, r.first_week_back, r.last_week_back) for r in activity.itertuples()
    }
    assert rows == {(7, 1): (2, 9, 1), (7, 2): (1, 0, 0), (8, 1): (2, 2, 0), (8, 2): (1, 0, 0)}


@pytest.mark.parametrize("form", list(TEXT_FORMS), ids=list(TEXT_FORMS))
def test_sqlite_default_tables_written_by_another_tool_read_the_same_window(sqlite_engine, form):
    """The README invites other tools to fill the default tables: here Python's sqlite3 writes them."""
    import sqlite3

    text = TEXT_FORMS[form]
    raw = sqlite3.connect(sqlite_engine.url.database)
    try:
        raw.executemany("INSERT INTO customers VALUES (?, ?)", [(1, "a"), (2, "b")])
        raw.executemany("INSERT INTO products VALUES (?, ?)", [(7, "p7"), (8, "p8")])
        raw.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(o, c, text(when)) for o, c, _, when, _ in DATED_LINES])
        raw.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity) VALUES (?, ?, ?)",
            [(o, p, q) for o, _, p, _, q in DATED_LINES],
        )
        raw.commit()
    finally:
        raw.close()
    assert_reads_the_window_of_dated_lines(sqlite_engine)


DATE_COLUMN_QUERY = (
    "SELECT order_id, customer_id, product_id, order_date AS ordered_at, qty AS quantity FROM dated_sales"
)


def test_a_date_column_as_ordered_at_reads_the_same_window(any_db):
    """FORECAST_SOURCE_QUERY over a DATE column: PostgreSQL has the type, SQLite keeps '2025-11-10'."""
    with any_db.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS dated_sales"))
        conn.execute(
            sa.text(
                "CREATE TABLE dated_sales (order_id INTEGER, customer_id INTEGER, product_id INTEGER, "
                "order_date DATE, qty REAL)"
            )
        )
        for o, c, p, when, q in DATED_LINES:
            conn.execute(
                sa.text("INSERT INTO dated_sales VALUES (:o, :c, :p, :d, :q)"),
                {"o": o, "c": c, "p": p, "d": when.date().isoformat(), "q": q},
            )
    try:
        assert_reads_the_window_of_dated_lines(any_db, DATE_COLUMN_QUERY)
    finally:
        with any_db.begin() as conn:
            conn.execute(sa.text("DROP TABLE dated_sales"))


# --- active customers from the orders read ------------------------------------------------------


def active_counts(engine, window, product_ids):
    """Active customers and expected weekly buyers per product, from each read: the grouped
    queries or the bulk read, and on PostgreSQL also the lines the eligibility read kept."""
    from forecast_pipeline.forecasting.customers import active_customers

    with engine.connect() as conn:
        _, activity = order_history.fetch_history(conn, window, product_ids)
        results = {"read": active_customers(activity, product_ids)}
        _, kept = order_history.fetch_eligible_keeping_lines(conn, window, max_products=100)
    if kept is not None:
        _, activity = order_history.history_from_lines(kept, window, product_ids)
        results["kept lines"] = active_customers(activity, product_ids)
    return results


def test_a_customer_in_the_partial_oldest_week_is_still_an_active_customer(orders, any_db):
    """The weekly matrix drops the partial week after the history start, but its orders are
    orders before the as-of date: they made the product eligible, and a one-time buyer of 38
    days ago is active (13 weeks) whichever weekday the history started on."""
    window = order_history.HistoryWindow(AS_OF, AS_OF - 40 * DAY, min_customers=2, min_orders=3)
    assert window.weeks == 5  # days 36-40 before the as-of date are the partial week
    orders.add(1, 10, AS_OF - 38 * DAY, 4.0)
    orders.add(2, 10, AS_OF - 10 * DAY, 5.0)
    orders.add(2, 10, AS_OF - 3 * DAY, 6.0)
    assert eligible_ids(any_db, window) == [10]
    with any_db.connect() as conn:
        weekly, _ = order_history.fetch_history(conn, window, [10])
    assert weekly.matrix.sum() == 11.0  # the matrix still holds whole weeks only
    for read, (count, weekly_buyers) in active_counts(any_db, window, [10]).items():
        assert count.tolist() == [2], read
        # customer 2: orders a week apart (probability 1); customer 1: a one-time buyer (1/13)
        assert weekly_buyers[0] == pytest.approx(1 + 1 / 13), read


def test_several_orders_in_one_week_are_one_week_of_buying(orders, any_db):
    """A customer who placed two orders on one day bought in one week, as a one-time buyer did:
    not a weekly buyer (two orders 0 weeks apart), churned after 8 weeks instead of 13."""
    # product 10: customer 1 orders twice on one day 10 weeks ago, customer 2 once that day
    orders.add(1, 10, AS_OF - 68 * DAY)
    orders.add(1, 10, AS_OF - 68 * DAY)
    orders.add(2, 10, AS_OF - 68 * DAY)
    # product 11: customer 1 orders twice last week, customer 2 once
    orders.add(1, 11, AS_OF - 2 * DAY)
    orders.add(1, 11, AS_OF - 2 * DAY)
    orders.add(2, 11, AS_OF - 2 * DAY)
    for read, (count, weekly_buyers) in active_counts(any_db, WINDOW, [10, 11]).items():
        assert count.tolist() == [2, 2], read
        # each of them is expected to buy once in 13 weeks, not customer 1 every week
        np.testing.assert_allclose(weekly_buyers, [2 / 13, 2 / 13], err_msg=read)
