"""Writes debates whose events interleave in the log, for the partition tests.

python -m tests.support.partition_writer DB_URL PREFIX DEBATES EVENTS
Starts DEBATES debates, then adds EVENTS - 1 arguments to each, one debate after the
other in turn, every command keyed (retried until stored); prints the events stored.
"""

from __future__ import annotations

import functools
import sys

from aura_es import AuraApp
from tests.support.chaos_writer import until_stored


def main() -> None:
    url, prefix, debates, events = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    app = until_stored(lambda: AuraApp(url, pool_size=2))
    ids = [until_stored(functools.partial(
        app.start_debate, "partitions", ["a", "b"], idempotency_key=f"{prefix}:{d}:start"))
        for d in range(debates)]
    for n in range(1, events):
        for d, debate_id in enumerate(ids):
            until_stored(functools.partial(
                app.add_argument, debate_id, "a", "for", f"point {n}", round=n,
                idempotency_key=f"{prefix}:{d}:{n}"))
    app.close()
    print(debates * events)


if __name__ == "__main__":
    main()
