"""Erasure (crypto-shredding), on a real PostgreSQL: personal fields are sealed at rest,
open for every reader with the key, and after `aura-es erase` no byte of them is left
anywhere, while aggregates, projections and replays keep working (G13)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from aura_es.app import AuraApp
from aura_es.catalog.model import ProjectionSpec
from aura_es.erasure.erase import UnknownSubject, check_reason, erase
from aura_es.erasure.reapply import REAPPLIED, erasure_in, reason_for
from aura_es.erasure.verify import verify
from aura_es.errors import ConfigurationError, DomainError
from aura_es.masterkey import (
    MASTER_KEY,
    PREVIOUS_MASTER_KEYS,
    LocalKeyProvider,
    new_key_text,
    parse_key,
)
from aura_es.mesh.consumer import MeshConsumer, Subscription
from aura_es.mirror.cloudevents import STORE_HEADER
from aura_es.mirror.stream import StreamSettings
from aura_es.mirror.verify import each_message
from aura_es.personal import ERASED_TEXT, ERASURE_TOPIC, InvalidSubject, check_subject
from aura_es.projection import dlq
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.runner import BatchRunner
from aura_es.store import eventlog, idempotency, keystore, sealing
from aura_es.store.keyring import Keyring, SubjectErased
from aura_es.store.mapper import SealedStoredEvent
from tests.support import arguments
from tests.support.arguments import catch_up, every_byte, rows
from tests.support.mirror import head, mirrored, publish, running_relay, stream_messages
from tests.support.workers import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provider() -> LocalKeyProvider:
    return LocalKeyProvider(parse_key(os.environ[MASTER_KEY], MASTER_KEY))


def argue(app: AuraApp, debate: uuid.UUID, subject: str, text: str) -> int:
    result = app.add_argument(debate, "agent-1", "pro", text, round=1,
                              idempotency_key=str(uuid.uuid4()), subject=subject)
    return result.positions[0]


def verified(app: AuraApp, subject: str) -> Any:
    with app.connect() as conn:
        return verify(conn, provider(), subject)


def test_personal_fields_are_sealed_at_rest_and_open_for_projections(app: AuraApp) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    first = argue(app, debate, "user-1", "Alice thinks the tax is unfair")
    second = argue(app, debate, "user-2", "Bob says it funds the schools")
    stored = every_byte(app.database_url)
    assert b"Alice thinks" not in stored and b"Bob says it" not in stored
    catch_up(app.database_url)
    assert rows(app.database_url) == {
        first: ("user-1", "Alice thinks the tax is unfair"),
        second: ("user-2", "Bob says it funds the schools"),
    }
    # The typed event an aggregate's repository gives back is open too.
    events = list(app.repository.event_store.get(debate))
    assert vars(events[1])["text"] == "Alice thinks the tax is unfair"


def test_after_erase_nothing_is_left_and_everything_keeps_working(app: AuraApp) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    gone = [argue(app, debate, "user-1", f"Alice's private view number {i}") for i in range(3)]
    kept = argue(app, debate, "user-2", "Bob's view stays where it is")
    catch_up(app.database_url)

    done = erase(app, "user-1", "request 17")
    assert (done.events, done.already) == (3, False)
    assert erase(app, "user-1", "request 17").already  # idempotent
    catch_up(app.database_url)  # the erasure event reaches the read model's hook

    live = rows(app.database_url)
    assert {p: live[p] for p in gone} == {p: ("user-1", ERASED_TEXT) for p in gone}
    assert live[kept] == ("user-2", "Bob's view stays where it is")
    assert b"private view" not in every_byte(app.database_url)
    assert verified(app, "user-1").ok
    # A rebuild from the log equals the live read model.
    catch_up(app.database_url, "argument_texts_rebuilt")
    assert rows(app.database_url, "argument_texts_rebuilt") == live
    # The aggregate still loads and takes commands; the erased person's data is refused.
    assert app.get_debate(debate).arguments == 4
    argue(app, debate, "user-2", "Bob adds another point")
    with pytest.raises(SubjectErased, match="user-1"):
        argue(app, debate, "user-1", "Alice writes again")
    assert app.get_debate(debate).arguments == 5


def test_a_retried_command_of_an_erased_subject_gets_its_original_result(
        app: AuraApp) -> None:
    """The retry's save is refused (the subject is erased), and it is answered from its
    key row as any retry is: the original result, nothing stored, nothing unsealed."""
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    first = app.add_argument(debate, "agent-1", "pro", "Carol's view", round=1,
                             idempotency_key="carol-1", subject="user-3")
    erase(app, "user-3", "request 9")
    head = app.head_position()
    again = app.add_argument(debate, "agent-1", "pro", "Carol's view", round=1,
                             idempotency_key="carol-1", subject="user-3")
    assert (again.duplicate, again.positions) == (True, first.positions)
    assert app.head_position() == head
    with pytest.raises(SubjectErased, match="user-3"):
        app.add_argument(debate, "agent-1", "pro", "Carol again", round=1,
                         idempotency_key="carol-2", subject="user-3")


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.sampled_from([1, 2, 10, 63, 64, 100, 200]), where=st.floats(0, 1),
       keyed=st.booleans())
def test_an_append_for_an_erased_subject_is_refused_by_its_own_statement(
        app: AuraApp, count: int, where: float, keyed: bool) -> None:
    """A writer that still holds the subject's key (another process, its cache) gets
    past the mapper: the append's statement checks, whatever its shape (one event, many,
    a long one in chunks with the sealed event in any chunk), and stores nothing."""
    with app.connect() as conn:
        erased = conn.execute("SELECT 1 FROM aura_subject_keys WHERE subject = 'user-6'"
                              " AND erased_at IS NOT NULL").fetchone()
    if not erased:
        debate = app.start_debate("tax", ["agent-1"], idempotency_key="d-6")
        argue(app, debate, "user-6", "to be erased")
        erase(app, "user-6", "request 6")
    aggregate_id = uuid.uuid4()
    sealed_at = min(count, int(where * count) + 1)
    stored = [SealedStoredEvent(aggregate_id, v, "test.raw.v1", b"{}", "user-6")
              if v == sealed_at else StoredEvent(aggregate_id, v, "test.raw.v1", b"{}")
              for v in range(1, count + 1)]
    record = idempotency.IdempotencyRecord(
        key_hash=uuid.uuid4().hex, command_type="c", idempotency_key="k",
        aggregate_id=aggregate_id, request_hash="r", from_version=1, to_version=count)
    kwargs = idempotency.KeyRows((record,)).as_save_kwargs() if keyed else {}
    with pytest.raises(SubjectErased, match="user-6"):
        app.recorder.insert_events(stored, **kwargs)
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM aura_events WHERE originator_id = %s",
                            (aggregate_id,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM aura_idempotency WHERE key_hash = %s",
                            (record.key_hash,)).fetchone() == (0,)


def test_verify_names_a_table_that_kept_a_copy(app: AuraApp) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    argue(app, debate, "user-9", "a sentence that a careless table copies")
    with app.connect() as conn:
        conn.execute("CREATE TABLE previews (body text)")
        conn.execute("INSERT INTO previews VALUES ('quoted: a sentence that a careless table"
                     " copies, in full')")
    erase(app, "user-9", "request 3")
    found = verified(app, "user-9")
    assert [str(r) for r in found.remnants] == ["table previews: 1 copy"]
    with app.connect() as conn:
        conn.execute("DELETE FROM previews")
    assert verified(app, "user-9").ok


def test_an_event_committed_while_an_erasure_waits_for_its_gate_is_in_its_proof(
        app: AuraApp) -> None:
    """An erasure makes its proof before it takes the gate (batches wait while it holds
    it), then adds what was committed meanwhile: `--verify` finds a copy of that too."""
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    argue(app, debate, "user-7", "the first of two careful sentences")
    done: list[Any] = []
    with psycopg.connect(app.database_url) as batch:
        batch.execute(sql.SQL("SELECT {}").format(keystore.ERASURES_WAIT))  # in flight
        eraser = threading.Thread(target=lambda: done.append(erase(app, "user-7", "r")))
        eraser.start()
        with app.connect() as conn:
            wait_for("the erasure to wait for the gate", lambda: conn.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND"
                " database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone(), 30)
        argue(app, debate, "user-7", "the second sentence, written while it waited")
        batch.commit()
        eraser.join(30)
    assert [e.events for e in done] == [2]
    with app.connect() as conn:
        conn.execute("CREATE TABLE previews (body text)")
        conn.execute("INSERT INTO previews VALUES ('the second sentence, written while it"
                     " waited')")
    assert [str(r) for r in verified(app, "user-7").remnants] == ["table previews: 1 copy"]


def test_a_tampered_seal_is_dead_lettered_naming_no_value(app: AuraApp) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    position = argue(app, debate, "user-3", "words nobody may read twice")
    with app.connect() as conn:
        (state,) = conn.execute("SELECT state FROM aura_events WHERE notification_id = %s",
                                (position,)).fetchone()  # type: ignore[misc]
        data = json.loads(state)
        sealed = bytearray(base64.b64decode(data["_sealed"]["data"]))
        sealed[0] ^= 1  # one bit of the ciphertext
        data["_sealed"]["data"] = base64.b64encode(sealed).decode()
        conn.execute("UPDATE aura_events SET state = %s WHERE notification_id = %s",
                     (json.dumps(data).encode(), position))
    catch_up(app.database_url)
    assert rows(app.database_url) == {}
    with app.connect() as conn:
        letters = dlq.listing(conn.cursor(), None, dlq.PARKED_STATUS)
    assert [r["position"] for r in letters] == [position]
    assert "fails authentication" in letters[0]["error_message"]
    assert "words" not in letters[0]["error_message"]


def test_an_erasure_scrubs_the_dead_letters_of_the_subjects_events(app: AuraApp) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    position = argue(app, debate, "user-4", "a poison sentence with a secret")
    with app.connect() as conn, conn.cursor() as cur:
        (event,) = eventlog.of_subject(cur, "user-4")
        assert event.position == position
        failure = ValueError("bad: a poison sentence with a secret")
        dlq.dead_letter(cur, "argument_texts", event, dlq.Failure.of(failure, 1, datetime.now(UTC)))
    assert erase(app, "user-4", "request 4").dead_letters_scrubbed == 1
    assert b"poison sentence" not in every_byte(app.database_url)
    assert verified(app, "user-4").ok


def test_bad_input_is_refused_before_anything_is_written(app: AuraApp) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    with pytest.raises(InvalidSubject):
        argue(app, debate, "not a subject", "text")
    with pytest.raises(UnknownSubject):
        erase(app, "user-never", "request 1")
    argue(app, debate, "user-5", "something to erase later")
    for reason in ("", "   ", "x" * 501):
        with pytest.raises(DomainError):
            erase(app, "user-5", reason)
    assert app.get_debate(debate).arguments == 1
    assert not erase(app, "user-5", "request 5").already


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3), max_leaves=8)


@given(body=st.binary(max_size=80) | _JSON.map(lambda v: json.dumps(v).encode()),
       subject=_JSON, reason=_JSON, topic=st.sampled_from([ERASURE_TOPIC, "aura.other.v1"]))
def test_only_an_erasure_events_cloudevent_names_a_subject_to_erase_again(
    body: bytes, subject: Any, reason: Any, topic: str,
) -> None:
    """Whatever a stream's messages hold (others may publish there), a subject is taken
    only from the CloudEvent of an erasure whose subject is text; nothing raises."""
    assert erasure_in(body) is None or json.loads(body).get("type") == ERASURE_TOPIC
    shaped = json.dumps({"type": topic, "data": {"subject": subject, "reason": reason}})
    expected = ((subject, reason if isinstance(reason, str) else "")
                if topic == ERASURE_TOPIC and isinstance(subject, str) else None)
    assert erasure_in(shaped.encode()) == expected


@given(st.text(max_size=700))
def test_a_reapplied_erasure_has_a_storable_reason_whatever_the_first_one_was(
    original: str,
) -> None:
    """A reason from the stream (too long, a NUL, empty) never keeps a subject's key: the
    erasure made again has a reason ``check_reason`` takes, saying where it came from."""
    reason = reason_for(original)
    assert check_reason(reason) == reason and reason.startswith(REAPPLIED)


@given(st.text(max_size=250))
def test_a_subject_id_is_taken_exactly_when_it_is_one(value: str) -> None:
    expected = 1 <= len(value) <= 200 and all("!" <= c <= "~" for c in value)
    try:
        assert check_subject(value) == value
        accepted = True
    except InvalidSubject as e:
        accepted = False
        assert "\n" not in str(e)
    assert accepted == expected


Step = tuple[str, int, str]
STEPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from(
        ["first opinion here", "a second longer opinion", "ünïcode opinion ✓"])),
    st.tuples(st.just("erase"), st.integers(0, 2), st.just("")),
    st.tuples(st.just("catch_up"), st.just(0), st.just("")),
), min_size=1, max_size=12)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=STEPS)
def test_any_interleaving_reads_back_what_was_written_or_the_placeholder(
    app: AuraApp, steps: list[Step],
) -> None:
    run = uuid.uuid4().hex[:8]  # every example its own subjects and read models
    storage = f"texts_{run}"
    debate = app.start_debate("t", ["agent-1"], idempotency_key=f"d-{run}")
    written: dict[int, tuple[str, str]] = {}
    erased: set[str] = set()
    for op, who, text in steps:
        subject = f"s{who}-{run}"
        if op == "write":
            try:
                said = f"{text} by {subject}"  # each subject's words their own
                written[argue(app, debate, subject, said)] = (subject, said)
            except SubjectErased:
                assert subject in erased
        elif op == "erase":
            try:
                erase(app, subject, "property test")
                erased.add(subject)
            except UnknownSubject:
                assert not any(s == subject for s, _ in written.values())
        else:
            catch_up(app.database_url, storage)
    catch_up(app.database_url, storage)
    expected = {p: (s, ERASED_TEXT if s in erased else t) for p, (s, t) in written.items()}

    def this_run(storage: str) -> dict[int, tuple[str, str]]:
        # Earlier examples wrote to the same log (their subjects are their own).
        return {p: r for p, r in rows(app.database_url, storage).items() if r[0].endswith(run)}

    assert this_run(storage) == expected
    catch_up(app.database_url, f"{storage}_replay")
    assert this_run(f"{storage}_replay") == expected
    stored = every_byte(app.database_url)
    for subject, text in written.values():
        assert (text.encode() in stored) == (subject not in erased)


def test_an_erasure_racing_writers_and_a_worker_leaks_nothing_and_loses_nothing(
    app: AuraApp,
) -> None:
    debate = app.start_debate("t", ["agent-1"], idempotency_key="d")
    first = argue(app, debate, "victim", "the victim's first statement")
    stored: list[tuple[int, str, str]] = []
    refused: list[str] = []
    stop = threading.Event()

    def writer(name: str) -> None:
        # A debate of its own: the race is with the erasure, not between writers.
        own = app.start_debate("t", ["agent-1"], idempotency_key=name)
        for i in range(40):
            subject = "victim" if i % 2 else name
            text = f"statement {i} of {name} for {subject}"
            try:
                stored.append((argue(app, own, subject, text), subject, text))
            except SubjectErased:
                refused.append(subject)

    def worker() -> None:
        while not stop.is_set():
            catch_up(app.database_url)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
    projector = threading.Thread(target=worker)
    for t in [*threads, projector]:
        t.start()
    erase(app, "victim", "race")
    for t in threads:
        t.join()
    stop.set()
    projector.join()
    catch_up(app.database_url)
    live = rows(app.database_url)
    # Nothing lost or doubled: every stored argument is in the read model once.
    assert set(live) == {first, *(p for p, _, _ in stored)}
    assert len(stored) + len(refused) == 120
    for position, subject, text in stored:
        assert live[position] == (subject, ERASED_TEXT if subject == "victim" else text)
    assert set(refused) <= {"victim"}
    assert b"for victim" not in every_byte(app.database_url)
    assert verified(app, "victim").ok


def aura(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aura_es.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_cli_erases_verifies_and_refuses_bad_keys_in_one_line(
    app: AuraApp, cli_env: dict[str, str],
) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    argue(app, debate, "user-7", "a statement for the command line")
    other = "bm90IHRoZSBrZXkgdGhhdCB3cmFwcGVkIHRoZSBkYXRh"  # 32 bytes, another key
    for key in ("not-base64!", "c2hvcnQ=", other + "QQ==", other[:-4] + "QUFBQQ=="):
        result = aura("erase", "user-7", "--reason", "r", env={**cli_env, MASTER_KEY: key})
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert key not in result.stderr and key not in result.stdout
    for bad in (["erase", "not a subject", "--reason", "r"], ["erase", "user-0", "--reason", "r"],
                ["erase", "user-7"], ["erase", "user-7", "--reason", ""], ["erase"],
                ["erase", "--reapply", "user-7"], ["erase", "--reapply", "--verify"],
                ["erase", "--reapply", "--nats-url", "nats://127.0.0.1:9"],
                ["erase", "--verify", "user-7", "--nats-url", "nats://127.0.0.1:9"]):
        result = aura(*bad, env=cli_env)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result
    done = aura("erase", "user-7", "--reason", "ticket 9", "--json", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events"] == 1
    checked = aura("erase", "--verify", "user-7", "--json", env=cli_env)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True
    with app.connect() as conn:
        conn.execute("CREATE TABLE notes (n text)")
        conn.execute("INSERT INTO notes VALUES ('a statement for the command line')")
    found = aura("erase", "--verify", "user-7", env=cli_env)
    assert found.returncode == 1 and "table notes: 1 copy" in found.stdout


def mirror_one_argument(app: AuraApp, nats_url: str, subject: str, text: str) -> str:
    """A stream of its own holding a debate and one argument of ``subject``."""
    stream = f"ERASE_{uuid.uuid4().hex[:8].upper()}"
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    argue(app, debate, subject, text)
    with running_relay(app.database_url, nats_url, stream):
        wait_for("the mirror", lambda: mirrored(app.database_url) == head(app.database_url))
    return stream


def test_the_stream_carries_only_the_sealed_form_and_verify_reads_it(
    app: AuraApp, nats_url: str, cli_env: dict[str, str],
) -> None:
    stream = mirror_one_argument(app, nats_url, "user-8", "words that travel on the stream")
    erase(app, "user-8", "request 8")
    with running_relay(app.database_url, nats_url, stream):
        wait_for("the erasure's event", lambda: stream_messages(nats_url, stream) == 3)
    bodies = asyncio.run(_bodies(nats_url, stream))
    argued = next(json.loads(b) for b in bodies if b"argument_added" in b)
    assert argued["data"]["text"] == "[sealed]" and "_sealed" in argued["data"]
    assert not any(b"travel on the stream" in b for b in bodies)
    checked = aura("erase", "--verify", "user-8", "--nats-url", nats_url, "--stream", stream,
                   "--subject-prefix", stream.lower(), "--json", env=cli_env)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["messages"] == 3


def test_a_restored_backup_is_erased_again_from_the_stream(
    app: AuraApp, nats_url: str, cli_env: dict[str, str],
) -> None:
    """A backup from before an erasure brings the subject's key back; the stream kept the
    erasure, and `erase --reapply` makes it again (and then finds nothing to do)."""
    stream = mirror_one_argument(app, nats_url, "user-5", "words a backup brought back")
    with app.connect() as conn:
        key_row = conn.execute("SELECT master_key_id, wrapped FROM aura_subject_keys"
                               " WHERE subject = 'user-5'").fetchone()
    erase(app, "user-5", "request 5")
    with running_relay(app.database_url, nats_url, stream):
        wait_for("the erasure's event", lambda: stream_messages(nats_url, stream) == 3)
    publish(nats_url, f"{stream.lower()}.other", b"not an event of ours")
    # Another store's erasure of a name this store also holds: not this store's ledger.
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d6")
    argue(app, debate, "user-6", "words of a namesake")
    publish(nats_url, f"{stream.lower()}.subject", json.dumps(
        {"type": ERASURE_TOPIC, "data": {"subject": "user-6", "reason": "elsewhere"}}
    ).encode(), headers={STORE_HEADER: str(uuid.uuid4())})
    # The restore: the log and the key table as they were before the erasure.
    with app.connect() as conn:
        conn.execute("DELETE FROM aura_events WHERE topic = %s", (ERASURE_TOPIC,))
        conn.execute("UPDATE aura_subject_keys SET master_key_id = %s, wrapped = %s,"
                     " erased_at = NULL, proof = NULL WHERE subject = 'user-5'", key_row)
    app.keyring.forget(["user-5"])
    assert catch_up(app.database_url, "restored") == 2
    assert sorted(rows(app.database_url, "restored").values()) == [
        ("user-5", "words a backup brought back"), ("user-6", "words of a namesake")]

    def reapplied() -> dict[str, Any]:
        result = aura("erase", "--reapply", "--nats-url", nats_url, "--stream", stream,
                      "--subject-prefix", stream.lower(), "--json", env=cli_env)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    assert reapplied() == {"erased": ["user-5"], "already": [], "unknown": [],
                           "refused": 0, "messages": 5}
    # The read model that copied the text hears of the erasure from its event, as ever.
    assert [str(r) for r in verified(app, "user-5").remnants] == ["table restored: 1 copy"]
    catch_up(app.database_url, "restored")
    assert verified(app, "user-5").ok and b"brought back" not in every_byte(app.database_url)
    assert reapplied()["already"] == ["user-5"]
    with app.connect() as conn:  # the namesake's key is still there
        assert conn.execute("SELECT erased_at FROM aura_subject_keys"
                            " WHERE subject = 'user-6'").fetchone() == (None,)


async def _bodies(nats_url: str, stream: str) -> list[bytes]:
    settings_ = StreamSettings(name=stream, subject_prefix=stream.lower())
    return [data async for _, data in each_message(nats_url, settings_)]


def declarative_spec(storage: str, batch_size: int = 50) -> ProjectionSpec:
    return ProjectionSpec.model_validate({
        "name": storage, "source_events": [arguments.ARGUED], "output_model": "LastWords",
        "storage": storage, "batch_size": batch_size, "declarative": {
            "key": "payload.agent_id", "key_column": "agent_id",
            "fields": {
                "said": {"op": "count"},
                "first_words": {"op": "first", "of": "payload.text"},
                "last_words": {"op": "last", "of": "payload.text"},
            },
        },
    })


def fold_declarative(db_url: str, storage: str, batch_size: int = 50
                     ) -> dict[str, tuple[Any, ...]]:
    spec = declarative_spec(storage, batch_size)
    with psycopg.connect(db_url, autocommit=True) as conn:
        BatchRunner(conn, spec, build(spec)).run_until_caught_up()
        return {r[0]: tuple(r[1:]) for r in conn.execute(sql.SQL(
            "SELECT agent_id, said, first_words, last_words FROM {}").format(
                sql.Identifier(storage)))}


def test_a_declarative_projection_clears_what_it_copied_of_an_erased_subject(
    app: AuraApp,
) -> None:
    debate = app.start_debate("tax", ["a"], idempotency_key="d")
    for agent, subject, text in [("a1", "user-1", "first words of user one"),
                                 ("a1", "user-2", "last words of user two"),
                                 ("a2", "user-2", "only words of user two, again"),
                                 ("a3", "user-3", "words user three keeps")]:
        app.add_argument(debate, agent, "pro", text, round=1,
                         idempotency_key=str(uuid.uuid4()), subject=subject)
    fold_declarative(app.database_url, "last_words")
    erase(app, "user-2", "request 2")
    live = fold_declarative(app.database_url, "last_words")
    assert live == {
        "a1": (2, "first words of user one", ERASED_TEXT),
        "a2": (1, ERASED_TEXT, ERASED_TEXT),
        "a3": (1, "words user three keeps", "words user three keeps"),
    }
    assert fold_declarative(app.database_url, "last_words_rebuilt") == live
    assert b"of user two" not in every_byte(app.database_url)


ARGUMENTS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, 2)),  # agent, subject
    st.tuples(st.just("erase"), st.just(0), st.integers(0, 2)),
), min_size=1, max_size=14)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=ARGUMENTS, batch_size=st.integers(1, 6))
def test_a_declarative_fold_opening_only_what_it_keeps_equals_the_fold_of_the_log(
    app: AuraApp, steps: list[tuple[str, int, int]], batch_size: int,
) -> None:
    """A declarative projection opens an event's personal fields only when its value is
    the one a first/last keeps; whatever the batches, the read model is the fold of what
    was written, the erased subjects' values their placeholder."""
    run = uuid.uuid4().hex[:8]
    debate = app.start_debate("t", ["a"], idempotency_key=f"d-{run}")
    said: list[tuple[str, str, str]] = []  # (agent, subject, text), in log order
    erased: set[str] = set()
    for op, agent_no, subject_no in steps:
        subject = f"s{subject_no}-{run}"
        if op == "erase":
            with contextlib.suppress(UnknownSubject):
                erase(app, subject, "property test")
                erased.add(subject)
            continue
        agent, text = f"a{agent_no}-{run}", f"words {len(said)} of {subject}"
        with contextlib.suppress(SubjectErased):
            app.add_argument(debate, agent, "pro", text, round=1,
                             idempotency_key=str(uuid.uuid4()), subject=subject)
            said.append((agent, subject, text))
    expected: dict[str, tuple[Any, ...]] = {}
    for agent, subject, text in said:
        value = ERASED_TEXT if subject in erased else text
        count, first, _ = expected.get(agent, (0, value, value))
        expected[agent] = (count + 1, first, value)
    got = fold_declarative(app.database_url, f"lazy_{run}", batch_size)
    assert {k: v for k, v in got.items() if k.endswith(run)} == expected


