"""A writer process for the gap-safety property: transactions that append events (as the
recorder does, with reserved positions and the transaction's id) and then stay open for
a while, and are committed or rolled back. Prints one JSON line per transaction.

    python -m tests.support.open_writer URL SEED TRANSACTIONS
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid

import psycopg

from aura_es.dsn import parse_database_url

APPEND = (
    "WITH first AS (SELECT aura_reserve_positions(%(n)s) AS f)"
    " INSERT INTO aura_events (notification_id, originator_id, originator_version, topic,"
    " state) SELECT f + v - 1, %(id)s, v, 'test.open.v1', '{}'::bytea"
    " FROM first, generate_series(1, %(n)s) AS v RETURNING notification_id"
)


def main() -> None:
    url, seed, transactions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
        for _ in range(transactions):
            n = rng.choice([1, 1, 1, 2, 5, 40])
            commit = rng.random() > 0.15
            with conn.transaction(force_rollback=not commit):
                ids = [r[0] for r in conn.execute(APPEND, {"n": n, "id": uuid.uuid4()})]
                time.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05, 0.2]))
            print(json.dumps({"ids": ids, "committed": commit}), flush=True)


if __name__ == "__main__":
    main()
