"""Features that need PostgreSQL for the application tables (the request queue and the report tick
claim rows with ``FOR UPDATE SKIP LOCKED``). On any other database (the embedded SQLite default)
their sensors are off by default with the reason in their description, and their commands refuse
in one line naming ``APP_DATABASE_URL``: nothing accepts work it could never do."""

import sqlalchemy as sa

from forecast_pipeline.settings import normalize_database_url, redact_url


def is_postgres_url(url: str) -> bool:
    """Whether the URL names PostgreSQL, without connecting (the settings validated it)."""
    return sa.engine.make_url(normalize_database_url(url)).get_backend_name() == "postgresql"


def postgres_only_reason(url: str, feature: str) -> str | None:
    """Why ``feature`` cannot run on this application database (None on PostgreSQL): one line
    naming what to set. Commands refuse with it, so no work is accepted that could never run."""
    if is_postgres_url(url):
        return None
    return (
        f"{feature} needs PostgreSQL (it claims rows with FOR UPDATE SKIP LOCKED): set APP_DATABASE_URL "
        f"to a postgresql:// URL (now {redact_url(normalize_database_url(url))})"
    )