def test_a_tampered_seal_a_declarative_fold_keeps_fails_its_batch_one_it_skips_is_unread(
    app: AuraApp,
) -> None:
    debate = app.start_debate("tax", ["a"], idempotency_key="d")
    positions = [argue(app, debate, "user-t", f"words number {i}") for i in range(3)]

    def tamper(position: int) -> None:
        with app.connect() as conn:
            (state,) = conn.execute("SELECT state FROM aura_events WHERE notification_id"
                                    " = %s", (position,)).fetchone()  # type: ignore[misc]
            data = json.loads(state)
            sealed = bytearray(base64.b64decode(data["_sealed"]["data"]))
            sealed[-1] ^= 1  # one bit of the tag
            data["_sealed"]["data"] = base64.b64encode(sealed).decode()
            conn.execute("UPDATE aura_events SET state = %s WHERE notification_id = %s",
                         (json.dumps(data).encode(), position))

    tamper(positions[1])  # neither the first words nor the last: never opened
    assert fold_declarative(app.database_url, "skips") == {
        "agent-1": (3, "words number 0", "words number 2")}
    tamper(positions[2])  # the last words: opened, and it does not open
    with pytest.raises(sealing.SealBroken, match="fails authentication") as failed:
        fold_declarative(app.database_url, "keeps")
    assert "words" not in str(failed.value)
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM keeps").fetchone() == (0,)


