"""The demand report of one account: which products, which forecasts, and the figures.

**Scope.** An account *owns* products (``accounts.parameters.product_ids``); a schedule may name a
subset of them (``report_schedules.parameters.product_ids``), or, for an account that owns no list,
name the products itself. A report covers exactly that set: never every product in the system. A
schedule naming a product its account does not own, or an account with no products and a schedule
naming none, fails the report with that reason (not charged). Products in scope without a cached
forecast (too little history to forecast) are listed by name as "no forecast yet".

**Which forecasts.** One as-of date for the whole report, so the weeks line up: the newest run's
(``forecast:metadata:last_run``), or, without run metadata, the newest ``forecast:asof:{date}``
hash. Forecasts older than ``REPORT_MAX_FORECAST_AGE_DAYS`` (the daily schedule is off, say) are
refused: the run fails with a ``refused: ...`` reason and is not charged to the plan.

**History.** The cached forecast holds no history, so the charts' recent weeks are read from the
order database (the ``source_db`` resource, the same order lines the forecasts were fitted on:
default schema or ``FORECAST_SOURCE_QUERY``), ``REPORT_HISTORY_WEEKS`` weeks before the as-of date
in the forecast's own 7-day buckets, so history and forecast meet at the as-of date. Product names
come from the source ``products`` table; without it (a custom source query) or without a name a
product is called "Product {id}".

**Figures.** The top ``REPORT_TOP_PRODUCTS`` products by total predicted quantity over the
horizon, and per week the total over the report's products with the *sums* of the products' 80%
bounds. Summing bounds does not give an 80% interval of the total: it is the total if every
product landed at its own 10th (90th) percentile in the same week, which only happens if their
errors move together. The report says so: an outer range, wider than the true interval.

The figures are cached in Redis for ``REPORT_CACHE_TTL_SECONDS`` under
``{prefix}:report:figures:...``, keyed by as-of date, the version of that date's hash
(``{prefix}:version:asof:{date}``, changed by every publish, a run for some products too; without
one, the run's ``last_run`` stamp), the product set, N and the history length: accounts sharing a
product set share the computation, and a rerun of the forecasts is never served stale figures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import redis
import sqlalchemy as sa

from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.cache.report_cache import RedisJsonCache
from forecast_pipeline.forecasting.batch import quantity_decimals
from forecast_pipeline.reports.config import is_email_address
from forecast_pipeline.source import order_history, source_schema

FIGURES_VERSION = "v3"  # bumped when the figures change meaning: cached ones are not read
DEMAND_PATTERNS = {
    "smooth": "Steady",
    "erratic": "Variable",
    "intermittent": "Occasional",
    "lumpy": "Occasional, variable",
}


class ReportError(ValueError):
    """The report cannot be built (bad parameters, nothing cached): the message says why."""


class ReportRefused(ReportError):
    """The report could be built but must not be sent (stale forecasts)."""


def _id_list(parameters: object, owner: str) -> tuple[int, ...] | None:
    if not isinstance(parameters, Mapping) or parameters.get("product_ids") is None:
        return None
    ids = parameters["product_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(p, int) and not isinstance(p, bool) for p in ids):
        raise ReportError(f"the {owner}'s product_ids must be a non-empty list of integers, got {ids!r}")
    return tuple(sorted(set(ids)))


def report_scope(schedule_parameters: object, account_parameters: object, account_name: str) -> tuple[int, ...]:
    """The products a report covers: the schedule's list (within the account's), else the account's."""
    owned = _id_list(account_parameters, "account")
    named = _id_list(schedule_parameters, "schedule")
    if named is not None and owned is not None:
        foreign = sorted(set(named) - set(owned))
        if foreign:
            raise ReportError(
                f"the schedule names products account {account_name!r} does not own: {', '.join(map(str, foreign))}"
            )
    scope = named or owned
    if not scope:
        raise ReportError(
            f"account {account_name!r} owns no products and the schedule names none: "
            "set them with `forecast-pipeline reports add-account --product-ids`"
        )
    return scope


def recipients_of(schedule_parameters: object, account_parameters: object) -> list[str]:
    """E-mail recipients: the schedule's ``email_to``, else the account's (none: files only)."""
    for owner, parameters in (("schedule", schedule_parameters), ("account", account_parameters)):
        if isinstance(parameters, Mapping) and parameters.get("email_to"):
            addresses = parameters["email_to"]
            valid = isinstance(addresses, list) and all(isinstance(a, str) and is_email_address(a) for a in addresses)
            if not valid:
                raise ReportError(f"the {owner}'s email_to must be a list of e-mail addresses, got {addresses!r}")
            return sorted(set(addresses))
    return []


