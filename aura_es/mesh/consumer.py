"""A JetStream consumer that applies aura-es events to a service's own tables exactly
once, in stream order.

The service's database holds the only record of progress (``checkpoint``). Each pass
reads the stream in order from just after the checkpoint (``reader.OrderedRead``, a
consumer of its own that acknowledges nothing), and applies each batch in ONE
transaction that locks the checkpoint row, checks that it still says what this pass
believes, hands the messages to the handlers and moves the checkpoint. A crash anywhere
applies nothing twice and loses nothing: the next pass starts from whatever committed.
Redeliveries cannot reorder anything, because nothing is redelivered: a failed batch is
tried again from memory, and a broken pass is started again from the checkpoint.

What a message holds never stalls the consumer: content that cannot be applied is
recorded in ``aura_mesh_rejected`` (see ``rejected``); a handler that fails on one event
``max_retries`` times isolates it there as poison, and parks the later events of its
aggregate behind it, so every aggregate's events are still applied in order
(``redeliver`` applies them once the handler is fixed). Only outages and the service's
own setup (a missing upcaster or schema bucket) are retried for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import nats
import orjson
import psycopg
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from nats.js import JetStreamContext

from aura_es import broker
from aura_es.db import connect
from aura_es.errors import ConfigurationError, EventUndecodable, ServiceUnavailable
from aura_es.log import get_logger
from aura_es.mesh import checkpoint, rejected, resume
from aura_es.mesh.checkpoint import State
from aura_es.mesh.origin import Malformed, Origin, fingerprint, origin
from aura_es.mesh.reader import OrderedRead, ReadBroken
from aura_es.mirror import schema_registry
from aura_es.personal import SEALED_KEY
from aura_es.retry import Backoff
from aura_es.schemas.generate import parse_schema_uri, schema_uri
from aura_es.store import sealing
from aura_es.store.eventlog import ORIGIN
from aura_es.store.keyring import Keyring

Upcaster = Callable[[dict[str, Any]], None]
#: Waits after a failed batch (handler error, database or broker unwell).
RETRY = Backoff(base=0.5, cap=30.0)
#: Waits before a new pass when another copy of the consumer moved the checkpoint.
STANDBY = Backoff(base=1.0, cap=1.0, jitter="equal")


@dataclass(frozen=True)
class Delivery:
    """One event as a handler gets it: ``data`` is at the subscription's version."""

    topic: str
    version: int
    data: dict[str, Any]
    aggregate_id: UUID
    position: int
    stream_seq: int
    event_id: str
    cloud_event: dict[str, Any] = field(repr=False)
    #: With ``position``, the event's place in the store's log.
    transaction: int = 0


Handler = Callable[[psycopg.Cursor[Any], Delivery], None]


@dataclass(frozen=True)
class Subscription:
    """``handler`` gets events of ``topic`` at ``version`` (the one the service was
    built for): older ones go through ``upcasters[k]`` (k to k+1) first; newer ones are
    handed over as they are, which FULL compatibility makes safe (checked against
    ``version``'s schema first)."""

    topic: str
    version: int
    handler: Handler
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """A message that is never applied, and why."""

    reason: str
    kind: str = "invalid"


@dataclass(frozen=True)
class Prepared:
    seq: int
    headers: dict[str, str]
    body: bytes
    origin: Origin | None
    #: A Delivery to apply, Rejected, or None when nothing subscribes to its type.
    outcome: Delivery | Rejected | None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.headers, self.body)


