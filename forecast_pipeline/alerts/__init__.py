"""Threshold alerts over source readings, evaluated by a Dagster sensor (the legacy alert worker),
with the pipeline's own health as one of the sources and webhook notifications."""
