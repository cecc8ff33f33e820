"""A store written by the release before lock-free appends (tests/data/pre_lock_free: a
pg_dump of it in use, and the messages its relay published) upgrades in place with
`aura-es db init`: old events stay first in their order, checkpoints, generations, dead
letters, idempotency keys and the mirror's stream stay valid, and every reader goes on
from where it stopped, missing nothing and repeating nothing."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from pathlib import Path
from typing import Any

import nats
import pytest

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.errors import SchemaMissing
from aura_es.mirror.stream import StreamSettings
from aura_es.mirror.verify import read_stream
from aura_es.testing import caught_up
from tests.support.cli import assert_one_line_error, aura
from tests.support.mirror import start_relay, stop, verify
from tests.support.poison import POISONED_SPEC
from tests.support.workers import CATALOG, assert_read_models_equal_fold, env_for, wait_for

FIXTURE = Path(__file__).parent / "data" / "pre_lock_free"
STREAM = "PRE_LOCK_FREE"
#: Where every reader of the old store had stopped (make.py: checkpoints and mirror).
OLD_CHECKPOINT = 200


def restore(url: str) -> None:
    dump = gzip.decompress((FIXTURE / "store.sql.gz").read_bytes()).decode()
    with connect(url) as conn:  # its own session: the dump empties search_path
        conn.execute(dump.encode())


def republish(nats_url: str) -> int:
    messages = json.loads(gzip.decompress((FIXTURE / "stream.json.gz").read_bytes()))

    async def send() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            settings = StreamSettings(name=STREAM, subject_prefix=STREAM.lower())
            await js.add_stream(settings.config(atomic=False))
            for m in messages:  # byte for byte what the old relay published
                await js.publish(m["subject"], base64.b64decode(m["data"]),
                                 headers=m["headers"])
        finally:
            await nc.close()
    asyncio.run(send())
    return len(messages)


def count(url: str, query: str, *params: Any) -> int:
    with connect(url) as conn:
        row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0


@pytest.mark.slow
def test_a_store_of_the_previous_release_upgrades_in_place(
    empty_db_url: str, nats_url: str,
) -> None:
    url, env = empty_db_url, env_for(empty_db_url)
    restore(url)
    old_order = [r[0] for r in connect(url).execute(
        "SELECT notification_id FROM aura_events ORDER BY notification_id")]

    # Before the upgrade: one line saying what to do, nothing written.
    assert_one_line_error(aura("status", "--catalog", str(CATALOG), env=env),
                          "aura_events.transaction_id", "aura-es db init")
    with pytest.raises(SchemaMissing, match=r"aura_events\.transaction_id"):
        AuraApp(url)
    for _ in range(2):  # and running it again changes nothing
        assert aura("db", "init", env=env).returncode == 0

    # Old events keep their order, ahead of every new one.
    with connect(url) as conn:
        assert [r[0] for r in conn.execute(
            "SELECT notification_id FROM aura_events ORDER BY transaction_id, notification_id"
        )] == old_order
        assert conn.execute("SELECT count(*) FROM aura_events WHERE transaction_id <> 0"
                            ).fetchone() == (0,)

    # Keys stored by the old release still answer their retries (G1).
    retried = aura("load", "--seed", "7", "--commands", "150", "--duplicate-rate", "0",
                   "--json", env=env)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["events_stored"] == 0
    assert count(url, "SELECT count(*) FROM aura_events") == len(old_order)
    fresh = aura("load", "--seed", "9", "--commands", "60", "--duplicate-rate", "0.2",
                 "--json", env=env)
    assert json.loads(fresh.stdout)["events_stored"] > 0, fresh.stderr
    with connect(url) as conn:
        new = [r[0] for r in conn.execute(
            "SELECT notification_id FROM aura_events WHERE transaction_id > 0")]
    assert new and min(new) > max(old_order)

    # Projections go on from their old checkpoints: exactly the events after them.
    specs = load_catalog(CATALOG).projections
    done = caught_up(url, [*specs, POISONED_SPEC])
    for spec in specs:
        after = count(url, "SELECT count(*) FROM aura_events WHERE topic = ANY(%s)"
                      " AND (transaction_id, notification_id) > (0, %s)",
                      spec.source_events, OLD_CHECKPOINT)
        assert done.applied[spec.name] == after, spec.name
    with connect(url) as conn:
        assert_read_models_equal_fold(conn)
        # The rebuilt projection stays on the generation the old release made.
        assert conn.execute(
            "SELECT generation, storage FROM aura_projection_checkpoints"
            " WHERE projection = 'DebateStateProjection'").fetchone() == (2, "debate_state__g2")

    # The old dead letter is still open, and the poisoned debate's later argument, new
    # to the readers, waits behind it (G5).
    letters = json.loads(aura("dlq", "list", "--json", env=env).stdout)
    assert [(r["projection"], r["parked_events"]) for r in letters] == [("Poisoned", 2)]

    # A rebuild under the new release gives the same read model as the upgraded one.
    rebuilt = aura("replay", "DebateStateProjection", "--json", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    with connect(url) as conn:
        assert_read_models_equal_fold(conn, ["DebateStateProjection"])
        assert conn.execute("SELECT to_regclass('debate_state__g2')").fetchone() == (None,)

    # The mirror resumes after the old relay's last message: every event once, in order.
    published = republish(nats_url)
    relay = start_relay(url, nats_url, STREAM)
    total = count(url, "SELECT count(*) FROM aura_events")
    try:
        # Caught up: verify is ok with nothing left to mirror (it is ok before the relay
        # starts too, with the new events "not yet mirrored").
        wait_for("the relay to catch up", lambda: (
            (report := verify(url, nats_url, STREAM))["ok"]
            and report["not_yet_mirrored"] == 0))
    finally:
        stop(relay)
    report = verify(url, nats_url, STREAM)
    assert report["ok"] and report["foreign_messages"] == 0, report
    assert count(url, "SELECT stream_seq FROM aura_mirror_progress") == total > published
    # New messages carry their transaction (the relay resumes by it); old ones need none.
    settings = StreamSettings(name=STREAM, subject_prefix=STREAM.lower())
    stream = asyncio.run(read_stream(nats_url, settings))
    with connect(url) as conn:
        transaction = dict(conn.execute("SELECT notification_id, transaction_id FROM aura_events"))
    assert [m.transaction for m in stream] == [transaction[m.position] for m in stream]
    assert sum(1 for m in stream if m.transaction) == len(new)
