"""Revisions, oldest first: 0001 is the baseline (the tables as they were before migrations)."""
