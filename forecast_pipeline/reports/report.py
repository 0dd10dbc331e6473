"""The demand report of one account, built from the forecasts cached in Redis.

**Which forecasts.** One as-of date for the whole report, so the weeks line up: the newest run's
(``forecast:metadata:last_run``), or, without run metadata, the newest ``forecast:asof:{date}``
hash. **Which products.** ``product_ids`` from the schedule's parameters, else from the account's,
else every product cached for that date. Requested products without a forecast are listed as
missing; a report with none of its products cached fails with that message.

**Figures.** The top ``REPORT_TOP_PRODUCTS`` products by total predicted quantity over the horizon
(12 weeks), and per week the account's total predicted quantity with the *sums* of the products'
80% interval bounds. Summing bounds does not give an 80% interval of the total: it is the total if
every product landed at its own 10th (90th) percentile in the same week, which only happens if
their errors move together. Read it as a pessimistic/optimistic envelope, wider than the true
interval of the total (independent errors would largely cancel).

**Output.** ``REPORTS_DIR/account-{id}/schedule-{id}-{slot UTC}.html`` with an inline SVG chart (no
plotting dependency) and a ``.csv`` next to it (long format: ``kind`` = ``total`` per week, or
``product`` per top product and week). A rerun of the same slot overwrites both (written to a
temporary file and renamed). The figures are cached in Redis for ``REPORT_CACHE_TTL_SECONDS``
under ``{prefix}:report:figures:...``, keyed by as-of date, that date's run timestamp, the product
set and N: accounts sharing a product set share the computation, and a rerun of the forecasts
(a new ``last_run`` stamp) is never served stale figures.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import redis

from forecast_pipeline import forecast_cache
from forecast_pipeline.reports.cache import RedisJsonCache


class ReportError(ValueError):
    """The report cannot be built (bad parameters, nothing cached): the message says why."""


def product_ids_from(*parameter_sets: object) -> tuple[int, ...] | None:
    """``product_ids`` from the first parameters (schedule, then account) that name them."""
    for parameters in parameter_sets:
        if not isinstance(parameters, Mapping) or parameters.get("product_ids") is None:
            continue
        ids = parameters["product_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(p, int) and not isinstance(p, bool) for p in ids):
            raise ReportError(f"product_ids must be a non-empty list of integers, got {ids!r}")
        return tuple(sorted(set(ids)))
    return None


def latest_as_of(client: redis.Redis, prefix: str) -> tuple[str, str | None] | None:
    """The newest cached as-of date and its run's ``last_run`` stamp (None when unknown)."""
    meta = forecast_cache.read_run_metadata(client, prefix)
    if meta and meta.get("as_of_date"):
        as_of = str(meta["as_of_date"])
        return as_of, str(meta.get("last_run")) if meta.get("last_run") else None
    dates = []
    for key in client.scan_iter(match=f"{prefix}:asof:*", count=500):
        key = key.decode() if isinstance(key, bytes) else key
        candidate = key[len(f"{prefix}:asof:") :]
        try:
            dates.append(dt.date.fromisoformat(candidate).isoformat())
        except ValueError:  # a staging key
            continue
    if not dates:
        return None
    as_of = max(dates)
    own = forecast_cache.read_run_metadata(client, prefix, as_of)
    return as_of, str(own["last_run"]) if own and own.get("last_run") else None


def load_forecasts(
    client: redis.Redis, prefix: str, as_of: str, product_ids: Iterable[int] | None
) -> tuple[dict[int, dict], list[int]]:
    """The as-of date's cached forecasts of the products (all of them when None), and the
    requested products that have none."""
    if product_ids is None:
        return forecast_cache.read_forecasts_for(client, prefix, as_of), []
    ids = list(product_ids)
    docs = client.hmget(forecast_cache.history_key(prefix, as_of), [str(p) for p in ids])
    found = {pid: json.loads(doc) for pid, doc in zip(ids, docs, strict=True) if doc}
    return found, [pid for pid in ids if pid not in found]


