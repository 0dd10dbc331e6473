"""The daily schedule, evaluated against a real instance the way the daemon does."""

import datetime as dt
import zoneinfo

from dagster import DagsterInstance, build_schedule_context

from forecast_pipeline.definitions import defs as load_defs
from forecast_pipeline.defs.forecasts.schedules import as_of_for, daily_forecast_schedule

defs = load_defs()


def test_the_schedule_forecasts_today_in_its_timezone():
    tick = dt.datetime(2025, 11, 10, 6, 0, tzinfo=zoneinfo.ZoneInfo("UTC"))
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        )
        request = daily_forecast_schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == "2025-11-10"
    assert request.run_key == "daily-forecast-2025-11-10"


def test_as_of_follows_the_schedule_timezone_across_midnight():
    tick = dt.datetime(2025, 11, 10, 23, 30, tzinfo=dt.UTC)
    assert as_of_for(tick, "UTC") == "2025-11-10"
    assert as_of_for(tick, "Asia/Tokyo") == "2025-11-11"
    assert as_of_for(tick, "America/Los_Angeles") == "2025-11-10"


def test_the_schedule_targets_both_assets_and_today_is_a_partition():
    job = defs.resolve_job_def("daily_forecast")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= {
        "eligible_products",
        "product_forecasts",
    }
    partitions = job.partitions_def
    today = dt.datetime.now(zoneinfo.ZoneInfo(daily_forecast_schedule.execution_timezone or "UTC")).date()
    assert partitions.has_partition_key(today.isoformat())
    assert partitions.get_first_partition_key() == "2019-01-01"