def latest_as_of(client: redis.Redis, prefix: str) -> tuple[str, str | None] | None:
    """The newest cached as-of date and its run's ``last_run`` stamp (None when unknown)."""
    meta = forecast_cache.read_run_metadata(client, prefix)
    if meta and meta.get("as_of_date"):
        as_of = str(meta["as_of_date"])
        return as_of, str(meta.get("last_run")) if meta.get("last_run") else None
    dates = []
    for key in client.scan_iter(match=keys.history_pattern(prefix), count=500):
        key = key.decode() if isinstance(key, bytes) else key
        candidate = keys.date_of_history_key(prefix, key)
        try:
            dates.append(dt.date.fromisoformat(candidate).isoformat())
        except ValueError:  # a staging key
            continue
    if not dates:
        return None
    as_of = max(dates)
    own = forecast_cache.read_run_metadata(client, prefix, as_of)
    return as_of, str(own["last_run"]) if own and own.get("last_run") else None


def check_fresh(as_of: str, now: dt.datetime, max_age_days: int, timezone: str = "UTC") -> None:
    """Refuse forecasts older than ``max_age_days``, counted in days of ``timezone``, the
    partitions' (``FORECAST_SCHEDULE_TIMEZONE``), whose days the as-of dates are."""
    age = (now.astimezone(zoneinfo.ZoneInfo(timezone)).date() - dt.date.fromisoformat(as_of)).days
    if age > max_age_days:
        raise ReportRefused(
            f"refused: the newest forecasts are {age} days old (as of {as_of}), older than "
            f"REPORT_MAX_FORECAST_AGE_DAYS={max_age_days}; is the daily forecast schedule running?"
        )


def load_forecasts(
    client: redis.Redis, prefix: str, as_of: str, product_ids: Iterable[int]
) -> tuple[dict[int, dict], list[int]]:
    """The as-of date's cached forecasts of the products, and the products that have none."""
    ids = list(product_ids)
    docs = client.hmget(keys.history_key(prefix, as_of), [str(p) for p in ids])
    found = {pid: json.loads(doc) for pid, doc in zip(ids, docs, strict=True) if doc}
    return found, [pid for pid in ids if pid not in found]


def read_history(
    engine: sa.Engine, source_query: str | None, as_of: str, product_ids: Iterable[int], weeks: int
) -> dict[int, list[float]]:
    """Weekly ordered quantity of each product, ``weeks`` 7-day buckets before the as-of date,
    oldest first (the buckets the forecast continues): the forecast's own weekly read, so the
    report's history follows the same rules for returns and unknown quantities."""
    ids = sorted(set(product_ids))
    if not ids or weeks == 0:
        return {pid: [0.0] * weeks for pid in ids}
    as_of_day = dt.date.fromisoformat(as_of)
    window = order_history.HistoryWindow(
        as_of=as_of_day, history_start=as_of_day - dt.timedelta(weeks=weeks), min_customers=0, min_orders=0
    )
    with engine.connect() as conn:
        matrix = order_history.fetch_weekly_history(conn, window, ids, source_query).matrix
    return {pid: [round(float(q), 2) for q in matrix[i]] for i, pid in enumerate(ids)}


def read_product_names(engine: sa.Engine, product_ids: Iterable[int]) -> dict[int, str]:
    """Names from the source ``products`` table; {} when there is none (a custom source query)."""
    ids = sorted(set(product_ids))
    with engine.connect() as conn:
        if not ids or not sa.inspect(conn).has_table("products"):
            return {}
        p = source_schema.products
        rows = conn.execute(sa.select(p.c.id, p.c.name).where(p.c.id.in_(sa.bindparam("ids", ids, expanding=True))))
        return {int(pid): name.strip() for pid, name in rows if name and name.strip()}


def product_name(product_id: int, names: Mapping[int, str] | Mapping[str, str]) -> str:
    return names.get(product_id) or names.get(str(product_id)) or f"Product {product_id}"


def _quantity(value: float) -> float:
    """A quantity as the forecast documents give it (see :func:`batch.quantity_decimals`)."""
    return round(value, quantity_decimals(value))


