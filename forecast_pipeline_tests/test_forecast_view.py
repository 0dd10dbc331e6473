"""The forecasts as the Dagster UI shows them: a table of the top products and a chart per product."""

import datetime as dt
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from dagster import AssetCheckKey, DagsterInstance, MarkdownMetadataValue, TableMetadataValue, materialize

from forecast_pipeline.cache import forecast_cache
from forecast_pipeline.defs.forecasts import forecast_view
from forecast_pipeline.defs.forecasts.assets import eligible_products, product_forecasts
from forecast_pipeline.defs.forecasts.checks import cached_forecasts_well_formed
from forecast_pipeline_tests.conftest import AS_OF, engine_url, forecast_resources, materialize_range

SVG = "{http://www.w3.org/2000/svg}"
SPIKE_PRODUCT = 40
CHECKS = ("failure_rate_within_limit", "cached_forecasts_well_formed")


def _svg(markdown: str) -> ET.Element:
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/svg\+xml;utf8,([^)\s]+)\)", markdown)
    assert match, markdown[:200]
    return ET.fromstring(urllib.parse.unquote(match.group(1)))


def _path_points(d: str) -> list[tuple[int, int]]:
    """Absolute points of an ``M x,y l dx,dy,dx,dy ...`` path."""
    start, steps = d[1:].split("l")
    x, y = (int(v) for v in start.split(","))
    points = [(x, y)]
    deltas = [int(v) for v in steps.split(",")]
    for dx, dy in zip(deltas[::2], deltas[1::2], strict=True):
        x, y = x + dx, y + dy
        points.append((x, y))
    return points


def _payload(product_id: int, total: float) -> dict:
    weekly = total / 12
    return {
        "product_id": product_id,
        "predictions": [
            {
                "week_start": (AS_OF + dt.timedelta(weeks=w)).isoformat(),
                "week_end": (AS_OF + dt.timedelta(weeks=w, days=6)).isoformat(),
                "predicted_quantity": weekly,
                "confidence_lower": weekly * 0.5,
                "confidence_upper": weekly * 1.5,
            }
            for w in range(12)
        ],
        "summary": {"total_predicted_quantity": total, "avg_weekly_quantity": weekly},
        "model_metadata": {"model_type": "ses", "demand_class": "smooth", "forecast_accuracy_estimate": 0.8},
    }


def test_the_table_lists_the_largest_totals_first_with_each_week_and_its_interval():
    payloads = [_payload(p, total) for p, total in ((1, 10.0), (2, 300.0), (3, 300.0), (4, 50.0))]
    assert forecast_view.table_records([payloads[0]])[0].data["week_1"] == "0.8\u00a0(0.4\u20111.2)"
    top = forecast_view.top_payloads(payloads, 3)
    assert [doc["product_id"] for doc in top] == [2, 3, 4]  # equal totals: lower id first
    record = forecast_view.table_records(top)[0].data
    assert record["product_id"] == "2" and record["total"] == 300.0
    assert record["week_1"] == "25\u00a0(12\u201138)"


def _as_the_ui_shows(record) -> dict[str, str]:
    """A table record as the UI (1.13) draws it: ``JSON.parse`` (every number a double), then each
    cell's ``toString()``."""
    parsed = json.loads(json.dumps(record.data), parse_int=float)
    return {k: f"{v:.0f}" if isinstance(v, float) and v.is_integer() else str(v) for k, v in parsed.items()}


def test_the_table_shows_product_ids_above_2_53_exactly():
    ids = [2**53 + 1, 2**63 - 1, 7]
    records = forecast_view.table_records([_payload(p, 100.0) for p in ids])
    assert [_as_the_ui_shows(r)["product_id"] for r in records] == [str(p) for p in ids]


def test_a_chart_stays_under_the_uis_inline_markdown_limit_for_large_numbers_and_ids():
    doc = _payload(2**63 - 1, 12_345_678.9)
    doc["model_metadata"]["model_type"] = "seasonal_holt"
    history = np.random.default_rng(1).gamma(2.0, 500_000.0, forecast_view.CHART_HISTORY_WEEKS).tolist()
    markdown = forecast_view.chart_markdown(doc, history, AS_OF)
    assert len(markdown) < forecast_view.INLINE_MARKDOWN_LIMIT
    assert f"product {2**63 - 1}" in _svg(markdown).find(f"{SVG}text").text
    # the most jagged series: every step from zero to the top of the scale and back
    for week, p in enumerate(doc["predictions"]):
        p["confidence_lower"], p["predicted_quantity"], p["confidence_upper"] = (
            (0, 5e5, 1e6) if week % 2 else (5e4, 1e5, 2e5)
        )
    jagged = [1e6 * (week % 2) for week in range(forecast_view.CHART_HISTORY_WEEKS)]
    markdown = forecast_view.chart_markdown(doc, jagged, AS_OF)
    assert len(markdown) < forecast_view.INLINE_MARKDOWN_LIMIT
    history_path = next(p for p in _svg(markdown).iter(f"{SVG}path") if p.get("stroke") == "dimgray")
    assert len(_path_points(history_path.get("d"))) >= 13  # shortened, still a quarter year


