"""The default order-history schema. Other tools write to these tables, so the names are fixed.

A database with another schema does not need these tables: set ``FORECAST_SOURCE_QUERY`` to a
query yielding ``order_id, customer_id, product_id, ordered_at, quantity`` (see
:mod:`forecast_pipeline.source.order_history`).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("name", sa.String(200)),
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("name", sa.String(200)),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_orders_created_at", "created_at"),
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("order_id", sa.BigInteger, sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("product_id", sa.BigInteger, sa.ForeignKey("products.id"), nullable=True),
    sa.Column("quantity", sa.Float, nullable=False),
    sa.Index("ix_order_items_order_id", "order_id"),
    sa.Index("ix_order_items_product_id", "product_id"),
)

SOURCE_TABLES = ("customers", "products", "orders", "order_items")


def create_schema(engine: sa.Engine) -> None:
    """Create the default tables and indexes if they are missing (safe to repeat)."""
    metadata.create_all(engine, checkfirst=True)


def missing_tables(engine: sa.Engine) -> list[str]:
    """Default tables that do not exist in the database."""
    existing = set(sa.inspect(engine).get_table_names())
    return [name for name in SOURCE_TABLES if name not in existing]
