"""Report job and sensors, to merge into the code location: ``Definitions.merge(defs, report_defs)``.

No resources here: the job needs ``app_db`` and ``redis_store``, the sensors ``app_db``, all from
the main definitions. Importing this module validates the ``REPORT*`` variables, so a bad value
stops the code location from loading with a message naming it.
"""

from dagster import Definitions

from forecast_pipeline.reports.config import get_report_settings
from forecast_pipeline.reports.jobs import generate_report
from forecast_pipeline.reports.sensors import report_run_canceled, report_run_failed, report_schedule_tick

get_report_settings()

report_defs = Definitions(
    jobs=[generate_report],
    sensors=[report_schedule_tick, report_run_failed, report_run_canceled],
)
