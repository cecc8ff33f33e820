"""`scripts/bench erasure`: what sealing personal fields costs, side by side in one run.

The same events twice, with one field personal (sealed with its subject's key) and
without: appends (keyed commands, one process), a projection's catch-up with a cold key
cache (a new worker) and its replay with a warm one (the same worker again), bulk
updates of the notes (each loaded first, its sealed text opened), and the erasure of
one subject with 10,000 events in a store holding others.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from aura_es import heap
from aura_es.aggregate import AuraAggregate
from aura_es.app import AuraApp
from aura_es.catalog.model import ProjectionSpec
from aura_es.commands import Create, Update
from aura_es.erasure.erase import erase
from aura_es.events import AuraCreated, AuraEvent
from aura_es.personal import Personal
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.runner import BatchRunner
from aura_es.projection.handlers.api import Projection, Tx
from aura_es.store.envelope import EventEnvelope
from aura_es.store.keyring import Keyring
from scripts.benchmarks._common import console, fresh_database, postgres, report

TEXT = "an argument of about the length people write, with a few clauses in it"


class PlainNote(AuraCreated):
    TOPIC = "bench.note.plain.v1"
    author: str
    text: str


class SealedNote(AuraCreated):
    TOPIC = "bench.note.sealed.v1"
    SUBJECT = "author"
    author: str
    text: Personal[str]


class NoteRead(AuraEvent):
    """A note marked read: a plain event, whose command loads the note (and opens its
    sealed text, if it has one)."""

    TOPIC = "bench.note.read.v1"
    by: str

    def apply(self, note: Any) -> None:
        note.reads += 1


class Note(AuraAggregate):
    TYPE = "bench.note"

    def __init__(self) -> None:
        self.reads = 0

    @classmethod
    def write(cls, note_id: uuid.UUID, author: str, text: str, sealed: bool) -> Note:
        return cls._create(SealedNote if sealed else PlainNote, id=note_id, author=author,
                           text=text)

    def mark_read(self, by: str) -> None:
        self.trigger_event(NoteRead, by=by)


def note(i: int, author: str, sealed: bool, run: str) -> Create[Note]:
    return Create(f"write_note_{'sealed' if sealed else 'plain'}", f"{run}-{i}",
                  {"author": author, "text": TEXT},
                  lambda id_: Note.write(id_, author, TEXT, sealed))


def appends(app: AuraApp, count: int, sealed: bool, run: str, subjects: int) -> float:
    """Keyed commands, one at a time: events per second."""
    started = time.perf_counter()
    for i in range(count):
        app.execute(note(i, f"user-{i % subjects}", sealed, run))
    return count / (time.perf_counter() - started)


def bulk(app: AuraApp, count: int, sealed: bool, run: str, subjects: int = 1
         ) -> list[uuid.UUID]:
    """``count`` notes in commands of 500, by ``subjects`` authors in turn (``user-0``,
    ``user-1`` …; one author: ``run`` itself): their ids."""
    def author(i: int) -> str:
        return run if subjects == 1 else f"user-{i % subjects}"

    written: list[uuid.UUID] = []
    for start in range(0, count, 500):
        results = app.execute_many([note(i, author(i), sealed, run)
                                    for i in range(start, min(count, start + 500))])
        written.extend(r.aggregate_id for r in results)
    return written


def updates(app: AuraApp, notes: Sequence[uuid.UUID], run: str) -> float:
    """Each note marked read, 100 commands a transaction (a bulk update: every note
    loaded first, its sealed text opened): events per second."""
    started = time.perf_counter()
    for start in range(0, len(notes), 100):
        app.execute_many([
            Update("mark_note_read", f"{run}-{i}", notes[i], {"by": "bench"},
                   lambda n: n.mark_read("bench"))
            for i in range(start, min(len(notes), start + 100))])
    return len(notes) / (time.perf_counter() - started)


class Texts(Projection):
    """Copies each note's text into a row: the read a personal field's projection does."""

    def create(self, tx: Tx) -> None:
        tx.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {t} (position bigint PRIMARY KEY,"
                           " text text NOT NULL)").format(t=self.table))

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        tx.cursor.executemany(sql.SQL("INSERT INTO {t} VALUES (%s, %s)").format(t=self.table),
                              [(e.position, e.payload["text"]) for e in batch])


def _spec(topic: str, storage: str, declared: bool) -> ProjectionSpec:
    if not declared:
        return ProjectionSpec(name=storage, source_events=[topic], output_model="Text",
                              storage=storage, batch_size=1000, handler="bench:Texts")
    # A catalog entry's kind: a row per author, a count and the last text (a personal
    # field's fold: its ``last_text__subject`` column is kept with it).
    return ProjectionSpec.model_validate({
        "name": storage, "source_events": [topic], "output_model": "Author",
        "storage": storage, "batch_size": 1000, "declarative": {
            "key": "payload.author", "key_column": "author",
            "fields": {"notes": {"op": "count"},
                       "last_text": {"op": "last", "of": "payload.text"}}}})


def fold(url: str, topic: str, storage: str, ring: Keyring, declared: bool = False) -> float:
    spec = _spec(topic, storage, declared)
    projection = build(spec) if declared else Texts(spec)
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        applied = BatchRunner(conn, spec, projection, keyring=ring).run_until_caught_up()
        return applied / (time.perf_counter() - started)


def _row(measure: str, plain: list[float], sealed: list[float]) -> dict[str, Any]:
    ratios = [s / p for p, s in zip(plain, sealed, strict=True)]
    return {"measure": measure, "plain": round(statistics.median(plain)),
            "sealed": round(statistics.median(sealed)),
            "ratio": round(statistics.median(ratios), 2),
            "ratio_range": f"{min(ratios):.2f}-{max(ratios):.2f}"}


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    count = 1_500 if quick else 9_000
    # Each fold reads this many events: about a second each, long enough that the
    # machine's moment-to-moment noise averages out within one measurement.
    folded = 5_000 if quick else 30_000
    heavy = 2_000 if quick else 10_000
    rounds = 7
    rows: list[dict[str, Any]] = []
    with postgres() as admin, fresh_database(admin) as url:
        app = AuraApp(url, pool_size=2)
        try:
            # Plain and sealed in turn, round after round: each round's ratio compares
            # two runs made under the same conditions, and the median of the rounds is
            # reported (a 2-core machine's speed drifts by more than the effect).
            appended: dict[str, list[float]] = {"plain": [], "sealed": []}
            with console.status("appends, plain and sealed in turn …"):
                for r in range(rounds):
                    for kind in ("plain", "sealed")[::1 if r % 2 == 0 else -1]:
                        appended[kind].append(appends(app, count // rounds, kind == "sealed",
                                                      f"{kind}-{r}", subjects=100))
            rows.append(_row("appends, keyed, one process (events/s)",
                             appended["plain"], appended["sealed"]))
            written: dict[str, list[uuid.UUID]] = {}
            with console.status(f"writing {folded:,} events of each kind to fold …"):
                for kind in ("plain", "sealed"):
                    written[kind] = bulk(app, folded - count // rounds * rounds,
                                         kind == "sealed", f"fold-{kind}", subjects=100)
            # Cold: a new worker's empty key cache (a catch-up); warm: a worker that
            # has every key unwrapped already (a replay).
            folds: dict[str, list[float]] = {
                "plain": [], "cold": [], "warm": [], "declared plain": [],
                "declared sealed": []}
            # The folds stand for a worker process, which settles its heap once started
            # (``aura_es.heap``): the collector no longer walks this process's
            # earlier objects (the writer's) at every full collection.
            heap.settle()
            warm = Keyring.from_env()  # every subject's key already unwrapped
            with psycopg.connect(url) as conn, conn.cursor() as cur:
                warm.current(cur, [f"user-{i}" for i in range(100)], None)
            with console.status("projection catch-up and replay, plain and sealed …"):
                for r in range(rounds):
                    runs = [("plain", PlainNote.TOPIC, False), ("cold", SealedNote.TOPIC, False),
                            ("warm", SealedNote.TOPIC, False),
                            ("declared plain", PlainNote.TOPIC, True),
                            ("declared sealed", SealedNote.TOPIC, True)]
                    # Plain first in even rounds, last in odd ones: a drift of the
                    # machine's speed within a round favours neither side.
                    for kind, topic, declared in runs[::1 if r % 2 == 0 else -1]:
                        storage = f"{kind.replace(' ', '_')}_{r}"
                        ring = Keyring.from_env() if kind == "cold" else warm
                        folds[kind].append(fold(url, topic, storage, ring, declared))
            rows.append(_row("projection catch-up, cold key cache (events/s)",
                             folds["plain"], folds["cold"]))
            rows.append(_row("projection replay, warm key cache (events/s)",
                             folds["plain"], folds["warm"]))
            rows.append(_row("declarative projection (count, last text) (events/s)",
                             folds["declared plain"], folds["declared sealed"]))
            # Bulk updates of the notes written above, their keys cached long before
            # (the keyring trusts a key for a second after it was read).
            updated: dict[str, list[float]] = {"plain": [], "sealed": []}
            share = min(len(written["plain"]), len(written["sealed"])) // rounds
            with console.status("bulk updates, plain and sealed notes in turn …"):
                for r in range(rounds):
                    for kind in ("plain", "sealed")[::1 if r % 2 == 0 else -1]:
                        updated[kind].append(updates(
                            app, written[kind][r * share:(r + 1) * share], f"read-{kind}"))
            rows.append(_row("bulk updates, 100 a transaction, notes loaded (events/s)",
                             updated["plain"], updated["sealed"]))
            with console.status(f"writing {heavy:,} events of one subject …"):
                bulk(app, heavy, True, "heavy-subject")
            with psycopg.connect(url) as conn:
                total = conn.execute("SELECT count(*) FROM aura_events").fetchone()
            started = time.perf_counter()
            done = erase(app, "heavy-subject", "benchmark")
            seconds = time.perf_counter() - started
            rows.append({"measure": f"erase one subject of {done.events:,} events, store of"
                                    f" {total[0] if total else 0:,} (s)",
                         "plain": "", "sealed": round(seconds, 3), "ratio": "",
                         "ratio_range": ""})
        finally:
            app.close()
    report("erasure: sealed personal fields vs plain, one run", rows, as_json=as_json)
