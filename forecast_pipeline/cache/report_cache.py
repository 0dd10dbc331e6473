"""A small Redis cache of JSON values (the legacy worker's ``cache.py``): ``get`` / ``set`` with a
TTL / ``delete``. Keys live under a namespace, e.g. ``forecast:report`` (``FORECAST_KEY_PREFIX``
plus ``report``), so they never mix with the forecast keys the API reads.

A missing, expired or undecodable value is a miss (``None``): callers compute it again. Redis
errors are not hidden: the report reads its forecasts from the same Redis anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)


class RedisJsonCache:
    def __init__(self, client: redis.Redis, namespace: str, default_ttl_seconds: int = 3600):
        if default_ttl_seconds < 1:
            raise ValueError(f"default_ttl_seconds must be at least 1, got {default_ttl_seconds}")
        self.client = client
        self.namespace = namespace.rstrip(":")
        self.default_ttl_seconds = default_ttl_seconds

    def key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def get(self, key: str) -> Any | None:
        raw = self.client.get(self.key(key))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("cache value under %s is not JSON: treated as a miss", self.key(key))
            return None

    def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        ttl = self.default_ttl_seconds if ttl_seconds is None else ttl_seconds
        if ttl < 1:
            raise ValueError(f"ttl_seconds must be at least 1, got {ttl}")
        self.client.set(self.key(key), json.dumps(value, separators=(",", ":")), ex=ttl)

    def delete(self, key: str) -> bool:
        return bool(self.client.delete(self.key(key)))

    def get_or_set(self, key: str, compute: Callable[[], Any], ttl_seconds: int | None = None) -> tuple[Any, bool]:
        """The cached value and True, or ``compute()`` stored and returned with False."""
        cached = self.get(key)
        if cached is not None:
            return cached, True
        value = compute()
        self.set(key, value, ttl_seconds)
        return value, False
