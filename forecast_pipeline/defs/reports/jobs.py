"""The ``generate_report`` job: one run per schedule slot (``schedule_run_id`` in the run config).

1. In one short transaction: lock the schedule run, check the account's plan limit (which locks
   the account row, so two runs of one account cannot both take its last report) and record the
   ``report_generations`` row: ``skipped_limit`` (the run ends here, no heavy work) or ``running``.
2. Work out the scope (the account's products, or the schedule's subset), refuse stale forecasts,
   build the figures (cached forecasts from Redis, recent history and product names from the order
   database), render them and write the HTML and CSV to ``REPORTS_DIR`` all-or-nothing.
3. E-mail the report to its recipients when there are any.
4. Record ``succeeded`` with the output location, or ``failed`` with the reason (the run then
   fails): a refused (stale) report, a report that could not be written (nothing left on disk),
   or one that was written but not delivered (files kept, locations recorded).

The plan is charged only for ``succeeded`` reports: a ``running`` row holds its place while it
runs, and a failed or refused one gives it back. ``schedule_runs.status`` follows: ``queued``
(tick) -> ``running`` -> ``succeeded`` / ``skipped_limit`` / ``failed``. A run that fails before
the step starts (its run worker lost, say) is marked ``failed`` by the ``report_run_failed`` sensor.
Re-executing a run regenerates (and re-sends) its report and updates the same generation row
(unique per schedule run): it is never counted twice.
"""

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from dagster import (
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    get_dagster_logger,
    in_process_executor,
    job,
    op,
)
from sqlalchemy.dialects import postgresql, sqlite

from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.cache import keys
from forecast_pipeline.cache.report_cache import RedisJsonCache
from forecast_pipeline.reports.cadence import ScheduleDefinitionError, load_timezone
from forecast_pipeline.reports.config import get_report_settings
from forecast_pipeline.reports.delivery import DeliveryError, build_message, send
from forecast_pipeline.reports.limits import LimitDecision, check_report_limit
from forecast_pipeline.reports.render import Heading, day, render_csv, render_html, render_text
from forecast_pipeline.reports.report import (
    ReportError,
    read_history,
    read_product_names,
    recipients_of,
    report_figures,
    report_paths,
    report_scope,
    write_files_atomically,
)
from forecast_pipeline.app_db.report_tables import accounts, report_generations, report_schedules, schedule_runs
from forecast_pipeline.resources import RedisStore, SourceDatabase
from forecast_pipeline.settings import get_settings

log = get_dagster_logger(__name__)

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
    recipients: tuple[str, ...] = ()


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
                a.timezone.label("account_timezone"),
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
    source_db: SourceDatabase | None = None,
    run_id: str | None = None,
    reports_dir: str | Path | None = None,
    top_products: int | None = None,
    now: dt.datetime | None = None,
    logger: logging.Logger | None = None,
) -> ReportOutcome:
    """Run one schedule run's report (steps 1-4 above). Raises :class:`ReportError` (bad
    parameters, nothing cached, stale forecasts, not delivered) or whatever else failed, after
    recording ``failed``."""
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

    written: tuple[Path, Path] | None = None
    try:
        scope = report_scope(row.schedule_parameters, row.account_parameters, row.account_name)
        recipients = recipients_of(row.schedule_parameters, row.account_parameters)
        if recipients and settings.smtp is None:
            raise ReportError(
                f"the report has recipients ({', '.join(recipients)}) but REPORT_SMTP_HOST is not set: "
                "set the SMTP settings, or remove the recipients to keep files only"
            )
        top_n = _top_n(top_products, row.schedule_parameters, settings.top_products)
        redis_store.ensure_reachable()  # a Failure naming the URL, recorded as the slot's error
        client = redis_store.client()
        cache = RedisJsonCache(client, keys.report_prefix(redis_store.key_prefix), settings.cache_ttl_seconds)

        def read_source(as_of: str, product_ids: list[int], weeks: int) -> tuple[dict, dict]:
            if source_db is None:
                return {}, {}
            source = source_db.engine()
            return (
                read_history(source, source_db.source_query, as_of, product_ids, weeks),
                read_product_names(source, product_ids),
            )

        figures, hit = report_figures(
            client,
            redis_store.key_prefix,
            scope,
            top_n,
            cache,
            now=now,
            max_age_days=settings.max_forecast_age_days,
            timezone=get_settings().schedule_timezone,  # the as-of dates' days
            history_weeks=settings.history_weeks if source_db is not None else 0,
            read_source=read_source,
        )
        account_tz = load_timezone(row.account_timezone)
        heading = Heading(
            account_name=row.account_name,
            cadence=row.cadence,
            prepared_at=row.scheduled_for.astimezone(account_tz),
            time_zone=row.account_timezone,
        )
        html = render_html(figures, heading)
        html_path, csv_path = report_paths(
            Path(reports_dir) if reports_dir else settings.reports_dir,
            row.account_id,
            row.schedule_id,
            row.scheduled_for,
        )
        write_files_atomically({csv_path: render_csv(figures), html_path: html})
        written = html_path, csv_path
        if recipients:
            subject = f"Demand forecast for {row.account_name}, {day(heading.prepared_at.date())}"
            message = build_message(
                settings.smtp, recipients, subject, render_text(figures, heading), html, [html_path, csv_path]
            )
            send(settings.smtp, message)
    except Exception as exc:
        known = isinstance(exc, (ReportError, DeliveryError))
        error = str(exc) if known else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, Failure):
            error = exc.description or error
        if written:
            error += f" (report written to {written[0]})"
        mark_failed(engine, schedule_run_id, error, run_id=run_id, written=written)
        logger.error(f"report for schedule run {schedule_run_id} failed: {error}")
        if isinstance(exc, DeliveryError):
            raise ReportError(error) from exc
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
    delivered = f", e-mailed to {len(recipients)} recipient(s)" if recipients else ""
    logger.info(
        f"report for account {row.account_id} (schedule run {schedule_run_id}) written to {html_path}{delivered}: "
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
        recipients=tuple(recipients),
    )


def mark_failed(
    engine: sa.Engine,
    schedule_run_id: int,
    error: str,
    run_id: str | None = None,
    written: tuple[Path, Path] | None = None,
) -> bool:
    """Close a schedule run (and its running generation) as failed; False if it was already final.
    ``written``: the files a report wrote before it failed (delivery), recorded with the failure."""
    r = schedule_runs.c
    files = {"output_location": str(written[0]), "csv_location": str(written[1])} if written else {}
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
            .values(status="failed", error=error, finished_at=sa.func.now(), **files)
        )
    return bool(changed)


@op(
    name=OP_NAME,
    description=(
        "Checks the account's plan limit, then builds the demand report of the account's products from the "
        "cached forecasts and the order history, writes it and e-mails it to its recipients."
    ),
)
def build_scheduled_report(
    context: OpExecutionContext,
    config: ReportRunConfig,
    app_db: AppDatabase,
    redis_store: RedisStore,
    source_db: SourceDatabase,
):
    try:
        outcome = produce_report(
            app_db.engine(),
            redis_store,
            config.schedule_run_id,
            source_db=source_db,
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
            emailed_to=len(outcome.recipients),
        )
    return Output(outcome.status, metadata=metadata)


@job(
    name="generate_report",
    executor_def=in_process_executor,
    description="One scheduled demand report (schedule_run_id in the run config); launched by report_schedule_tick.",
)
def generate_report():
    build_scheduled_report()
