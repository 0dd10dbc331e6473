"""What a run pays for the application schema: the ``forecast_predictions`` asset makes sure its
table is there before writing. Before migrations that was ``forecast_predictions.create(checkfirst=True)``
(one catalogue query); now it is ``upgrade_app_schema`` on a database at head (the revision and the
table list on one connection). Alternates the two ``--rounds`` times, ``--calls`` calls each, and
prints the medians in milliseconds per call.

Usage (from the repository root; the database is upgraded to head first)::

    APP_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/forecast_test \\
        .venv/bin/python benchmarks/schema_check_benchmark.py --rounds 7 --calls 50
"""

import argparse
import os
import statistics
import time

from forecast_pipeline.app_db.queue_tables import forecast_predictions
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.connections import make_engine


def per_call_ms(call, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    engine = make_engine(os.environ["APP_DATABASE_URL"])
    upgrade_app_schema(engine)
    before, after = [], []
    for _ in range(args.rounds):
        before.append(per_call_ms(lambda: forecast_predictions.create(engine, checkfirst=True), args.calls))
        after.append(per_call_ms(lambda: upgrade_app_schema(engine), args.calls))
    print(
        f"create(checkfirst) median {statistics.median(before):.1f} ms, "
        f"upgrade_app_schema at head median {statistics.median(after):.1f} ms per call"
    )


if __name__ == "__main__":
    main()
