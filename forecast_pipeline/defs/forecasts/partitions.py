"""The as-of date partitions every forecast asset shares.

One partition per day, from the history start to today (``end_offset=1`` makes today's partition
exist, since an as-of date reads only the days before it). Timezone: the schedule's.
"""

from dagster import DailyPartitionsDefinition

from forecast_pipeline.settings import get_settings

as_of_partitions = DailyPartitionsDefinition(
    start_date=get_settings().history_start.isoformat(),
    timezone=get_settings().schedule_timezone,
    end_offset=1,
    fmt="%Y-%m-%d",
)
