"""The code location: assets, checks, resources, IO managers, jobs and schedules in one place.

Loading this module validates the environment (see :mod:`forecast_pipeline.settings`): a bad
variable stops the code location from loading with a message that names it.
"""

from dagster import Definitions, in_process_executor, multiprocess_executor

from forecast_pipeline.alerts import definitions as alert_definitions
from forecast_pipeline.assets import eligible_products, forecast_predictions, product_forecasts
from forecast_pipeline.checks import cached_forecasts_well_formed
from forecast_pipeline.job_sensors import (
    forecast_job_cancelled,
    forecast_job_failed,
    forecast_job_queue,
    forecast_job_recovery,
    forecast_job_succeeded,
)
from forecast_pipeline.reports import definitions as report_definitions
from forecast_pipeline.resources import build_resources
from forecast_pipeline.schedules import daily_forecast_job, daily_forecast_schedule
from forecast_pipeline.settings import get_settings


def _executor(name: str):
    """in_process by default: a run's two steps are I/O and one vectorised batch, and a process
    per step costs more than it saves on one machine (see the benchmark). The forecast step
    still uses FORECAST_WORKERS processes. ``k8s`` runs each step in its own pod."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return multiprocess_executor if name == "multiprocess" else in_process_executor


settings = get_settings()
resources = build_resources(settings)

# One Definitions at module scope (Dagster refuses two): the forecast core is built inline and
# merged with each area's definitions, which bring no resources of their own.
defs = Definitions.merge(
    Definitions(
        assets=[eligible_products, product_forecasts, forecast_predictions],
        asset_checks=[cached_forecasts_well_formed],
        jobs=[daily_forecast_job],
        schedules=[daily_forecast_schedule],
        sensors=[
            forecast_job_queue,
            forecast_job_succeeded,
            forecast_job_failed,
            forecast_job_cancelled,
            forecast_job_recovery,
        ],
        resources=resources,
        executor=_executor(settings.executor),
    ),
    alert_definitions.alert_defs,
    report_definitions.report_defs,
)