def compute_figures(forecasts: Mapping[int, dict], top_n: int, as_of: str, missing: list[int]) -> dict:
    """The report's numbers (pure): top products and weekly totals with summed bounds."""
    if not forecasts:
        raise ReportError(
            f"no cached forecasts for as-of {as_of}"
            + (f" for products {missing}" if missing else "")
            + ": has the forecast run for that date finished?"
        )
    weeks: dict[str, dict] = {}
    products = []
    for pid, doc in forecasts.items():
        predictions = doc.get("predictions") or []
        for p in predictions:
            week = weeks.setdefault(
                p["week_start"],
                {
                    "week_start": p["week_start"],
                    "week_end": p["week_end"],
                    "predicted_quantity": 0.0,
                    "lower_sum": 0.0,
                    "upper_sum": 0.0,
                    "products": 0,
                },
            )
            week["predicted_quantity"] += float(p["predicted_quantity"])
            week["lower_sum"] += float(p["confidence_lower"])
            week["upper_sum"] += float(p["confidence_upper"])
            week["products"] += 1
        meta = doc.get("model_metadata") or {}
        products.append(
            {
                "product_id": int(pid),
                "total_predicted_quantity": round(sum(float(p["predicted_quantity"]) for p in predictions), 2),
                "lower_total": round(sum(float(p["confidence_lower"]) for p in predictions), 2),
                "upper_total": round(sum(float(p["confidence_upper"]) for p in predictions), 2),
                "avg_weekly_quantity": round(
                    sum(float(p["predicted_quantity"]) for p in predictions) / len(predictions), 2
                )
                if predictions
                else 0.0,
                "active_customers": (doc.get("summary") or {}).get("active_customers"),
                "model_type": meta.get("model_type"),
                "accuracy_estimate": meta.get("forecast_accuracy_estimate"),
                "weeks": [
                    {
                        "week_start": p["week_start"],
                        "week_end": p["week_end"],
                        "predicted_quantity": p["predicted_quantity"],
                        "confidence_lower": p["confidence_lower"],
                        "confidence_upper": p["confidence_upper"],
                    }
                    for p in predictions
                ],
            }
        )
    products.sort(key=lambda p: (-p["total_predicted_quantity"], p["product_id"]))
    weekly = [
        {**w, **{k: round(w[k], 2) for k in ("predicted_quantity", "lower_sum", "upper_sum")}}
        for _, w in sorted(weeks.items())
    ]
    return {
        "as_of_date": as_of,
        "product_count": len(forecasts),
        "missing_product_ids": sorted(missing),
        "top_n": top_n,
        "top_products": products[:top_n],
        "weekly": weekly,
        "total_predicted_quantity": round(sum(w["predicted_quantity"] for w in weekly), 2),
        "total_lower_sum": round(sum(w["lower_sum"] for w in weekly), 2),
        "total_upper_sum": round(sum(w["upper_sum"] for w in weekly), 2),
    }


def figures_cache_key(as_of: str, version: str | None, product_ids: tuple[int, ...] | None, top_n: int) -> str:
    products = "all" if product_ids is None else hashlib.sha1(",".join(map(str, product_ids)).encode()).hexdigest()[:16]
    return f"figures:{as_of}:{version or 'unversioned'}:{products}:{top_n}"


def report_figures(
    client: redis.Redis,
    prefix: str,
    product_ids: tuple[int, ...] | None,
    top_n: int,
    cache: RedisJsonCache,
    ttl_seconds: int | None = None,
) -> tuple[dict, bool]:
    """The figures for the newest cached forecasts, from the cache when there; (figures, hit)."""
    latest = latest_as_of(client, prefix)
    if latest is None:
        raise ReportError(f"no forecasts cached in Redis (no {prefix}:metadata:last_run, no {prefix}:asof:* key)")
    as_of, version = latest

    def compute() -> dict:
        forecasts, missing = load_forecasts(client, prefix, as_of, product_ids)
        return compute_figures(forecasts, top_n, as_of, missing)

    return cache.get_or_set(figures_cache_key(as_of, version, product_ids, top_n), compute, ttl_seconds)


# ---------------------------------------------------------------- rendering


