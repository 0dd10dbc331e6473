"""Imported once by the multiprocess executor's forkserver (``FORECAST_EXECUTOR=multiprocess``):
it builds the code location and its jobs there, so every step process forked from the server
starts with them built instead of importing and validating every area again (a date of many
shards starts one process per shard)."""

from forecast_pipeline.definitions import defs

defs().get_repository_def().get_all_jobs()