def test_no_erasure_commits_while_a_batch_that_read_keys_is_open(app: AuraApp) -> None:
    """A batch of personal events holds the erasures' gate until it commits: an erasure
    waits for it (here: gives up at its lock timeout), and goes through after."""
    debate = app.start_debate("tax", ["a"], idempotency_key="d")
    argue(app, debate, "user-h", "held words")
    with psycopg.connect(app.database_url) as reader, \
            psycopg.connect(app.database_url) as eraser:
        batch = eventlog.read_batch(reader.cursor(), eventlog.ORIGIN, [arguments.ARGUED],
                                    10, keys=Keyring.from_env())
        assert [e.payload["text"] for e in batch.events] == ["held words"]
        eraser.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            keystore.lock_for_erasure(eraser.cursor(), "user-h")
        eraser.rollback()
        reader.commit()
        row = keystore.lock_for_erasure(eraser.cursor(), "user-h")
        assert row is not None and row.erased_at is None


def test_a_batch_after_an_erasure_never_opens_with_a_key_its_connection_held(
        app: AuraApp) -> None:
    """The keys a connection read are trusted while no erasure came after them: a batch
    waits while an erasure is in flight, and once it has committed, reads the erased
    subject's key row again (gone: the placeholder), the other subjects' keys too."""
    debate = app.start_debate("tax", ["a"], idempotency_key="d")
    argue(app, debate, "user-1", "Alice's words")
    argue(app, debate, "user-2", "Bob's words")
    ring = Keyring.from_env()

    def texts(conn: psycopg.Connection[Any]) -> list[str]:
        with conn.transaction(), conn.cursor() as cur:
            batch = eventlog.read_batch(cur, eventlog.ORIGIN, [arguments.ARGUED], 10,
                                        keys=ring)
        return [e.payload["text"] for e in batch.events]

    with psycopg.connect(app.database_url, autocommit=True) as reader, \
            psycopg.connect(app.database_url) as eraser:
        assert texts(reader) == ["Alice's words", "Bob's words"]
        # An erasure in flight (it holds the gate): the reader's next batch waits.
        keystore.lock_for_erasure(eraser.cursor(), "user-1")
        reader.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            texts(reader)
        eraser.rollback()
        assert texts(reader) == ["Alice's words", "Bob's words"]
        erase(app, "user-1", "request")  # commits
        assert texts(reader) == [ERASED_TEXT, "Bob's words"]


