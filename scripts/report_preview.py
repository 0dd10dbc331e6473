"""Render a sample demand report (made-up products and orders) and screenshot it in headless Chromium.

    .venv/bin/python scripts/report_preview.py [OUT_DIR]      (default: docs)

Writes OUT_DIR/report.html and, when ``chromium`` is on PATH, OUT_DIR/report.png (the README's
picture). The figures go through the same code as a scheduled report (compute_figures, the
Jinja2 templates); only the forecasts and the order history are invented.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import shutil
import subprocess
import sys
import zoneinfo
from pathlib import Path

from forecast_pipeline.reports.render import Heading, render_html
from forecast_pipeline.reports.report import compute_figures

PRODUCTS = {
    101: ("Espresso beans, 1 kg", 180.0, "smooth"),
    102: ("Oat milk, barista edition 1 l", 140.0, "smooth"),
    103: ("Paper cups 12 oz, sleeve of 50", 95.0, "erratic"),
    104: ("Chai syrup 750 ml", 32.0, "intermittent"),
    105: ("Decaf beans, 500 g", 24.0, "lumpy"),
    106: ("Cleaning tablets, tub of 120", 8.0, "intermittent"),
}
AS_OF = dt.date(2025, 11, 10)
HISTORY_WEEKS = 26


def sample() -> tuple[dict, dict, dict]:
    rng = random.Random(7)
    forecasts, history, names = {}, {}, {}
    for pid, (name, level, pattern) in PRODUCTS.items():
        names[pid] = name
        history[pid] = [
            round(max(0.0, level * (1 + 0.15 * math.sin((w - 26) / 4.0)) + rng.gauss(0, level * 0.12)), 0)
            for w in range(HISTORY_WEEKS)
        ]
        predictions = []
        for w in range(12):
            predicted = level * (1 + 0.12 * math.sin(w / 4.0))
            spread = level * (0.18 + 0.015 * w)
            start = AS_OF + dt.timedelta(days=7 * w)
            predictions.append(
                {
                    "week_start": start.isoformat(),
                    "week_end": (start + dt.timedelta(days=6)).isoformat(),
                    "predicted_quantity": round(predicted, 1),
                    "confidence_lower": round(max(predicted - spread, 0.0), 1),
                    "confidence_upper": round(predicted + spread * 1.2, 1),
                }
            )
        forecasts[pid] = {"predictions": predictions, "model_metadata": {"demand_class": pattern}}
    return forecasts, history, names


def main(out_dir: str = "docs") -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    forecasts, history, names = sample()
    figures = compute_figures(forecasts, 4, AS_OF.isoformat(), [107], history, {**names, 107: "Hot chocolate 1 kg"})
    prepared = dt.datetime(2025, 11, 10, 6, 30, tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))
    html = render_html(figures, Heading("Bean & Leaf Cafés", "weekly", prepared, "Europe/Berlin"))
    page = out / "report.html"
    page.write_text(html, encoding="utf-8")
    print(f"wrote {page}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser:
        picture = out / "report.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={picture.resolve()}",
                "--window-size=900,2020",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(f"wrote {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
