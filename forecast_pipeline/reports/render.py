"""Rendering a report: HTML from Jinja2 templates (autoescaped), CSV and a plain-text summary.

What a customer reads is written for a customer: product names, dates as ``10 Nov 2025`` (month
names, so the day/month order cannot be misread), times in the account's time zone with its
abbreviation, numbers with a thin space between thousands (neither ``,`` nor ``.``, which mean
opposite things in different countries), and no model names, ids or machine timestamps. Charts
are inline SVG computed here (no plotting dependency), one for the weekly total and one per top
product: recent ordered weeks, then the forecast with its range.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

CSV_HISTORY_KIND = "history"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
THIN_SPACE = "\u202f"
CADENCE_TITLES = {"daily": "Daily", "weekly": "Weekly", "biweekly": "Fortnightly", "monthly": "Monthly"}

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=lambda name: name is None or not name.endswith(".txt.j2"),  # HTML always escaped
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def day(value: dt.date | str) -> str:
    """``10 Nov 2025``."""
    value = dt.date.fromisoformat(value) if isinstance(value, str) else value
    return f"{value.day} {MONTHS[value.month - 1]} {value.year}"


def short_day(value: dt.date | str) -> str:
    """``10 Nov``."""
    value = dt.date.fromisoformat(value) if isinstance(value, str) else value
    return f"{value.day} {MONTHS[value.month - 1]}"


def moment(value: dt.datetime) -> str:
    """``10 Nov 2025, 07:30 CET``: an aware datetime already in the reader's time zone."""
    return f"{day(value.date())}, {value:%H:%M} {value.tzname()}"


def quantity(value: float | None) -> str:
    """Whole units from 10 up (and whole numbers), one decimal from 1, two significant digits below
    (0.048 of a product sold by the tonne, not 0.0); thin space between thousands."""
    if value is None:
        return "–"
    if abs(value) >= 10 or float(value).is_integer():
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:,.1f}"
    else:
        text = f"{value:.{1 - math.floor(math.log10(abs(value)))}f}".rstrip("0").rstrip(".")
    return text.replace(",", THIN_SPACE)


def change(now: float | None, before: float | None) -> str:
    if now is None or not before:
        return "–"
    percent = 100.0 * (now - before) / before
    return f"{percent:+.0f}%".replace("-", "−")


for _name, _filter in (("day", day), ("short_day", short_day), ("moment", moment), ("qty", quantity)):
    _environment.filters[_name] = _filter


# ---------------------------------------------------------------- charts