def test_a_declarative_projection_may_not_fold_a_personal_field_it_could_not_clear() -> None:
    spec = declarative_spec("refused").model_dump()
    spec["declarative"]["fields"]["longest"] = {"op": "max", "of": "payload.text"}
    with pytest.raises(ConfigurationError, match=r"op max of payload\.text"):
        build(ProjectionSpec.model_validate(spec))


def test_a_mesh_consumer_with_key_access_opens_sealed_fields(
    app: AuraApp, empty_db_url: str, nats_url: str,
) -> None:
    stream = mirror_one_argument(app, nats_url, "user-m", "words for another service")

    def texts(name: str, keyring: Keyring | None) -> list[str]:
        got: list[str] = []

        async def consume() -> None:
            consumer = MeshConsumer(
                name, empty_db_url, nats_url,
                [Subscription(arguments.ARGUED, 2, lambda _, d: got.append(d.data["text"]))],
                stream=stream, subject_prefix=stream.lower(), keyring=keyring)
            task = asyncio.create_task(consumer.run())
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            consumer.stop.set()
            await task

        asyncio.run(consume())
        return got

    with_keys = Keyring.of_store(app.database_url)
    try:
        assert texts("with_keys", with_keys) == ["words for another service"]
        assert texts("without_keys", None) == ["[sealed]"]
    finally:
        with_keys.close()
    erase(app, "user-m", "request m")
    after = Keyring.of_store(app.database_url)
    try:
        assert texts("after_erasure", after) == [ERASED_TEXT]
    finally:
        after.close()


