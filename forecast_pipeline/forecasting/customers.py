"""Active customers: who is still buying a product, with churned customers left out.

For each (product, customer) pair we know the number of distinct weeks with an order and the
weeks since the first and last of them. A repeat customer (orders in two weeks or more) has a
typical gap of ``(first - last) / (order_weeks - 1)`` weeks: several orders in one week are one
week of buying, so a customer whose orders all fall in one week is a one-time customer. The
customer counts as **active** while the time since their last order is at most
``CHURN_GAP_MULTIPLE`` gaps (never less than ``MIN_ACTIVE_WEEKS``, never more than
``MAX_ACTIVE_WEEKS``). A one-time customer stays active for ``SINGLE_ORDER_ACTIVE_WEEKS``.

Per forecast week, ``active_customers`` is the number of active customers expected to order in
that week: the sum of each active customer's weekly order probability (``1 / gap``, capped at
1), rounded. The summary's ``active_customers`` is the count of active customers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

CHURN_GAP_MULTIPLE = 2.5
MIN_ACTIVE_WEEKS = 8
MAX_ACTIVE_WEEKS = 52
SINGLE_ORDER_ACTIVE_WEEKS = 13


def active_customers(activity: pd.DataFrame, product_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Active-customer count and expected weekly buyers per product, aligned with ``product_ids``.

    ``activity`` has the columns ``product_id, order_weeks, first_week_back, last_week_back`` (weeks
    counted back from the as-of date, 0 = the week just before it).
    """
    count = np.zeros(len(product_ids), dtype=np.int64)
    weekly = np.zeros(len(product_ids))
    if activity.empty:
        return count, weekly
    order_weeks = activity["order_weeks"].to_numpy(dtype=float)
    first = activity["first_week_back"].to_numpy(dtype=float)
    last = activity["last_week_back"].to_numpy(dtype=float)
    repeat = order_weeks >= 2
    gap = np.where(repeat, np.maximum((first - last) / np.maximum(order_weeks - 1, 1), 1.0), SINGLE_ORDER_ACTIVE_WEEKS)
    allowed = np.where(
        repeat,
        np.clip(CHURN_GAP_MULTIPLE * gap, MIN_ACTIVE_WEEKS, MAX_ACTIVE_WEEKS),
        SINGLE_ORDER_ACTIVE_WEEKS,
    )
    recency = last + 1  # weeks since the last order's week ended, at least 1
    active = recency <= allowed
    probability = np.where(active, np.minimum(1.0, 1.0 / gap), 0.0)

    rows = pd.Index(product_ids).get_indexer(activity["product_id"].to_numpy())
    known = rows >= 0
    np.add.at(count, rows[known], active[known].astype(np.int64))
    np.add.at(weekly, rows[known], probability[known])
    return count, weekly