def _nice_step(maximum: float, ticks: int = 4) -> float:
    raw = max(maximum, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def render_svg(weekly: list[dict], width: int = 720, height: int = 280) -> str:
    """Weekly predicted totals (line) inside the summed-bounds band, as inline SVG."""
    left, right, top, bottom = 64, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(weekly)
    top_value = max([w["upper_sum"] for w in weekly] + [w["predicted_quantity"] for w in weekly] + [1.0])
    step = _nice_step(top_value)
    y_max = step * -(-top_value // step)

    def x(i: int) -> float:
        return left + (plot_w * (i / (n - 1)) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title">',
        '<title id="chart-title">Weekly predicted quantity with summed 80% interval bounds</title>',
    ]
    value = 0.0
    while value <= y_max + 1e-9:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">{value:g}</text>'
        )
        value += step
    band = [f"{x(i):.1f},{y(w['upper_sum']):.1f}" for i, w in enumerate(weekly)]
    band += [f"{x(i):.1f},{y(w['lower_sum']):.1f}" for i, w in reversed(list(enumerate(weekly)))]
    parts.append(f'<polygon class="band" points="{" ".join(band)}" fill="#bfdbfe" stroke="none"/>')
    line = " ".join(f"{x(i):.1f},{y(w['predicted_quantity']):.1f}" for i, w in enumerate(weekly))
    parts.append(f'<polyline class="predicted" points="{line}" fill="none" stroke="#1d4ed8" stroke-width="2"/>')
    for i, w in enumerate(weekly):
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(w["predicted_quantity"]):.1f}" r="3" fill="#1d4ed8">'
            f"<title>{html.escape(w['week_start'])}: {w['predicted_quantity']:g} "
            f"({w['lower_sum']:g} - {w['upper_sum']:g})</title></circle>"
            f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="10">'
            f"{html.escape(w['week_start'][5:])}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(figures: dict, heading: Mapping[str, str]) -> str:
    """The report page. ``heading``: label -> value lines shown under the title (escaped)."""
    esc = html.escape
    rows = "\n".join(
        f'<tr data-product="{p["product_id"]}"><td>{p["product_id"]}</td><td>{p["total_predicted_quantity"]:,.1f}</td>'
        f"<td>{p['avg_weekly_quantity']:,.1f}</td><td>{p['lower_total']:,.1f} - {p['upper_total']:,.1f}</td>"
        f"<td>{esc(str(p.get('model_type') or ''))}</td>"
        f"<td>{'' if p.get('accuracy_estimate') is None else format(p['accuracy_estimate'], '.2f')}</td></tr>"
        for p in figures["top_products"]
    )
    weeks = "\n".join(
        f"<tr><td>{esc(w['week_start'])} - {esc(w['week_end'])}</td><td>{w['predicted_quantity']:,.1f}</td>"
        f"<td>{w['lower_sum']:,.1f} - {w['upper_sum']:,.1f}</td><td>{w['products']}</td></tr>"
        for w in figures["weekly"]
    )
    meta = "\n".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in heading.items())
    missing = (
        f"<p class='missing'>No cached forecast for products {esc(str(figures['missing_product_ids']))}.</p>"
        if figures["missing_product_ids"]
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Demand report - {esc(heading.get("Account", ""))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#111}}table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #d1d5db;padding:.3rem .6rem;text-align:right}}th{{background:#f3f4f6}}
dl{{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}}dd{{margin:0}}</style></head>
<body>
<h1>Demand report</h1>
<dl>{meta}</dl>
<p>{figures["product_count"]} products, forecasts as of {esc(figures["as_of_date"])}:
total predicted quantity {figures["total_predicted_quantity"]:,.1f} over {len(figures["weekly"])} weeks
(sum of the products' 80% bounds {figures["total_lower_sum"]:,.1f} - {figures["total_upper_sum"]:,.1f}).</p>
{missing}
<h2>Weekly totals</h2>
{render_svg(figures["weekly"]) if figures["weekly"] else ""}
<p><small>The band sums each product's own 80% interval bounds: the total if every product landed at its
10th (90th) percentile in the same week. It is wider than an 80% interval of the total.</small></p>
<table><thead><tr><th>week</th><th>predicted</th><th>summed bounds</th><th>products</th></tr></thead>
<tbody>
{weeks}
</tbody></table>
<h2>Top {len(figures["top_products"])} products by predicted quantity</h2>
<table><thead><tr><th>product</th><th>total</th><th>per week</th><th>summed bounds</th><th>model</th>
<th>accuracy estimate</th></tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""


CSV_COLUMNS = (
    "kind",
    "product_id",
    "week_start",
    "week_end",
    "predicted_quantity",
    "confidence_lower",
    "confidence_upper",
)


def render_csv(figures: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for w in figures["weekly"]:
        writer.writerow(
            ["total", "", w["week_start"], w["week_end"], w["predicted_quantity"], w["lower_sum"], w["upper_sum"]]
        )
    for p in figures["top_products"]:
        for w in p["weeks"]:
            writer.writerow(
                [
                    "product",
                    p["product_id"],
                    w["week_start"],
                    w["week_end"],
                    w["predicted_quantity"],
                    w["confidence_lower"],
                    w["confidence_upper"],
                ]
            )
    return out.getvalue()


def report_paths(reports_dir: Path, account_id: int, schedule_id: int, slot: dt.datetime) -> tuple[Path, Path]:
    stem = f"schedule-{schedule_id}-{slot.astimezone(dt.UTC):%Y%m%dT%H%MZ}"
    folder = Path(reports_dir) / f"account-{account_id}"
    return folder / f"{stem}.html", folder / f"{stem}.csv"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
