"""Makes the fixture of tests/test_upgrade_lock_free.py: a store written by aura-es as it
was before lock-free appends (commit ec25a34), in use: loaded, projected, one projection
rebuilt (generation 2), a poison event dead-lettered, mirrored to JetStream, then more
commands that nothing has read yet. Run it from a checkout of that commit:

    git worktree add /tmp/old ec25a34 && cd /tmp/old
    python /path/to/tests/data/pre_lock_free/make.py postgresql://postgres@127.0.0.1/postgres \\
        nats://127.0.0.1:4222 /path/to/tests/data/pre_lock_free

It writes store.sql.gz (pg_dump --inserts: plain SQL, restorable without psql) and
stream.json.gz (every message the old relay published, headers and bytes).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

DATABASE = "aura_pre_lock_free"
STREAM = "PRE_LOCK_FREE"


def aura(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "aura_es.cli", *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"aura-es {' '.join(args)}: {done.stderr}")
    return done.stdout


def head(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM aura_events"
                           ).fetchone()
        return int(row[0]) if row else 0


def mirrored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(position), 0) FROM aura_mirror_progress"
                           ).fetchone()
        return int(row[0]) if row else 0


async def stream_messages(nats_url: str) -> list[dict[str, Any]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM, seq)
            out.append({"subject": msg.subject, "headers": dict(msg.headers or {}),
                        "data": base64.b64encode(msg.data or b"").decode()})
        await js.delete_stream(STREAM)
        return out
    finally:
        await nc.close()


def main() -> None:
    server_url, nats_url, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = server_url.rsplit("/", 1)[0] + "/" + DATABASE
    env = {**os.environ, "AURA_ES_DATABASE_URL": url, "PYTHONPATH": os.getcwd()}
    aura(env, "db", "init")
    aura(env, "load", "--seed", "7", "--commands", "150", "--duplicate-rate", "0.2",
         "--concurrency", "4", "--batch-size", "8")

    # Every catalog projection caught up, and a poison argument dead-lettered.
    sys.path.insert(0, os.getcwd())  # the old checkout's code, tests included
    from aura_es import AuraApp
    from aura_es.catalog import load_catalog
    from aura_es.testing import caught_up
    from tests.support.poison import POISONED_SPEC

    app = AuraApp(url)
    poisoned = app.start_debate("poisoned", ["a", "b"], idempotency_key="poison-debate")
    app.add_argument(poisoned, "a", "pro", "POISON 1", round=1, idempotency_key="poison-1")
    app.add_argument(poisoned, "b", "con", "fine", round=1, idempotency_key="poison-2")
    specs = load_catalog(Path("catalog/projection-catalog.yaml")).projections
    caught_up(url, [*specs, POISONED_SPEC])
    aura(env, "replay", "DebateStateProjection", "--json")

    relay = subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "mirror", "run", "--nats-url", nats_url,
         "--stream", STREAM, "--subject-prefix", STREAM.lower()], env=env)
    deadline = time.monotonic() + 60
    while mirrored(url) < head(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    relay.send_signal(signal.SIGTERM)
    relay.wait(30)
    messages = asyncio.run(stream_messages(nats_url))

    # Written after every reader: the upgraded readers must pick these up exactly once.
    aura(env, "load", "--seed", "8", "--commands", "40", "--duplicate-rate", "0",
         "--concurrency", "4", "--batch-size", "4")
    app.add_argument(poisoned, "a", "pro", "after the poison", round=2,
                     idempotency_key="poison-3")
    app.close()

    dump = subprocess.run(
        ["pg_dump", "--inserts", "--no-owner", "--no-privileges", "--no-comments", url],
        capture_output=True, check=True).stdout
    # Newer pg_dumps wrap the script in psql meta-commands (\restrict): plain SQL only.
    dump = b"\n".join(line for line in dump.split(b"\n") if not line.startswith(b"\\"))
    (out / "store.sql.gz").write_bytes(gzip.compress(dump, mtime=0))
    (out / "stream.json.gz").write_bytes(
        gzip.compress(json.dumps(messages, indent=1).encode(), mtime=0))
    print(f"{head(url)} events, {len(messages)} mirrored, {len(dump)} bytes of SQL")


if __name__ == "__main__":
    main()