class _HandlerFailed(Exception):
    def __init__(self, seq: int, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.seq = seq
        self.error = error


#: Errors that say the service's database is unwell, not that one event is bad.
_OUTAGES = (psycopg.OperationalError, psycopg.InterfaceError, ServiceUnavailable)


class MeshConsumer:
    def __init__(
        self, name: str, database_url: str, nats_url: str,
        subscriptions: Sequence[Subscription], *, stream: str = "AURA_EVENTS",
        subject_prefix: str = "aura.events", batch_size: int = 100,
        max_retries: int | None = 5, retry: Backoff = RETRY,
        on_committed: Callable[[int], None] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        if max_retries is not None and max_retries < 0:
            raise ConfigurationError(f"max_retries must be 0 or more, or None; got {max_retries}")
        self.name = name
        self.database_url = database_url
        self.nats_url = nats_url
        self.subscriptions = {s.topic: s for s in subscriptions}
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.batch_size = batch_size
        #: Retries of a handler failing on one event before it is isolated as poison
        #: (None: retried for ever, the event's aggregate and every later one wait).
        self.max_retries = max_retries
        self.retry = retry
        #: Called after each commit with the number of events applied.
        self.on_committed = on_committed
        #: Key access (the store's key table and the master key): handlers then get
        #: sealed personal fields opened, or erased placeholders. Without it they get
        #: the placeholders the stream carries (docs/erasure.md).
        self.keyring = keyring
        self.stop = asyncio.Event()
        #: Events applied, re-published events absorbed, messages rejected (this process).
        self.applied = 0
        self.absorbed = 0
        self.rejected = 0
        #: Fetches that found nothing new (an idle consumer is not a failing one).
        self.idle_polls = 0
        self.log = get_logger(component="mesh", consumer=name)
        self._schemas: dict[str, Draft202012Validator] = {}
        self._failures = 0
        self._attempts: dict[int, int] = {}
        self._poison: dict[int, str] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._standing_by = False

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Until ``stop`` is set. Broker and database outages are retried for ever."""
        nc = await broker.connect(self.nats_url, error_cb=self._nats_error)
        try:
            while not self.stop.is_set():
                try:
                    await self._pass(nc.jetstream())
                except ReadBroken as e:
                    if self._standing_by:
                        await self._sleep(STANDBY.delay(1))
                    else:
                        self.log.info("starting a new pass from the checkpoint", reason=str(e))
                except _OUTAGES as e:
                    self._close_database()
                    await self._back_off(e)
                except (nats.errors.Error, TimeoutError, OSError, ConfigurationError) as e:
                    await self._back_off(e)
        finally:
            self._close_database()
            # Not drain(): nothing is acknowledged, and a broker that is away helps nobody.
            with contextlib.suppress(Exception):
                await nc.close()

    def _database(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close_database()
            self._conn = connect(self.database_url)
            checkpoint.ensure(self._conn, self.name, self.stream)
            rejected.ensure(self._conn)
        return self._conn

    def _close_database(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    async def _pass(self, js: JetStreamContext) -> None:
        conn = self._database()
        loaded = checkpoint.load(conn, self.name)
        begin = await resume.start(js, self.stream, loaded)
        if begin.note:
            self.log.warning("the stream changed under this consumer", detail=begin.note)
        if begin.lost:
            self.log.error("the stream no longer holds messages this consumer never read"
                           " (max_age, a purge): they cannot be applied",
                           from_seq=begin.lost[0], to_seq=begin.lost[1])
        read = OrderedRead(js, self.stream, f"{self.subject_prefix}.>", begin.seq,
                           description=f"aura-es mesh consumer {self.name}")
        await read.open()
        upcoming: asyncio.Future[list[Any]] | None = None
        try:
            # What the checkpoint row must say for this pass to write it: as loaded,
            # then as this pass last wrote it. ``begin.state`` may carry a cursor
            # recovered from the stream, written with the first batch.
            believed, carried = loaded, begin.state
            upcoming = asyncio.ensure_future(read.batch(self.batch_size, timeout=1.0))
            while not self.stop.is_set():
                msgs = await upcoming
                # The next batch is asked for before this one is applied: the broker sends
                # it while the database works (the apply blocks this loop; the request
                # goes out at the yield below).
                upcoming = asyncio.ensure_future(read.batch(self.batch_size, timeout=1.0))
                await asyncio.sleep(0)
                if not msgs:
                    self.idle_polls += 1
                else:
                    batch = [await self._prepare(js, m.metadata.sequence.stream,
                                                 dict(m.headers or {}), m.data) for m in msgs]
                    believed = carried = await self._apply_until_done(conn, batch, believed,
                                                                      carried)
            upcoming.cancel()
        finally:
            if upcoming is not None and not upcoming.done():
                upcoming.cancel()
                with contextlib.suppress(BaseException):
                    await upcoming
            await read.close()

    async def _apply_until_done(self, conn: psycopg.Connection[Any], batch: list[Prepared],
                                believed: State, carried: State) -> State:
        """Applies ``batch``, retrying it from memory after a handler's failure (the
        same messages, in the same order); returns the checkpoint as written."""
        while True:
            try:
                written, applied = self._apply(conn, batch, believed, carried)
            except _HandlerFailed as e:
                attempts = self._attempts[e.seq] = self._attempts.get(e.seq, 0) + 1
                self.log.error("handler failed", stream_seq=e.seq, attempt=attempts,
                               error=str(e))
                if self.max_retries is not None and attempts > self.max_retries:
                    self._poison[e.seq] = str(e)[:500]
                    continue  # the next try records it as poison and goes on
                await self._back_off(e.error)
                if self.stop.is_set():
                    raise ReadBroken("stopping") from None
                continue
            self._failures = 0
            self._standing_by = False
            for prepared in batch:
                self._attempts.pop(prepared.seq, None)
                self._poison.pop(prepared.seq, None)
            self.applied += applied
            if self.on_committed is not None:
                self.on_committed(applied)
            return written

    def _apply(self, conn: psycopg.Connection[Any], batch: list[Prepared], believed: State,
               carried: State) -> tuple[State, int]:
        applied = 0
        with conn.transaction(), conn.cursor() as cur:
            state = checkpoint.lock(cur, self.name)
            if state != believed:
                self._another_copy_moved_it()
            state = replace(carried, parked=state.parked)
            held = (rejected.held_back(cur, self.name, {p.outcome.aggregate_id for p in batch
                                                        if isinstance(p.outcome, Delivery)})
                    if state.parked else set())
            for p in batch:
                ours = p.origin is not None and (
                    p.origin.store is None or state.store in (None, p.origin.store))
                if ours and p.origin is not None and p.origin.cursor <= (state.cursor or ORIGIN):
                    # The same event again (the relay re-published it after the stream
                    # lost its tail): it was read already.
                    self.absorbed += 1
                    state = state.read(p.seq, p.fingerprint)
                    continue
                outcome = p.outcome
                if p.origin is not None and not ours:
                    outcome = Rejected(f"published by store {p.origin.store}; this consumer"
                                       f" reads store {state.store}")
                if isinstance(outcome, Rejected):
                    self._record(cur, p, outcome)
                elif isinstance(outcome, Delivery):
                    state, done = self._deliver(cur, p, outcome, state, held)
                    applied += done
                if ours and p.origin is not None:
                    state = state.read(p.seq, p.fingerprint, p.origin.cursor, p.origin.store)
                else:
                    state = state.read(p.seq, p.fingerprint)
            checkpoint.advance(cur, self.name, state, applied)
        return state, applied

    def _deliver(self, cur: psycopg.Cursor[Any], p: Prepared, delivery: Delivery,
                 state: State, held: set[UUID]) -> tuple[State, int]:
        """Applies one delivery, or parks it behind its aggregate's poison event, or
        isolates it as poison; returns the state and how many were applied (0 or 1)."""
        aggregate = delivery.aggregate_id
        if aggregate in held:
            self._record(cur, p, Rejected(f"parked behind an earlier poison event of"
                                          f" aggregate {aggregate}", "parked"), aggregate)
            return replace(state, parked=state.parked + 1), 0
        if p.seq in self._poison:
            self._record(cur, p, Rejected(f"the handler failed on it"
                                          f" {self._attempts.get(p.seq, 0)} times:"
                                          f" {self._poison[p.seq]}", "poison"), aggregate)
            held.add(aggregate)
            return replace(state, parked=state.parked + 1), 0
        self._handle(cur, p.seq, delivery)
        return state, 1

    def _another_copy_moved_it(self) -> None:
        if not self._standing_by:
            self.log.info("another copy of this consumer is applying; standing by")
            self._standing_by = True
        raise ReadBroken("another copy of this consumer moved the checkpoint")

    def _handle(self, cur: psycopg.Cursor[Any], seq: int, delivery: Delivery) -> None:
        try:
            self.subscriptions[delivery.topic].handler(cur, delivery)
        except _OUTAGES:
            raise
        except Exception as e:  # the handler's own: retried, then isolated as poison
            raise _HandlerFailed(seq, e) from e

    def _record(self, cur: psycopg.Cursor[Any], p: Prepared, why: Rejected,
                aggregate_id: UUID | None = None) -> None:
        rejected.record(cur, self.name, p.seq, p.body, why.reason, kind=why.kind,
                        aggregate_id=aggregate_id, headers=p.headers)
        self.rejected += 1
        self.log.error("message rejected", stream_seq=p.seq, kind=why.kind, reason=why.reason)

    # -- poison and parked events, again ------------------------------------------------

    async def redeliver(self, aggregate_id: UUID | None = None) -> int:
        """Hands the poison and parked events (of one aggregate, or all) to their handlers
        again, in stream order, in one transaction that also forgets them; returns how
        many were applied. A handler that still fails raises, and nothing changes."""
        nc = await broker.connect(self.nats_url, error_cb=self._nats_error, forever=False)
        try:
            js = nc.jetstream()
            with connect(self.database_url) as conn:
                checkpoint.ensure(conn, self.name, self.stream)
                rejected.ensure(conn)
                with conn.transaction(), conn.cursor() as cur:
                    checkpoint.lock(cur, self.name)  # the loop waits meanwhile
                    rows = rejected.holding(cur, self.name, aggregate_id)
                    applied = 0
                    for row in rows:
                        p = await self._prepare(js, row.stream_seq, row.headers, row.body)
                        if isinstance(p.outcome, Delivery):
                            self.subscriptions[p.outcome.topic].handler(cur, p.outcome)
                            applied += 1
                    rejected.forget(cur, self.name, [row.stream_seq for row in rows])
                    checkpoint.unpark(cur, self.name, len(rows))
            return applied
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    # -- one message --------------------------------------------------------------------

    async def _prepare(self, js: JetStreamContext, seq: int, headers: dict[str, str],
                       body: bytes) -> Prepared:
        """The message with its origin and outcome. Whatever a message holds (anyone
        allowed to publish on the subjects can put one there), its outcome is a
        Delivery, None or Rejected: content never raises, so one bad message cannot
        stall the consumer in retries. Only the service's own setup (a missing upcaster
        or bucket) raises, and is retried."""
        try:
            found = origin(headers)
        except Malformed as e:
            return Prepared(seq, headers, body, None, Rejected(str(e)))
        if found is None:
            return Prepared(seq, headers, body, None, Rejected(
                "foreign: no aura-es store published it (no Aura-Position header)",
                "foreign"))
        return Prepared(seq, headers, body, found,
                        await self._outcome(js, seq, found, body))

    async def _outcome(self, js: JetStreamContext, seq: int, found: Origin, body: bytes
                       ) -> Delivery | Rejected | None:
        try:
            cloud_event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Rejected("not JSON")
        if not isinstance(cloud_event, dict):
            return Rejected("not a CloudEvent (not a JSON object)")
        if cloud_event.get("auraposition", found.cursor.position) != found.cursor.position:
            return Rejected("its auraposition differs from its Aura-Position header")
        sub = self.subscriptions.get(str(cloud_event.get("type")))
        if sub is None:
            return None
        data = cloud_event.get("data")
        if not isinstance(data, dict):
            return Rejected("its data is not a JSON object (an undecodable event?)")
        try:
            aggregate_id = UUID(str(cloud_event.get("subject")))
        except ValueError:
            return Rejected("its subject is not a UUID")
        version = sub.version
        uri = cloud_event.get("dataschema")
        if uri is not None:
            parsed = parse_schema_uri(str(uri))
            if parsed is None or parsed[0] != sub.topic:
                return Rejected(f"dataschema {str(uri)[:100]!r} is not a schema of {sub.topic}")
            version = parsed[1]
            problem = await self._invalid(js, str(uri), data)
            if problem:
                return Rejected(f"data does not fit {uri}: {problem}")
        if self.keyring is not None and isinstance(data.get(SEALED_KEY), dict):
            try:
                data = self._opened(data, sub.topic, aggregate_id, cloud_event)
            except EventUndecodable as e:
                return Rejected(str(e))
        if version < sub.version:
            data = dict(data)
            for step in range(version, sub.version):
                upcast = sub.upcasters.get(step)
                if upcast is None:
                    raise ConfigurationError(f"{sub.topic}: no upcaster from v{step} to"
                                             f" v{step + 1} in the subscription")
                upcast(data)
        elif version > sub.version:
            # FULL compatibility: the newer data is valid at the version the service knows.
            problem = await self._invalid(js, schema_uri(sub.topic, sub.version), data,
                                          own=True)
            if problem:
                return Rejected(f"v{version} data does not fit v{sub.version}: {problem}")
        return Delivery(
            topic=sub.topic, version=sub.version, data=data, aggregate_id=aggregate_id,
            position=found.cursor.position, stream_seq=seq,
            event_id=str(cloud_event.get("id")), cloud_event=cloud_event,
            transaction=found.cursor.transaction,
        )

    def _opened(self, data: dict[str, Any], topic: str, aggregate_id: UUID,
                cloud_event: dict[str, Any]) -> dict[str, Any]:
        """``data`` with its sealed fields opened (erased placeholders once its subject is
        erased); the seal is bound to the event's topic, aggregate and version."""
        assert self.keyring is not None
        opened = dict(data)
        seal = opened.pop(SEALED_KEY)
        subject = sealing.subject_of_seal(seal)
        version = cloud_event.get("auraversion")
        if subject is None or type(version) is not int:
            raise EventUndecodable(f"event {topic} {aggregate_id}: its seal names no subject"
                                   " or it has no auraversion")
        key = self.keyring.for_reading([subject]).get(subject)
        opened.update(sealing.read_as(seal, key, topic, aggregate_id, version, opened))
        return opened

    async def _invalid(self, js: JetStreamContext, uri: str, data: Any, *, own: bool = False
                       ) -> str | None:
        """Why ``data`` does not fit the schema ``uri`` names (None: it fits). A schema
        the registry lacks is the message's fault, unless it is the subscription's own
        version (``own``): then the service is set up wrong, and it is raised."""
        validator = self._schemas.get(uri)
        if validator is None:
            schema = await schema_registry.fetch(js, uri)
            if schema is None:
                if own:
                    raise ConfigurationError(f"schema {uri} is not in the registry bucket")
                return f"{uri} is not in the registry"
            validator = self._schemas[uri] = Draft202012Validator(schema)
        if validator.is_valid(data):  # the common case, without building error objects
            return None
        error = best_match(validator.iter_errors(data))
        if error is None:
            return None
        where = ".".join(str(p) for p in error.absolute_path) or "(data)"
        return f"field {where}: {error.message[:120]}"

    async def _back_off(self, error: BaseException) -> None:
        self._failures += 1
        delay = self.retry.delay(self._failures)
        self.log.warning("retrying", error=f"{type(error).__name__}: {error}",
                         retry_in_seconds=round(delay, 3))
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _nats_error(self, error: Exception) -> None:
        self.log.warning("nats connection", error=f"{type(error).__name__}: {error}")

