"""The ``generate_report`` job: one run per schedule slot (``schedule_run_id`` in the run config).

1. In one short transaction: lock the schedule run, check the account's plan limit (which locks
   the account row, so two runs of one account cannot both take its last report) and record the
   ``report_generations`` row: ``skipped_limit`` (the run ends here, no heavy work) or ``running``.
2. Build the figures from the cached forecasts (Redis, cached via :mod:`.cache`) and write the
   HTML and CSV to ``REPORTS_DIR``.
3. Record ``succeeded`` with the output location, or ``failed`` with the error (the run then fails).

``schedule_runs.status`` follows: ``queued`` (tick) -> ``running`` -> ``succeeded`` /
``skipped_limit`` / ``failed``. A run that fails before the step starts (Redis unreachable, say) is
marked ``failed`` by the ``report_run_failed`` sensor. Re-executing a run regenerates its report
and updates the same generation row (unique per schedule run): it is never counted twice.
"""

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, in_process_executor, job, op
from sqlalchemy.dialects import postgresql, sqlite

from forecast_pipeline.app_db import AppDatabase
from forecast_pipeline.reports.cache import RedisJsonCache
from forecast_pipeline.reports.cadence import ScheduleDefinitionError, load_timezone
from forecast_pipeline.reports.config import get_report_settings
from forecast_pipeline.reports.limits import LimitDecision, check_report_limit
from forecast_pipeline.reports.report import (
    ReportError,
    product_ids_from,
    render_csv,
    render_html,
    report_figures,
    report_paths,
    write_atomically,
)
from forecast_pipeline.reports.schema import accounts, report_generations, report_schedules, schedule_runs
from forecast_pipeline.resources import RedisStore

log = logging.getLogger("forecast_pipeline.reports.jobs")

OP_NAME = "build_scheduled_report"
SCHEDULE_RUN_TAG = "report/schedule_run_id"
SCHEDULE_TAG = "report/schedule_id"
ACCOUNT_TAG = "report/account_id"


class ReportRunConfig(Config):
    schedule_run_id: int
    reports_dir: str | None = None
    """Default: ``REPORTS_DIR``."""
    top_products: int | None = None
    """Default: the schedule's ``parameters.top_products``, else ``REPORT_TOP_PRODUCTS``."""


def run_config_for(schedule_run_id: int) -> dict:
    return {"ops": {OP_NAME: {"config": {"schedule_run_id": int(schedule_run_id)}}}}


@dataclass(frozen=True)
class ReportOutcome:
    status: str  # succeeded | skipped_limit
    schedule_run_id: int
    account_id: int
    limit: LimitDecision
    output_location: str | None = None
    csv_location: str | None = None
    as_of_date: str | None = None
    product_count: int = 0
    cache_hit: bool = False


def _upsert(conn: sa.Connection, table: sa.Table, values: dict, conflict: list[str], update: dict):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    return conn.execute(statement.on_conflict_do_update(index_elements=conflict, set_=update))


def _top_n(override: int | None, schedule_parameters: object, default: int) -> int:
    value = override
    if value is None and isinstance(schedule_parameters, dict):
        value = schedule_parameters.get("top_products")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ReportError(f"top_products must be a whole number from 1 to 1000, got {value!r}")
    return value


def _start(engine: sa.Engine, schedule_run_id: int, run_id: str | None, now: dt.datetime):
    """Step 1: lock the run, check the limit, record ``running`` or ``skipped_limit``."""
    r, s, a = schedule_runs.c, report_schedules.c, accounts.c
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(
                r.id,
                r.schedule_id,
                r.scheduled_for,
                s.account_id,
                s.name.label("schedule_name"),
                s.cadence,
                s.timezone,
                s.parameters.label("schedule_parameters"),
                a.name.label("account_name"),
                a.parameters.label("account_parameters"),
            )
            .select_from(
                schedule_runs.join(report_schedules, s.id == r.schedule_id).join(accounts, a.id == s.account_id)
            )
            .where(r.id == schedule_run_id)
            .with_for_update(of=schedule_runs)
        ).one_or_none()
        if row is None:
            raise ReportError(f"schedule run {schedule_run_id} does not exist")
        decision = check_report_limit(conn, row.account_id, now, exclude_schedule_run_id=schedule_run_id)
        status = "running" if decision.allowed else "skipped_limit"
        finished = None if decision.allowed else now
        note = None if decision.allowed else decision.describe()
        _upsert(
            conn,
            report_generations,
            {
                "account_id": row.account_id,
                "schedule_run_id": schedule_run_id,
                "status": status,
                "created_at": now,
                "finished_at": finished,
                "error": note,
            },
            ["schedule_run_id"],
            # a re-run counts in the month it runs in, like a first run (created_at moves with it)
            {
                "status": status,
                "created_at": now,
                "finished_at": finished,
                "error": note,
                "output_location": None,
                "csv_location": None,
            },
        )
        conn.execute(
            schedule_runs.update()
            .where(r.id == schedule_run_id)
            .values(status=status, dagster_run_id=run_id, started_at=now, finished_at=finished, error=note)
        )
    return row, decision


