"""What the Dagster UI shows of one as-of date's forecasts: a table of the top products and charts.

The UI (1.13) renders table metadata as a table, and Markdown images with a ``data:`` URI but
not inline ``<svg>`` or ``<img>`` tags; it draws Markdown in place only under 1,000 characters.
So each chart is a compact SVG written here as a string: no plotting library, and cheap next to
the run (only the top products are formatted).
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Sequence
from html import escape

import numpy as np
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

TABLE_PRODUCTS = 15
CHART_PRODUCTS = 4
CHART_HISTORY_WEEKS = 26
TABLE_KEY = "top_forecasts"
CHART_KEY = "forecast_chart_{rank}"  # one per charted product, largest total first


def top_payloads(payloads: Sequence[dict], n: int) -> list[dict]:
    """The ``n`` forecasts with the largest 12-week total, largest first (ties: lower product id)."""
    return heapq.nsmallest(n, payloads, key=lambda p: (-p["summary"]["total_predicted_quantity"], p["product_id"]))


def _number(value: float) -> str:
    """Short enough for a table cell: whole units from 10 up, one decimal below."""
    return f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:.1f}"


def table_schema(weeks: int) -> TableSchema:
    return TableSchema(
        columns=[
            # text: the UI parses a record's numbers as doubles, exact for ids only up to 2**53
            TableColumn("product_id", "string"),
            TableColumn("total", "float", description="predicted total over the forecast weeks"),
            TableColumn("per_week", "float", description="average predicted quantity per week"),
            *(
                TableColumn(f"week_{week}", "string", description=f"week {week}: predicted (80% interval)")
                for week in range(1, weeks + 1)
            ),
            TableColumn("model", "string"),
            TableColumn("class", "string", description="demand class (Syntetos-Boylan, or short)"),
            TableColumn("accuracy", "float", description="1 - WAPE on the last 12 weeks held out"),
        ]
    )


def table_records(top: Sequence[dict]) -> list[TableRecord]:
    """One row per product: its figures, then each week as ``predicted (lower-upper)``."""
    records = []
    for doc in top:
        row = {
            "product_id": str(doc["product_id"]),
            "total": doc["summary"]["total_predicted_quantity"],
            "per_week": doc["summary"]["avg_weekly_quantity"],
        }
        for week, p in enumerate(doc["predictions"], start=1):
            low, point, high = p["confidence_lower"], p["predicted_quantity"], p["confidence_upper"]
            # a no-break space and hyphen: each cell stays on one line in the UI's narrow column
            row[f"week_{week}"] = f"{_number(point)}\u00a0({_number(low)}\u2011{_number(high)})"
        row["model"] = doc["model_metadata"]["model_type"]
        row["class"] = doc["model_metadata"]["demand_class"]
        row["accuracy"] = doc["model_metadata"]["forecast_accuracy_estimate"]
        records.append(TableRecord(row))
    return records


CHART_STEP = 4  # viewBox units per week
CHART_PLOT = 46  # viewBox units from zero to the highest value
CHART_TOP = 10  # viewBox units above the plot, for the title
INLINE_MARKDOWN_LIMIT = 1000  # the UI shows Markdown of this many characters or more behind a link


def chart_markdown(doc: dict, history: Sequence[float], as_of: dt.date) -> str:
    """One product's recent weekly demand, forecast and 80% band as a Markdown image.

    Kept under the UI's inline limit: integer coordinates, relative path steps, named colours and
    a percent-encoded (not base64) ``data:`` URI; a history too jagged to fit is shortened.
    """
    for weeks in (len(history), 20, 13):
        markdown = _chart_markdown(doc, history[-weeks:], as_of)
        if len(markdown) < INLINE_MARKDOWN_LIMIT:
            break
    return markdown


def _chart_markdown(doc: dict, history: Sequence[float], as_of: dt.date) -> str:
    predictions = doc["predictions"]
    point = [p["predicted_quantity"] for p in predictions]
    low = [p["confidence_lower"] for p in predictions]
    high = [p["confidence_upper"] for p in predictions]
    h, step = len(history), CHART_STEP
    top = max(max(history, default=0.0), max(high), 1e-9)
    width = (h + len(point) - 1) * step + 2

    def ys(values: Sequence[float]) -> list[int]:
        return [CHART_TOP + CHART_PLOT - round(v / top * CHART_PLOT) for v in values]

    def line(x: int, values: Sequence[float], dx: int) -> str:
        y = ys(values)
        return f"M{x},{y[0]}l" + ",".join(f"{dx},{b - a}" for a, b in zip(y, y[1:], strict=False))

    low_back = ys(low[::-1])  # the band's lower edge, drawn right to left
    band = (
        line(h * step, high, step)
        + f"L{(h + len(point) - 1) * step},{low_back[0]}l"
        + ",".join(f"{-step},{b - a}" for a, b in zip(low_back, low_back[1:], strict=False))
        + "z"
    )
    meta = doc["model_metadata"]
    total = _number(doc["summary"]["total_predicted_quantity"])
    title = f"product {doc['product_id']}: {meta['model_type']}, total {total}"
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} 66' width='{width * 5 // 2}' height='165' "
        "font-size='5.5' font-family='sans-serif'>"
        f"<path d='{band}' fill='lightsteelblue'/>"
        f"<path d='{line(0, history, step)}' fill='none' stroke='dimgray'/>"
        f"<path d='{line(h * step, point, step)}' fill='none' stroke='royalblue' stroke-width='1.5'/>"
        f"<path d='M{h * step - 2},8V57' stroke='gray' stroke-dasharray='2'/>"
        f"<text y='5'>{escape(title, quote=False)}</text>"
        f"<text x='{width}' y='5' text-anchor='end' fill='gray'>max {_number(top)}</text>"
        f"<text x='{h * step}' y='65' text-anchor='middle' fill='gray'>{as_of.isoformat()}</text></svg>"
    )
    encoded = svg.replace("%", "%25").replace(" ", "%20").replace("#", "%23").replace("(", "%28").replace(")", "%29")
    return f"![product {doc['product_id']}](data:image/svg+xml;utf8,{encoded})"


def forecast_view_metadata(
    payloads: Sequence[dict], product_ids: Sequence[int], history: np.ndarray, as_of: dt.date
) -> dict:
    """Table and chart metadata for one as-of date; ``history`` rows align with ``product_ids``."""
    if not payloads:
        return {}
    top = top_payloads(payloads, TABLE_PRODUCTS)
    charted = top[:CHART_PRODUCTS]
    rows = _rows_of(product_ids, [doc["product_id"] for doc in charted])
    metadata = {
        TABLE_KEY: MetadataValue.table(records=table_records(top), schema=table_schema(len(top[0]["predictions"])))
    }
    for rank, doc in enumerate(charted, start=1):
        recent = history[rows[doc["product_id"]], -CHART_HISTORY_WEEKS:].tolist()
        metadata[CHART_KEY.format(rank=rank)] = MetadataValue.md(chart_markdown(doc, recent, as_of))
    return metadata


def view_metadata(top: Sequence[dict], histories: dict[int, Sequence[float]], as_of: dt.date) -> dict:
    """Table and chart metadata from the date's largest forecasts (largest first) and the recent
    weekly history of those charted (a sharded run gathers these from its shards)."""
    if not top:
        return {}
    top = list(top[:TABLE_PRODUCTS])
    metadata = {
        TABLE_KEY: MetadataValue.table(records=table_records(top), schema=table_schema(len(top[0]["predictions"])))
    }
    for rank, doc in enumerate(top[:CHART_PRODUCTS], start=1):
        recent = list(histories[doc["product_id"]])[-CHART_HISTORY_WEEKS:]
        metadata[CHART_KEY.format(rank=rank)] = MetadataValue.md(chart_markdown(doc, recent, as_of))
    return metadata


def _rows_of(product_ids: Sequence[int], wanted: Sequence[int]) -> dict[int, int]:
    """Row index of each wanted product (a scan, not a dict of every product: few are wanted)."""
    wanted_set = set(wanted)
    found = {}
    for row, product_id in enumerate(product_ids):
        if product_id in wanted_set:
            found[int(product_id)] = row
            if len(found) == len(wanted_set):
                break
    return found
