"""Report schedules (the legacy worker's ``schedules_tick``): per-minute tick, cadences in each
schedule's own time zone, plan limits, and the demand report built from the cached forecasts."""