def produce_report(
    engine: sa.Engine,
    redis_store: RedisStore,
    schedule_run_id: int,
    *,
    run_id: str | None = None,
    reports_dir: str | Path | None = None,
    top_products: int | None = None,
    now: dt.datetime | None = None,
    logger: logging.Logger | None = None,
) -> ReportOutcome:
    """Run one schedule run's report (steps 1-3 above). Raises :class:`ReportError` (bad
    parameters, nothing cached) or whatever else failed, after recording ``failed``."""
    logger = logger or log
    settings = get_report_settings()
    now = now or dt.datetime.now(dt.UTC)
    r = schedule_runs.c
    try:
        row, decision = _start(engine, schedule_run_id, run_id, now)
    except ScheduleDefinitionError as exc:  # the account's time zone
        error = f"account time zone: {exc}"
        mark_failed(engine, schedule_run_id, error, run_id=run_id)
        raise ReportError(error) from exc
    if not decision.allowed:
        logger.warning(
            f"report for account {row.account_id} (schedule {row.schedule_id}, run {schedule_run_id}) skipped: "
            f"{decision.describe()}"
        )
        return ReportOutcome("skipped_limit", schedule_run_id, row.account_id, decision)

    try:
        product_ids = product_ids_from(row.schedule_parameters, row.account_parameters)
        top_n = _top_n(top_products, row.schedule_parameters, settings.top_products)
        client = redis_store.client()
        cache = RedisJsonCache(client, f"{redis_store.key_prefix}:report", settings.cache_ttl_seconds)
        figures, hit = report_figures(client, redis_store.key_prefix, product_ids, top_n, cache)
        try:
            local_slot = row.scheduled_for.astimezone(load_timezone(row.timezone))
        except ValueError:
            local_slot = row.scheduled_for
        heading = {
            "Account": f"{row.account_name} (#{row.account_id})",
            "Schedule": f"{row.schedule_name} (#{row.schedule_id}, {row.cadence}, {row.timezone})",
            "Slot": local_slot.isoformat(),
            "Forecasts as of": figures["as_of_date"],
            "Products": "all cached" if product_ids is None else ", ".join(map(str, product_ids)),
            "Generated": now.isoformat(timespec="seconds"),
        }
        html_path, csv_path = report_paths(
            Path(reports_dir) if reports_dir else settings.reports_dir,
            row.account_id,
            row.schedule_id,
            row.scheduled_for,
        )
        write_atomically(html_path, render_html(figures, heading))
        write_atomically(csv_path, render_csv(figures))
    except Exception as exc:
        error = str(exc) if isinstance(exc, ReportError) else f"{type(exc).__name__}: {exc}"
        mark_failed(engine, schedule_run_id, error, run_id=run_id)
        logger.error(f"report for schedule run {schedule_run_id} failed: {error}")
        raise

    with engine.begin() as conn:
        conn.execute(
            report_generations.update()
            .where(report_generations.c.schedule_run_id == schedule_run_id)
            .values(
                status="succeeded",
                finished_at=sa.func.now(),
                output_location=str(html_path),
                csv_location=str(csv_path),
                as_of_date=dt.date.fromisoformat(figures["as_of_date"]),
                error=None,
            )
        )
        conn.execute(
            schedule_runs.update().where(r.id == schedule_run_id).values(status="succeeded", finished_at=sa.func.now())
        )
    logger.info(
        f"report for account {row.account_id} (schedule run {schedule_run_id}) written to {html_path}: "
        f"{figures['product_count']} products, as of {figures['as_of_date']}, figures cache {'hit' if hit else 'miss'}"
    )
    return ReportOutcome(
        "succeeded",
        schedule_run_id,
        row.account_id,
        decision,
        str(html_path),
        str(csv_path),
        figures["as_of_date"],
        figures["product_count"],
        hit,
    )


def mark_failed(engine: sa.Engine, schedule_run_id: int, error: str, run_id: str | None = None) -> bool:
    """Close a schedule run (and its running generation) as failed; False if it was already final."""
    r = schedule_runs.c
    with engine.begin() as conn:
        changed = conn.execute(
            schedule_runs.update()
            .where(r.id == schedule_run_id, r.status.in_(("queued", "running")))
            .values(
                status="failed",
                error=error,
                finished_at=sa.func.now(),
                dagster_run_id=sa.func.coalesce(sa.literal(run_id, sa.String), r.dagster_run_id),
            )
        ).rowcount
        conn.execute(
            report_generations.update()
            .where(report_generations.c.schedule_run_id == schedule_run_id, report_generations.c.status == "running")
            .values(status="failed", error=error, finished_at=sa.func.now())
        )
    return bool(changed)


@op(
    name=OP_NAME,
    description="Checks the account's plan limit, then builds the demand report from the cached forecasts.",
)
def build_scheduled_report(
    context: OpExecutionContext, config: ReportRunConfig, app_db: AppDatabase, redis_store: RedisStore
):
    try:
        outcome = produce_report(
            app_db.engine(),
            redis_store,
            config.schedule_run_id,
            run_id=context.run_id,
            reports_dir=config.reports_dir,
            top_products=config.top_products,
            logger=context.log,
        )
    except ReportError as exc:
        raise Failure(description=str(exc), metadata={"schedule_run_id": config.schedule_run_id}) from exc
    metadata = {
        "status": outcome.status,
        "schedule_run_id": outcome.schedule_run_id,
        "account_id": outcome.account_id,
        "plan_limit": outcome.limit.describe(),
    }
    if outcome.output_location:
        metadata.update(
            output_location=MetadataValue.path(outcome.output_location),
            csv_location=MetadataValue.path(outcome.csv_location),
            as_of_date=outcome.as_of_date,
            products=outcome.product_count,
            figures_cache_hit=outcome.cache_hit,
        )
    return Output(outcome.status, metadata=metadata)


@job(
    name="generate_report",
    executor_def=in_process_executor,
    description="One scheduled demand report (schedule_run_id in the run config); launched by report_schedule_tick.",
)
def generate_report():
    build_scheduled_report()