@pytest.fixture
def book(pg, pg_orders):
    """Products 1-22 ordering their id in units each week; product 40 the largest, with a spike."""
    for product in range(1, 23):
        pg_orders.weekly(product, customers=[product, product + 100], weeks=60, quantity=product)
    pg_orders.weekly(SPIKE_PRODUCT, customers=[1, 2], weeks=60, quantity=50)
    pg_orders.add(3, SPIKE_PRODUCT, AS_OF - dt.timedelta(days=17), quantity=200)  # third-last history week
    return pg


@pytest.mark.integration
def test_each_date_of_a_range_run_shows_its_top_forecasts_and_their_charts(book, redis_client):
    days = [AS_OF - dt.timedelta(days=1), AS_OF]
    with DagsterInstance.ephemeral() as instance:
        result = materialize_range(
            [eligible_products, product_forecasts, cached_forecasts_well_formed], book, instance, days[0], days[-1]
        )
        history = {
            name: instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(product_forecasts.key, name), limit=10
            )
            for name in CHECKS
        }
    assert result.success
    # no date's check is left "planned" (a range step has no partition of its own)
    for name, records in history.items():
        assert sorted((r.partition, r.status.value) for r in records) == [(d.isoformat(), "SUCCEEDED") for d in days], (
            name
        )
    materializations = {m.partition: m.metadata for m in result.asset_materializations_for_node("product_forecasts")}
    assert set(materializations) == {d.isoformat() for d in days}
    for partition, metadata in materializations.items():
        cached = forecast_cache.read_forecasts_for(redis_client, "forecast", partition)
        table = metadata["top_forecasts"]
        assert isinstance(table, TableMetadataValue)
        assert [c.name for c in table.schema.columns] == [
            "product_id",
            "total",
            "per_week",
            *(f"week_{w}" for w in range(1, 13)),
            "model",
            "class",
            "accuracy",
        ]
        ids = [int(r.data["product_id"]) for r in table.records]
        assert ids == [SPIKE_PRODUCT, *range(22, 22 - forecast_view.TABLE_PRODUCTS + 1, -1)], partition
        for record in table.records:
            doc = cached[int(record.data["product_id"])]
            assert record.data["total"] == doc["summary"]["total_predicted_quantity"]
            last = doc["predictions"][-1]
            assert record.data["week_12"].startswith(f"{forecast_view._number(last['predicted_quantity'])}\u00a0(")

        for rank, product in enumerate(ids[: forecast_view.CHART_PRODUCTS], start=1):
            chart = metadata[f"forecast_chart_{rank}"]
            assert isinstance(chart, MarkdownMetadataValue)
            assert len(chart.md_str) < forecast_view.INLINE_MARKDOWN_LIMIT  # rendered inline, not behind a link
            svg = _svg(chart.md_str)
            assert svg.find(f"{SVG}text").text.startswith(f"product {product}: ")
            history = _path_points(next(p for p in svg.iter(f"{SVG}path") if p.get("stroke") == "dimgray").get("d"))
            assert len(history) == forecast_view.CHART_HISTORY_WEEKS
            heights = [y for _, y in history]
            if product == SPIKE_PRODUCT:  # the spike's week is the highest point (smallest y)
                assert heights.index(min(heights)) == forecast_view.CHART_HISTORY_WEEKS - 3, heights
            else:  # a constant weekly order is a flat line
                assert len(set(heights)) == 1, (product, heights)
        assert f"forecast_chart_{forecast_view.CHART_PRODUCTS + 1}" not in metadata
    # each date's check results carry that date (a range run's step has no partition of its own)
    checks = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {(name, d.isoformat()) for name in CHECKS for d in days}
    assert all(e.passed for e in checks.values())
    assert checks[("cached_forecasts_well_formed", days[0].isoformat())].metadata["cached_forecasts"].value == 23


@pytest.mark.integration
def test_check_results_name_their_partition_and_leave_out_empty_examples(book, redis_client):
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [eligible_products, product_forecasts, cached_forecasts_well_formed],
            partition_key=AS_OF.isoformat(),
            resources=forecast_resources(engine_url(book)),
            instance=instance,
        )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"failure_rate_within_limit", "cached_forecasts_well_formed"}
    for name, evaluation in evaluations.items():
        assert evaluation.passed, name
        assert evaluation.partition == AS_OF.isoformat(), name
    well_formed = evaluations["cached_forecasts_well_formed"].metadata
    assert well_formed["cached_forecasts"].value == 23 and well_formed["malformed"].value == 0
    assert "examples" not in well_formed
    assert "first_errors" not in evaluations["failure_rate_within_limit"].metadata
