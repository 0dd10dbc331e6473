"""Report settings from environment variables, validated when the code location loads.

Same rules as :mod:`forecast_pipeline.settings`: an unset or blank variable takes its default, and
every bad value is reported at once in a :class:`~forecast_pipeline.settings.ConfigError` naming
the variable.

| variable | default | meaning |
|---|---|---|
| ``REPORTS_DIR`` | ``<repo>/reports`` | where report HTML and CSV files are written (created if missing) |
| ``REPORT_TOP_PRODUCTS`` | ``10`` | products listed in a report, by total predicted quantity |
| ``REPORT_CACHE_TTL_SECONDS`` | ``3600`` | TTL of a report's computed figures in Redis |
| ``REPORT_TICK_LIMIT`` | ``100`` | due schedules claimed per tick (the rest wait for the next) |
| ``REPORT_LAUNCH_GRACE_SECONDS`` | ``300`` | a recorded slot with no Dagster run after this is requested again |
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from forecast_pipeline.settings import PROJECT_ROOT, EnvReader

REPORT_DEFAULTS: dict[str, str] = {
    "REPORTS_DIR": str(PROJECT_ROOT / "reports"),
    "REPORT_TOP_PRODUCTS": "10",
    "REPORT_CACHE_TTL_SECONDS": "3600",
    "REPORT_TICK_LIMIT": "100",
    "REPORT_LAUNCH_GRACE_SECONDS": "300",
}


@dataclass(frozen=True)
class ReportSettings:
    reports_dir: Path
    top_products: int
    cache_ttl_seconds: int
    tick_limit: int
    launch_grace_seconds: int


def load_report_settings(environ: Mapping[str, str] | None = None) -> ReportSettings:
    """Read and validate every report variable; raise :class:`ConfigError` listing all bad ones."""
    read = EnvReader(REPORT_DEFAULTS, environ)
    errors, raw, integer = read.errors, read.raw, read.integer

    reports_dir = Path(raw("REPORTS_DIR")).expanduser().resolve()
    if reports_dir.exists() and not reports_dir.is_dir():
        errors.append(f"REPORTS_DIR={str(reports_dir)!r} exists and is not a directory")
    else:
        existing = next((p for p in (reports_dir, *reports_dir.parents) if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK):
            errors.append(f"REPORTS_DIR={str(reports_dir)!r} cannot be created or written ({existing} is read-only)")

    settings = ReportSettings(
        reports_dir=reports_dir,
        top_products=integer("REPORT_TOP_PRODUCTS", 1, 1000),
        cache_ttl_seconds=integer("REPORT_CACHE_TTL_SECONDS", 1, 30 * 86400),
        tick_limit=integer("REPORT_TICK_LIMIT", 1, 10_000),
        launch_grace_seconds=integer("REPORT_LAUNCH_GRACE_SECONDS", 10, 86400),
    )
    read.check("report configuration")
    return settings


@functools.cache
def get_report_settings() -> ReportSettings:
    """The process's report settings, read once when the code location loads."""
    return load_report_settings()
