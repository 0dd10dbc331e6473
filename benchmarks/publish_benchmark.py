"""Publishing one as-of date to Redis: ``publish_staged`` (lease, the records of what a rerun
removes, the swap, ``forecast:{id}`` copied on the server, the figures) after one shard staged N
forecasts of ~2.3 KB (the size of a real 12-week document). Five repetitions, median.

The Redis database named on the command line is flushed. Usage (from the repository root)::

    .venv/bin/python benchmarks/publish_benchmark.py redis://127.0.0.1:6398/0 100000
"""

import statistics
import sys
import time

import numpy as np
import redis

from forecast_pipeline.cache import forecast_cache

url, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
client = redis.Redis.from_url(url, decode_responses=True)
weeks = [{"week": i, "predicted_quantity": 12.5, "confidence_lower": 7.25, "confidence_upper": 19.5} for i in range(12)]
doc = {"as_of_date": "2025-11-10", "predictions": weeks, "pad": "x" * 1500}
seconds = []
for _ in range(5):
    client.flushdb()
    ids = np.arange(1, n + 1, dtype=np.int64)
    forecast_cache.stage_forecasts(
        client, "forecast", "2025-11-10", "run", [{**doc, "product_id": int(i)} for i in ids], ids
    )
    started = time.perf_counter()
    forecast_cache.publish_staged(
        client, "forecast", "2025-11-10", "run", ids, 600, 600, run_metadata=lambda: {"as_of_date": "2025-11-10"}
    )
    seconds.append(time.perf_counter() - started)
client.flushdb()
print(f"{n:,} forecasts: publish median {statistics.median(seconds):.3f} s ({', '.join(f'{s:.3f}' for s in seconds)})")
