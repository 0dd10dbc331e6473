"""The as-of date partitions every forecast asset shares.

One partition per day, from the history start to today (``end_offset=1`` makes today's partition
exist, since an as-of date reads only the days before it). Timezone: the schedule's.
"""

from typing import TYPE_CHECKING

from dagster import DagsterUnknownPartitionError, DailyPartitionsDefinition

from forecast_pipeline.settings import get_settings

if TYPE_CHECKING:
    from dagster._core.definitions.partitions.context import PartitionLoadingContext


class AsOfPartitions(DailyPartitionsDefinition):
    """Daily partitions whose unknown-key error states the valid range and the format: Dagster's
    own ("Could not find a partition with key ...") leaves a user guessing both."""

    def validate_partition_key(self, partition_key: str, context: "PartitionLoadingContext") -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except DagsterUnknownPartitionError:
            first, last = self.get_first_partition_key(), self.get_last_partition_key()
            raise DagsterUnknownPartitionError(
                f"`{partition_key}` is not an as-of date of forecast_pipeline: partitions run from {first} to "
                f"{last} (YYYY-MM-DD; FORECAST_HISTORY_START to today in FORECAST_SCHEDULE_TIMEZONE)"
            ) from None


as_of_partitions = AsOfPartitions(
    start_date=get_settings().history_start.isoformat(),
    timezone=get_settings().schedule_timezone,
    end_offset=1,
    fmt="%Y-%m-%d",
)
