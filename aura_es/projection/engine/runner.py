"""Applies a projection's batches: read-model writes and checkpoint in ONE transaction.

The runner owns no process, no lease and no failure policy (the ``Engine`` around it
does). It applies one partition of its projection (the whole of it when unsplit). Each
step locks the partition's checkpoint row and checks it still says what this runner last
wrote and, for a worker's runner, that the lease is still the one its worker claimed
(``state/leases.py``): if another worker moved it or took the partition over, the step
aborts before writing anything (G4, G12).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from aura_es import locks
from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import AuraError, EventUndecodable
from aura_es.personal import ERASURE_TOPIC, topic_is_personal
from aura_es.projection import dlq
from aura_es.projection.handlers.api import Projection, Tx
from aura_es.projection.state import checkpoints, registry
from aura_es.schemas import versions
from aura_es.store import eventlog, partitioning
from aura_es.store.envelope import EventEnvelope
from aura_es.store.eventlog import ORIGIN, Batch, Cursor
from aura_es.store.keyring import Keyring
from aura_es.store.keyring import default as default_keyring
from aura_es.store.opening import open_events
from aura_es.store.partitioning import Partition

#: Who may write a partition: its worker's id and the epoch of its claim.
Lease = tuple[str, int]
SETUP_LOCK = "aura.projection-setup:"


class LostOwnership(AuraError):
    """Another worker advanced this projection's checkpoint: stop and stand by."""


class GenerationChanged(LostOwnership):
    """A replay switched the read model to a new generation: reload before writing."""


@dataclass(frozen=True)
class Step:
    applied: int
    #: The reader's cursor after this step.
    cursor: Cursor
    #: The highest log position the read model now covers (for people).
    position: int
    #: No more events of the projection's topics below the horizon.
    caught_up: bool
    seconds: float
    parked: int = 0
    #: Events applied, and parked, per topic (for metrics).
    by_type: Mapping[str, int] = field(default_factory=dict)
    parked_by_type: Mapping[str, int] = field(default_factory=dict)
    #: The topic of an undecodable event this step dead-lettered, if any.
    dead_lettered_type: str | None = None
    #: Side effects the batch recorded, for the worker's dispatcher to run.
    side_effects: int = 0


