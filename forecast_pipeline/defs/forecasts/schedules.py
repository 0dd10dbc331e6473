"""Schedules: the daily forecast of today's as-of date."""

import datetime as dt
import zoneinfo

from dagster import AssetSelection, RunRequest, ScheduleEvaluationContext, define_asset_job, schedule

from forecast_pipeline.defs.forecasts.assets import GROUP
from forecast_pipeline.settings import get_settings

# Pod settings when runs are launched on Kubernetes (K8sRunLauncher / k8s_job_executor); ignored
# by other launchers. The model step holds a product x week matrix: ~0.3 GB per 100,000 products.
K8S_RUN_CONFIG = {
    "container_config": {
        "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
    },
    "pod_spec_config": {"restart_policy": "Never"},
}

daily_forecast_job = define_asset_job(
    "daily_forecast",
    selection=AssetSelection.groups(GROUP),
    description="Eligible products and their forecasts for one as-of date, cached in Redis.",
    tags={"dagster-k8s/config": K8S_RUN_CONFIG},
)


def as_of_for(tick: dt.datetime, timezone: str) -> str:
    """The as-of date a tick forecasts: its calendar date in the schedule's time zone."""
    return tick.astimezone(zoneinfo.ZoneInfo(timezone)).date().isoformat()


@schedule(
    job=daily_forecast_job,
    cron_schedule=get_settings().schedule_cron,
    execution_timezone=get_settings().schedule_timezone,
    description="Forecasts today's as-of date (FORECAST_SCHEDULE_CRON, FORECAST_SCHEDULE_TIMEZONE).",
)
def daily_forecast_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    as_of = as_of_for(context.scheduled_execution_time, get_settings().schedule_timezone)
    return RunRequest(run_key=f"daily-forecast-{as_of}", partition_key=as_of, tags={"forecast/trigger": "schedule"})
