"""Alert sensors, to merge into the code location: ``Definitions.merge(defs, alert_defs)``.

No resources here: the sensors need ``app_db`` (:class:`~forecast_pipeline.app_db.AppDatabase`)
from the main definitions. Importing this module validates the ``ALERT_*`` variables, so a bad
value stops the code location from loading with a message naming it.
"""

from dagster import Definitions

from forecast_pipeline.alerts.config import get_alert_settings
from forecast_pipeline.alerts.sensors import (
    alert_evaluation_sensor,
    alert_notification_sensor,
    alert_retention_sensor,
    pipeline_health_sensor,
)

get_alert_settings()

alert_defs = Definitions(
    sensors=[alert_evaluation_sensor, alert_notification_sensor, alert_retention_sensor, pipeline_health_sensor]
)