class BatchRunner:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        spec: ProjectionSpec,
        projection: Projection,
        *,
        checkpoint_name: str | None = None,
        fingerprint: str | None = None,
        replaying: bool = False,
        generation: int = 1,
        batch_size: int | None = None,
        partition: int = 0,
        lease: Lease | None = None,
        partitions: int | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.batch_size = batch_size or spec.batch_size
        self.projection = projection
        self.checkpoint_name = checkpoint_name or spec.name
        self.fingerprint = fingerprint
        self.replaying = replaying
        self.generation = generation
        self.topics = list(spec.source_events)
        #: Its events may hold personal fields: each batch reads its subjects' keys.
        self.personal = any(topic_is_personal(t) for t in self.topics)
        if self.personal:
            # Hears of erasures, to clear what it kept (``Projection.erase_subject``).
            self.topics.append(ERASURE_TOPIC)
        self.keyring = keyring or default_keyring()
        # The live read model is split as its catalog entry says; a rebuild's shadow (or
        # a trial) reads the log whole unless its driver splits it (``partitions``).
        live = self.checkpoint_name == spec.name
        count = partitions if partitions is not None else spec.partitions if live else 1
        self.partition = Partition(partition, count)
        #: The (owner, epoch) this runner's worker claimed; None: no lease to check
        #: (a replay, a dead letter's retry, the test kit).
        self.lease = lease
        self.cursor = ORIGIN
        self.position = 0
        self.setup()

    def setup(self) -> None:
        """Creates the read model's tables and the checkpoint row, and reads where it is."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Workers of one projection start together: one creates its tables at a time.
            locks.lock_for_transaction(cur, SETUP_LOCK + self.checkpoint_name)
            resuming = checkpoints.get(cur, self.checkpoint_name) is not None
            # Tables are registered to this read model before they are created, so a
            # replay later drops exactly these, and no other projection's table (or a
            # user's own) is ever adopted by a colliding name.
            registry.claim(
                cur, self.spec.name, self.generation, self.projection.tables(),
                self.projection.stable_tables(), adopt_existing=resuming,
            )
            self.projection.create(Tx(cur, replaying=self.replaying))
            checkpoint = self._checkpoint_row(cur)
        self._check_generation(checkpoint.generation)
        self.cursor, self.position = checkpoint.cursor, checkpoint.position

    def _checkpoint_row(self, cur: psycopg.Cursor[Any]) -> checkpoints.Checkpoint:
        """This partition's row, after the read model's rows are laid out (made, or split)
        as ``self.partition`` says; ``PartitionsChanged`` if they cannot be."""
        row = checkpoints.get(cur, self.checkpoint_name, self.partition.index)
        if row is None or row.partitions != self.partition.count:
            rows = checkpoints.layout(
                cur, self.checkpoint_name, self.partition.count, fingerprint=self.fingerprint,
                generation=self.generation, storage=self.projection.storage)
            row = rows[self.partition.index]
        return row

    def _check_generation(self, stored: int) -> None:
        if stored != self.generation:
            raise GenerationChanged(
                f"projection {self.checkpoint_name!r}: the read model is now generation"
                f" {stored}, this runner writes generation {self.generation}"
            )

    def step(self, limit: int | None = None) -> Step:
        """One batch: at most ``limit`` (default ``batch_size``) events, one transaction.

        Events of aggregates with an open dead letter are parked behind it, in order,
        instead of being handled (G5).
        """
        started = time.perf_counter()
        tx: Tx | None = None
        held: list[EventEnvelope] = []
        with self.conn.transaction(), self.conn.cursor() as cur:
            self._lock_checkpoint(cur)
            batch = _up_to_undecodable(self._opened(cur, eventlog.read_batch(
                cur, self.cursor, self.topics, limit or self.batch_size, self.partition,
                keys=self.keyring if self.personal else None,
                lazily=self.projection.opens_on_read,
            )))
            events = list(batch.events)
            parked = 0
            dead_lettered = None
            if len(events) == 1 and events[0].undecodable is not None:
                # Its bytes are not an event: no retry can change that, and no handler
                # may see it. It is poison at once (or parked behind its aggregate's).
                dead_lettered = self._isolate_undecodable(cur, events[0])
                events = []
            if events:
                blocked = dlq.parked_aggregates(cur, self.checkpoint_name)
                held = [e for e in events if e.aggregate_id in blocked]
                if held:
                    dlq.park(cur, self.checkpoint_name, held, blocked)
                    events = [e for e in events if e.aggregate_id not in blocked]
                    parked = len(held)
            if events:
                versions.require_known(events)  # systemic: deploy the newer code
                tx = self._tx(cur)
                _apply(self.projection, events, tx)
            moved = self._advance(cur, batch.scanned_to, batch.covered, len(events))
        self.cursor, self.position = moved  # only now: the batch has committed
        return Step(
            applied=len(events), cursor=self.cursor, position=self.position,
            caught_up=batch.caught_up, seconds=time.perf_counter() - started, parked=parked,
            by_type=Counter(e.topic for e in events),
            parked_by_type=Counter(e.topic for e in held),
            dead_lettered_type=dead_lettered,
            side_effects=tx.side_effects if tx is not None else 0,
        )

    def _opened(self, cur: psycopg.Cursor[Any], batch: Batch) -> Batch:
        """The batch with its sealed fields opened, in its own transaction (the keys held
        FOR SHARE until it commits: ``store/opening.py``). ``read_batch`` opens those
        whose subject the row's column names; this opens any other (none, unless a row
        was written by another program)."""
        events = open_events(cur, self.keyring, batch.events)
        return dataclasses.replace(batch, events=events)

    def _tx(self, cur: psycopg.Cursor[Any]) -> Tx:
        return Tx(cur, replaying=self.replaying, projection=self.checkpoint_name)

    def _isolate_undecodable(self, cur: psycopg.Cursor[Any], event: EventEnvelope) -> str | None:
        """Parks ``event`` behind its aggregate's open dead letter, or dead-letters it;
        returns its topic when it was dead-lettered."""
        blocked = dlq.parked_aggregates(cur, self.checkpoint_name)
        if event.aggregate_id in blocked:
            dlq.park(cur, self.checkpoint_name, [event], blocked)
            return None
        dlq.dead_letter(cur, self.checkpoint_name, event, dlq.Failure.undecodable(event),
                        rebuild=self.replaying)
        return event.topic

    def peek(self) -> EventEnvelope | None:
        """The next event this runner would apply (for logging a failure)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            batch = eventlog.read_batch(cur, self.cursor, self.topics, 1, self.partition)
        return batch.events[0] if batch.events else None

    def dead_letter_next(
        self, error: BaseException, attempts: int, first_failed_at: datetime
    ) -> int:
        """Moves the next event to the DLQ and the checkpoint past it; returns its position."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            self._lock_checkpoint(cur)
            batch = eventlog.read_batch(cur, self.cursor, self.topics, 1, self.partition)
            if not batch.events:
                raise LookupError(f"projection {self.checkpoint_name!r}: no event to dead-letter")
            event = batch.events[0]
            dlq.dead_letter(cur, self.checkpoint_name, event,
                            dlq.Failure.of(error, attempts, first_failed_at),
                            rebuild=self.replaying)
            moved = self._advance(cur, Cursor.of(event), event.position, 0)
        self.cursor, self.position = moved
        return event.position

    def refold(self, cur: psycopg.Cursor[Any], aggregate_ids: Sequence[UUID],
               events: Sequence[EventEnvelope]) -> None:
        """Deletes these aggregates' rows and folds ``events`` (theirs, in log order) again,
        in ``cur``'s transaction, in batches of the runner's size (a partial replay)."""
        tx = Tx(cur, replaying=True)
        self.projection.forget(tx, list(aggregate_ids))
        events = open_events(cur, self.keyring, events)
        for start in range(0, len(events), self.batch_size):
            _apply(self.projection, list(events[start:start + self.batch_size]), tx)

    def retry_dead_letter(self, dead_letter_id: int) -> bool:
        """Re-applies a dead letter's events in order; True when they all applied.

        Holds the checkpoint row's lock, so no batch of the live worker interleaves. The
        side effects the live path would have recorded are recorded (and then run by the
        worker's dispatcher). A failure keeps the events parked, one more attempt noted.
        """
        with self.conn.transaction(), self.conn.cursor() as cur:
            letter = dlq.get(cur, dead_letter_id, lock=True)
            if letter is None or letter["status"] != dlq.PARKED_STATUS:
                raise LookupError(f"dead letter {dead_letter_id} is not open")
            # The partition of the letter's aggregate: its live batches are the ones
            # that must not interleave.
            partition = partitioning.partition_of(
                UUID(str(letter["aggregate_id"])), self.partition.count)
            checkpoint = checkpoints.get(cur, self.checkpoint_name, partition, lock=True)
            if checkpoint is not None:
                self._check_generation(checkpoint.generation)
            events = open_events(cur, self.keyring, dlq.events_of(cur, letter))
            try:
                broken = next((e for e in events if e.undecodable is not None), None)
                if broken is not None:
                    raise EventUndecodable(
                        f"the event at position {broken.position} cannot be decoded"
                        f" ({broken.undecodable}); discard it with `aura-es dlq discard`"
                    )
                with self.conn.transaction():
                    _apply(self.projection, events, self._tx(cur))
            except Exception as e:
                dlq.record_retry_failure(cur, dead_letter_id, e)
                return False
            applied = dlq.resolve(cur, dead_letter_id)
            checkpoints.count_applied(cur, self.checkpoint_name, applied, partition)
        return True

    def _lock_checkpoint(self, cur: psycopg.Cursor[Any]) -> None:
        checkpoint = checkpoints.lock_for_batch(cur, self.checkpoint_name,
                                                self.partition.index)
        if checkpoint is not None:
            self._check_generation(checkpoint.generation)
            self._check_lease(checkpoint)
        stored = checkpoint.cursor if checkpoint else None
        if stored != self.cursor:
            raise LostOwnership(
                f"projection {self.checkpoint_name!r}: checkpoint is {stored}, this worker "
                f"expected {self.cursor}; another worker has taken over"
            )

    def _check_lease(self, checkpoint: checkpoints.Checkpoint) -> None:
        """The fence (G12): in the batch's own transaction, before anything is written."""
        if checkpoint.partitions != self.partition.count:
            raise LostOwnership(
                f"projection {self.checkpoint_name!r}: split into {checkpoint.partitions}"
                f" partitions, this runner reads partition {self.partition}")
        if self.lease is not None and (checkpoint.owner, checkpoint.epoch) != self.lease:
            raise LostOwnership(
                f"projection {self.checkpoint_name!r} partition {self.partition}: the lease"
                f" is {checkpoint.owner or 'free'} epoch {checkpoint.epoch}, this worker held"
                f" epoch {self.lease[1]}; another worker has taken it over")

    def _advance(
        self, cur: psycopg.Cursor[Any], cursor: Cursor, covered: int, applied: int,
    ) -> tuple[Cursor, int]:
        """Moves the checkpoint in the batch's transaction; returns where the runner is
        once that commits (a rolled-back batch leaves it where its checkpoint is)."""
        if cursor != self.cursor or covered > self.position:
            checkpoints.advance(cur, self.checkpoint_name, cursor, covered, applied,
                                self.partition.index)
        return cursor, max(self.position, covered)

    def run_until_caught_up(self) -> int:
        """Steps until the head seen at the last step is reached; returns events applied."""
        applied = 0
        while True:
            step = self.step()
            applied += step.applied
            if step.caught_up:
                return applied


def _apply(projection: Projection, events: Sequence[EventEnvelope], tx: Tx) -> None:
    """Hands ``events`` to the projection in order; an erasure event is its
    ``erase_subject`` call, between the events before and after it."""
    start = 0
    for i, event in enumerate(events):
        if event.topic == ERASURE_TOPIC:
            if i > start:
                projection.handle(events[start:i], tx)
            subject = event.payload.get("subject")
            if isinstance(subject, str):
                projection.erase_subject(tx, subject)
            start = i + 1
    if start < len(events):
        projection.handle(events[start:] if start else events, tx)


def _up_to_undecodable(batch: Batch) -> Batch:
    """The batch cut before its first undecodable event, or that event alone when it
    comes first: it is handled on its own, everything before it as usual."""
    cut = next((i for i, e in enumerate(batch.events) if e.undecodable is not None), None)
    if cut is None:
        return batch
    if cut == 0:
        first = batch.events[0]
        return Batch(events=batch.events[:1], scanned_to=Cursor.of(first), caught_up=False,
                     covered=first.position)
    last = batch.events[cut - 1]
    return Batch(events=batch.events[:cut], scanned_to=Cursor.of(last), caught_up=False,
                 covered=last.position)
