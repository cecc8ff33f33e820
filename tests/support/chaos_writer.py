"""A writer for chaos tests: debates with arguments, every command retried with its own
idempotency key until it is stored, whatever happens to the database meanwhile.

python -m tests.support.chaos_writer DB_URL SEED DEBATES [POISON_RATE]
Prints the number of distinct commands it stored.
"""

from __future__ import annotations

import functools
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg_pool import PoolTimeout

from aura_es import AuraApp, ServiceUnavailable

RETRYABLE = (ServiceUnavailable, psycopg.OperationalError, OperationalError, InterfaceError,
             PoolTimeout)


def until_stored(action: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + 120
    while True:
        try:
            return action()
        except RETRYABLE:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    url, seed, debates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    poison_rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    rng = random.Random(seed)
    app = until_stored(lambda: AuraApp(url, pool_size=2))
    commands = 0
    for d in range(debates):
        key = f"chaos:{seed}:{d}"
        debate_id = until_stored(functools.partial(
            app.start_debate, "chaos", ["a", "b"], idempotency_key=f"{key}:start"))
        commands += 1
        for n in range(rng.randint(1, 4)):
            text = "POISON" if rng.random() < poison_rate else f"point {n}"
            until_stored(functools.partial(
                app.add_argument, debate_id, "a", "for", text, round=n + 1,
                idempotency_key=f"{key}:arg:{n}"))
            commands += 1
        until_stored(functools.partial(
            app.reach_consensus, debate_id, "adopt", idempotency_key=f"{key}:end"))
        commands += 1
    app.close()
    print(commands)


if __name__ == "__main__":
    main()
