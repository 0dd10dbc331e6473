"""Job-queue tables (filled in by the job queue work)."""