def test_rotating_the_master_key_rewraps_every_key_and_no_event(
    app: AuraApp, cli_env: dict[str, str],
) -> None:
    debate = app.start_debate("tax", ["agent-1"], idempotency_key="d")
    position = argue(app, debate, "user-r", "words that outlive a master key")
    argue(app, debate, "user-e", "words of someone erased later")
    erase(app, "user-e", "request e")
    with app.connect() as conn:
        before = conn.execute("SELECT state FROM aura_events ORDER BY notification_id"
                              ).fetchall()
    old, new = os.environ[MASTER_KEY], new_key_text()
    rotated = aura("keys", "rotate", "--json",
                   env={**cli_env, MASTER_KEY: new, PREVIOUS_MASTER_KEYS: old})
    assert rotated.returncode == 0, rotated.stderr
    assert {k: v for k, v in json.loads(rotated.stdout).items() if k != "master_key_id"} == {
        "data_keys": 1, "proofs": 1}
    # The old key is no longer needed: the new one alone opens and verifies everything.
    only_new = {**cli_env, MASTER_KEY: new, PREVIOUS_MASTER_KEYS: ""}
    assert aura("erase", "--verify", "user-e", env=only_new).returncode == 0
    ring = Keyring(LocalKeyProvider(parse_key(new, MASTER_KEY)))
    catch_up(app.database_url, "after_rotation", keyring=ring)
    assert rows(app.database_url, "after_rotation")[position] == (
        "user-r", "words that outlive a master key")
    with app.connect() as conn:
        assert conn.execute("SELECT state FROM aura_events ORDER BY notification_id"
                            ).fetchall()[:len(before)] == before
    stale = aura("erase", "--verify", "user-e", env={**cli_env, PREVIOUS_MASTER_KEYS: ""})
    assert stale.returncode == 2 and "not configured" in stale.stderr