def _nice_step(maximum: float, ticks: int = 4) -> float:
    raw = max(maximum, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


@dataclass(frozen=True)
class Chart:
    """Geometry of one chart, ready for the template (coordinates as SVG point strings)."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    y_ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str]]
    history: str
    forecast: str
    band: str
    divider: float
    title: str


def chart(
    history: list[float],
    forecast: list[tuple[float, float, float]],
    first_forecast_week: dt.date,
    title: str,
    width: int = 760,
    height: int = 240,
) -> Chart:
    """History (oldest first) then forecast weeks as (predicted, lower, upper)."""
    left, right, top, bottom = 52, 12, 14, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    n_past, n = len(history), len(history) + len(forecast)
    top_value = max([*history, *(f[2] for f in forecast), *(f[0] for f in forecast), 1.0])
    step = _nice_step(top_value)
    y_max = step * math.ceil(top_value / step - 1e-9)

    def x(i: float) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    ticks, value = [], 0.0
    while value <= y_max + 1e-9:
        ticks.append((round(y(value), 1), quantity(value)))
        value += step
    every = max(1, math.ceil(n / 7))
    start = first_forecast_week - dt.timedelta(days=7 * n_past)
    labels = [(round(x(i), 1), short_day(start + dt.timedelta(days=7 * i))) for i in range(0, n, every)]
    past = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(history))
    ahead = [(n_past + i, f) for i, f in enumerate(forecast)]
    joined = ([(n_past - 1, (history[-1],) * 3)] if history else []) + ahead
    line = " ".join(f"{x(i):.1f},{y(f[0]):.1f}" for i, f in joined)
    band = [f"{x(i):.1f},{y(f[2]):.1f}" for i, f in joined] + [f"{x(i):.1f},{y(f[1]):.1f}" for i, f in reversed(joined)]
    return Chart(
        width,
        height,
        left,
        right,
        top,
        bottom,
        ticks,
        labels,
        past,
        line,
        " ".join(band),
        round(x(n_past - 0.5), 1) if history else float(left),
        title,
    )


# ---------------------------------------------------------------- documents


@dataclass(frozen=True)
class Heading:
    """Who and when, already in the account's terms (time zone applied, no ids)."""

    account_name: str
    cadence: str
    prepared_at: dt.datetime  # in the account's time zone
    time_zone: str


def _context(figures: Mapping, heading: Heading) -> dict:
    weekly = figures["weekly"]
    first_week = dt.date.fromisoformat(weekly[0]["week_start"] if weekly else figures["as_of_date"])
    total_chart = chart(
        list(figures.get("history_total") or []),
        [(w["predicted_quantity"], w["lower_sum"], w["upper_sum"]) for w in weekly],
        first_week,
        "Weekly total: ordered, then expected",
    )
    products = []
    for p in figures["top_products"]:
        products.append(
            {
                **p,
                "chart": chart(
                    list(p.get("history") or []),
                    [(w["predicted_quantity"], w["confidence_lower"], w["confidence_upper"]) for w in p["weeks"]],
                    first_week,
                    f"{p['name']}: ordered, then expected",
                    width=370,
                    height=170,
                ),
                "next_week": p["weeks"][0] if p["weeks"] else None,
                "change": change(p["total_predicted_quantity"], p.get("recent_quantity")),
            }
        )
    as_of = dt.date.fromisoformat(figures["as_of_date"])
    return {
        "heading": heading,
        "report_title": f"{CADENCE_TITLES.get(heading.cadence.strip().lower(), 'Scheduled')} demand forecast",
        "figures": figures,
        "weekly": weekly,
        "horizon_weeks": len(weekly),
        "first_week": first_week,
        "last_day": dt.date.fromisoformat(weekly[-1]["week_end"]) if weekly else as_of,
        "orders_until": as_of - dt.timedelta(days=1),
        "history_weeks": len(figures.get("history_total") or []),
        "total_chart": total_chart,
        "products": products,
        "total_change": change(figures["total_predicted_quantity"], figures.get("recent_total_quantity")),
        "next_week": weekly[0] if weekly else None,
    }


def render_html(figures: Mapping, heading: Heading) -> str:
    return _environment.get_template("report.html.j2").render(**_context(figures, heading))


def render_text(figures: Mapping, heading: Heading) -> str:
    """The e-mail's plain-text part: the headline figures, for clients that show no HTML."""
    return _environment.get_template("report.txt.j2").render(**_context(figures, heading))


CSV_COLUMNS = (
    "kind",
    "product_id",
    "product_name",
    "week_start",
    "week_end",
    "quantity",
    "predicted_quantity",
    "confidence_lower",
    "confidence_upper",
)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (``=HYPERLINK(...)`` as a product name)
    gets a leading ``'`` so it shows as text (OWASP, CSV injection); numbers are left alone, so
    ``-3.5`` stays the number it is."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class _SafeWriter:
    """A ``csv.writer`` that passes every cell through :func:`csv_cell` and quotes every text cell
    (numbers bare), as OWASP advises: a carriage return inside a name stays inside its cell."""

    def __init__(self, out: io.StringIO):
        self._writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)

    def writerow(self, row: list) -> None:
        self._writer.writerow([csv_cell(v) for v in row])


def render_csv(figures: Mapping) -> str:
    """Long format: ``total`` per forecast week (summed bounds), ``product`` per top product and
    forecast week, ``history`` per top product and past week (ordered quantity)."""
    out = io.StringIO()
    writer = _SafeWriter(out)
    writer.writerow(CSV_COLUMNS)
    for w in figures["weekly"]:
        writer.writerow(
            ["total", "", "", w["week_start"], w["week_end"], ""]
            + [w["predicted_quantity"], w["lower_sum"], w["upper_sum"]]
        )
    as_of = dt.date.fromisoformat(figures["as_of_date"])
    for p in figures["top_products"]:
        past = p.get("history") or []
        for i, value in enumerate(past):
            start = as_of - dt.timedelta(days=7 * (len(past) - i))
            end = start + dt.timedelta(days=6)
            writer.writerow(
                [CSV_HISTORY_KIND, p["product_id"], p["name"], start.isoformat(), end.isoformat(), value, "", "", ""]
            )
        for w in p["weeks"]:
            writer.writerow(
                [
                    "product",
                    p["product_id"],
                    p["name"],
                    w["week_start"],
                    w["week_end"],
                    "",
                    w["predicted_quantity"],
                    w["confidence_lower"],
                    w["confidence_upper"],
                ]
            )
    return out.getvalue()
