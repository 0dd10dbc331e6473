"""Connections to the databases and Redis, without Dagster: the CLI, the benchmarks and the
Dagster resources (``resources.py``) all open them here, so a command that only reads a table
does not pay for importing Dagster."""

import redis
import sqlalchemy as sa
from pydantic import SecretStr

from forecast_pipeline.settings import normalize_database_url, redact_url, reveal


class RedisUnreachable(ConnectionError):
    """Redis did not answer a PING; the message is one line naming the (redacted) URL and what to do."""

    def __init__(self, line: str, url: str, error: str):
        super().__init__(line)
        self.line, self.url, self.error = line, url, error


def make_engine(url: str | SecretStr) -> sa.Engine:
    """An engine for a database URL (plain postgresql:// URLs use psycopg2)."""
    return sa.create_engine(normalize_database_url(url), pool_pre_ping=True)


def redis_client(
    url: str | SecretStr, password: str | SecretStr | None = None, *, decode_responses: bool = True
) -> redis.Redis:
    """A client (connects on first use); ``decode_responses=False`` returns bytes (pickled values)."""
    url, password = reveal(url), reveal(password)
    extra = {"password": password} if password else {}
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=30, decode_responses=decode_responses, **extra
    )


def ping_redis(client: redis.Redis, url: str | SecretStr) -> None:
    """Raise :class:`RedisUnreachable` naming the (redacted) URL if Redis does not answer a PING
    within a few seconds."""
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = " ".join(str(exc).split())
        where = redact_url(url)
        raise RedisUnreachable(  # the cause is in the line: its stack would only repeat it
            f"Redis at {where} is unreachable ({reason}): start it, or point REDIS_URL "
            "(REDIS_PASSWORD) at a running Redis",
            url=where,
            error=f"{type(exc).__name__}: {reason}",
        ) from None


def connect_redis(url: str | SecretStr, password: str | SecretStr | None = None) -> redis.Redis:
    """A connected client; raises :class:`RedisUnreachable` if Redis does not answer a PING."""
    client = redis_client(url, password)
    try:
        ping_redis(client, url)
    except RedisUnreachable:
        client.close()
        raise
    return client