KEYS = st.one_of(st.text(max_size=80),
                 st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode()),
                 st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()))


@given(KEYS)
def test_a_master_key_is_the_base64_of_32_bytes_or_one_line_that_never_echoes_it(
    raw: str,
) -> None:
    try:
        key = parse_key(raw, MASTER_KEY)
    except ConfigurationError as e:
        message = str(e)
        assert "\n" not in message and message.startswith(MASTER_KEY)
        assert len(raw.strip()) < 8 or raw.strip() not in message
        return
    assert len(key) == 32 and base64.b64encode(key).decode() == raw.strip()


@given(text=st.text(max_size=300), subject=st.from_regex(r"[!-~]{1,40}", fullmatch=True),
       version=st.integers(1, 2**40))
def test_a_seal_opens_exactly_for_its_own_event_and_key(
    text: str, subject: str, version: int,
) -> None:
    fields = {"text": ("[sealed]", ERASED_TEXT)}
    key, aggregate = os.urandom(32), uuid.uuid4()
    state: dict[str, Any] = {"text": text, "round": 1}
    sealing.seal(state, fields, subject, key, "t.x.v1", aggregate, version)
    seal = state["_sealed"]
    assert state["text"] == "[sealed]" and seal["fields"] == ["text"]
    assert json.dumps({"text": text}).encode() not in base64.b64decode(seal["data"])
    assert sealing.open_seal(seal, key, "t.x.v1", aggregate, version) == {"text": text}
    for wrong in ((os.urandom(32), "t.x.v1", aggregate, version),
                  (key, "t.y.v1", aggregate, version),
                  (key, "t.x.v1", uuid.uuid4(), version),
                  (key, "t.x.v1", aggregate, version + 1)):
        with pytest.raises(sealing.SealBroken):
            sealing.open_seal(seal, *wrong)
