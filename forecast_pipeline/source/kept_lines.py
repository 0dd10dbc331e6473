"""Order lines handed from the eligibility step to a one-shard date's shard step in one process.

With the in-process executor both steps run in the run's process, and the eligibility read has
already copied every line the shard would copy again (benchmarks/RESULTS.md, "Speed: read once").
The lines are kept under (run id, as-of date), one date at a time (keeping another date drops the
first), and taken once: a retried shard, another process or another run finds nothing and reads
the database as before.
"""

from __future__ import annotations

import threading

from forecast_pipeline.source.order_history import OrderLines

_lock = threading.Lock()
_kept: dict[tuple[str, str], OrderLines] = {}


def keep(run_id: str, as_of: str, lines: OrderLines) -> None:
    with _lock:
        _kept.clear()
        _kept[(run_id, as_of)] = lines


def take(run_id: str, as_of: str) -> OrderLines | None:
    """The lines kept for this run and date, removed from the store (None if there are none)."""
    with _lock:
        return _kept.pop((run_id, as_of), None)