def compute_figures(
    forecasts: Mapping[int, dict],
    top_n: int,
    as_of: str,
    missing: list[int],
    history: Mapping[int, list[float]] | None = None,
    names: Mapping[int, str] | None = None,
) -> dict:
    """The report's numbers (pure): top products, weekly totals with summed bounds, history."""
    history, names = history or {}, names or {}
    if not forecasts:
        raise ReportError(
            f"no cached forecasts for as-of {as_of}"
            + (f" for products {sorted(missing)}" if missing else "")
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
        past = [float(v) for v in history.get(int(pid), [])]
        total = sum(float(p["predicted_quantity"]) for p in predictions)
        products.append(
            {
                "product_id": int(pid),
                "name": product_name(int(pid), names),
                "total_predicted_quantity": _quantity(total),
                "avg_weekly_quantity": _quantity(total / len(predictions)) if predictions else 0.0,
                # as many weeks ordered as forecast, or none (REPORT_HISTORY_WEEKS below the horizon)
                "recent_quantity": _quantity(sum(past[-len(predictions) :]))
                if predictions and len(past) >= len(predictions)
                else None,
                "demand_pattern": DEMAND_PATTERNS.get(str(meta.get("demand_class"))),
                "history": past,
                "weeks": [
                    {
                        "week_start": p["week_start"],
                        "week_end": p["week_end"],
                        "predicted_quantity": _quantity(float(p["predicted_quantity"])),
                        "confidence_lower": _quantity(float(p["confidence_lower"])),
                        "confidence_upper": _quantity(float(p["confidence_upper"])),
                    }
                    for p in predictions
                ],
            }
        )
    products.sort(key=lambda p: (-p["total_predicted_quantity"], p["product_id"]))
    weekly = [
        {**w, **{k: _quantity(w[k]) for k in ("predicted_quantity", "lower_sum", "upper_sum")}}
        for _, w in sorted(weeks.items())
    ]
    history_weeks = max((len(v) for v in history.values()), default=0)
    history_total = [
        _quantity(sum(float(history[pid][i]) for pid in forecasts if int(pid) in history)) for i in range(history_weeks)
    ]
    return {
        "as_of_date": as_of,
        "product_count": len(forecasts),
        "missing_products": [
            {"product_id": pid, "name": product_name(pid, names)} for pid in sorted(int(m) for m in missing)
        ],
        "top_n": top_n,
        "top_products": products[:top_n],
        "weekly": weekly,
        "history_total": history_total,
        "total_predicted_quantity": _quantity(sum(w["predicted_quantity"] for w in weekly)),
        "total_lower_sum": _quantity(sum(w["lower_sum"] for w in weekly)),
        "total_upper_sum": _quantity(sum(w["upper_sum"] for w in weekly)),
        "recent_total_quantity": _quantity(sum(history_total[-len(weekly) :]))
        if weekly and len(history_total) >= len(weekly)
        else None,
    }


def figures_cache_key(as_of: str, version: str | None, product_ids: tuple[int, ...], top_n: int, weeks: int) -> str:
    products = hashlib.sha1(",".join(map(str, product_ids)).encode()).hexdigest()[:16]
    return f"figures:{FIGURES_VERSION}:{as_of}:{version or 'unversioned'}:{products}:{top_n}:{weeks}"


def report_figures(
    client: redis.Redis,
    prefix: str,
    product_ids: tuple[int, ...],
    top_n: int,
    cache: RedisJsonCache,
    *,
    now: dt.datetime,
    max_age_days: int,
    timezone: str = "UTC",
    history_weeks: int = 0,
    read_source: Callable[[str, list[int], int], tuple[dict, dict]] | None = None,
) -> tuple[dict, bool]:
    """The figures for the newest cached forecasts, from the cache when there; (figures, hit).
    Cached under the date's hash version, read before the figures are computed.

    ``read_source(as_of, product_ids, weeks)`` returns (history, names) from the order database."""
    latest = latest_as_of(client, prefix)
    if latest is None:
        raise ReportError(f"no forecasts cached in Redis (no {prefix}:metadata:last_run, no {prefix}:asof:* key)")
    as_of, stamp = latest
    check_fresh(as_of, now, max_age_days, timezone)
    # read before computing: a publish landing meanwhile changes it, so later reports recompute
    version = client.get(keys.version_key(prefix, as_of))
    version = (version.decode() if isinstance(version, bytes) else version) or stamp

    def compute() -> dict:
        forecasts, missing = load_forecasts(client, prefix, as_of, product_ids)
        history, names = read_source(as_of, list(product_ids), history_weeks) if read_source else ({}, {})
        return compute_figures(forecasts, top_n, as_of, missing, history, names)

    key = figures_cache_key(as_of, version, product_ids, top_n, history_weeks)
    return cache.get_or_set(key, compute)


# ---------------------------------------------------------------- files


def report_paths(reports_dir: Path, account_id: int, schedule_id: int, slot: dt.datetime) -> tuple[Path, Path]:
    stem = f"schedule-{schedule_id}-{slot.astimezone(dt.UTC):%Y%m%dT%H%MZ}"
    folder = Path(reports_dir) / f"account-{account_id}"
    return folder / f"{stem}.html", folder / f"{stem}.csv"


def write_files_atomically(files: Mapping[Path, str]) -> None:
    """Write every file or none: each goes to a temporary file in its own directory, and only
    when all are complete are they renamed into place. On any error (full or read-only volume)
    the temporary files are removed, and so is any file this call already renamed, so a failed
    report leaves no partial report behind."""
    temporaries: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temporaries[path] = Path(name)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
            placed.append(path)
    except BaseException:
        for leftover in [*temporaries.values(), *placed]:
            leftover.unlink(missing_ok=True)
        raise
