"""G3: a reader tailing `position > last` misses nothing, whatever the writers' concurrency."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest

from aura_es.dsn import parse_database_url


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 8])
def test_tailing_reader_sees_every_event_once_in_commit_order(db_url: str, batch_size: int) -> None:
    writers = [
        subprocess.Popen(
            [
                sys.executable, "-m", "aura_es.cli", "load", "--seed", str(seed),
                "--commands", "400", "--concurrency", "2", "--batch-size", str(batch_size),
                "--duplicate-rate", "0.1", "--database-url", db_url, "--json",
            ],
            stdout=subprocess.DEVNULL,
        )
        for seed in range(8)
    ]
    seen: list[int] = []
    last = 0
    with psycopg.connect(parse_database_url(db_url).conninfo(), autocommit=True) as conn:
        def read() -> int:
            nonlocal last
            rows = conn.execute(
                "SELECT notification_id FROM aura_events WHERE notification_id > %s"
                " ORDER BY notification_id LIMIT 500",
                (last,),
            ).fetchall()
            for (position,) in rows:
                seen.append(position)
                last = position
            return len(rows)

        deadline = time.monotonic() + 180
        while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
            if read() == 0:
                time.sleep(0.001)
        assert [w.wait(timeout=60) for w in writers] == [0] * 8
        while read():
            pass
        stored = [r[0] for r in conn.execute(
            "SELECT notification_id FROM aura_events ORDER BY notification_id"
        )]
    assert len(stored) == 8 * 400
    assert seen == stored  # every committed event, once, in position order
