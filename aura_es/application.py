"""The domain-agnostic application: the ``eventsourcing`` library wired to our store.

``EventSourcedApp`` builds the recorder, the mapper (with the schema check injected) and
the connection pool from a database URL, and is the ``CommandStore`` its
``commands.CommandPipeline`` loads and saves through. What a command is, and how it runs
exactly once, is ``aura_es.commands``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
)
from eventsourcing.persistence import InterfaceError as PersistenceInterfaceError
from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    Notification,
    Recording,
    StoredEvent,
)
from eventsourcing.persistence import OperationalError as PersistenceOperationalError
from eventsourcing.utils import Environment

from aura_es import db, heap, payload
from aura_es.aggregate import AuraAggregate
from aura_es.commands import (
    Appended,
    Command,
    CommandPipeline,
    CommandResult,
    count_appended,
    through_outages,
)
from aura_es.db import first_line
from aura_es.dsn import parse_database_url, redact
from aura_es.errors import (
    AggregateNotFound,
    ConfigurationError,
    EventUndecodable,
    ServiceUnavailable,
)
from aura_es.personal import personal_fields
from aura_es.schemas.validate import check_payload
from aura_es.settings import Settings
from aura_es.store import (
    eventlog,
    idempotency,
    identity,
    keystore,
    liveness,
    owners,
    pooled,
    subjects,  # noqa: F401 - the erasure's event type is the framework's own
)
from aura_es.store.at_once import AppendAtOnce
from aura_es.store.factory import SERIAL_APPENDS, WAKE_INTERVAL_MS, AuraFactory
from aura_es.store.idempotency import IdempotencyRecord
from aura_es.store.keyring import Keyring
from aura_es.store.mapper import JsonMapper
from aura_es.store.recorder import STATEMENT_TIMEOUT_SECONDS

A = TypeVar("A", bound=AuraAggregate)

DEFAULT_OUTAGE_SECONDS = 30.0
OUTAGE_SECONDS = "AURA_ES_OUTAGE_SECONDS"


def outage_seconds_from_env(default: float) -> float:
    """``AURA_ES_OUTAGE_SECONDS`` (0 to 3600), or ``default``; anything else is one line."""
    return outage_seconds(os.environ.get(OUTAGE_SECONDS, ""), default)


def outage_seconds(raw: str, default: float) -> float:
    """An ``AURA_ES_OUTAGE_SECONDS`` value: seconds from 0 to 3600 ("" for ``default``)."""
    if not raw.strip():
        return default
    try:
        # float() parses the value itself (it allows spaces around a number, never a
        # control character that str.strip would quietly drop, such as "0\x1f").
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ConfigurationError(f"{OUTAGE_SECONDS}={raw[:40]!r}: give seconds from 0 to 3600")
    return value


#: The tables this application writes; the rest are the workers' and the mirror's.
STORE_TABLES = [eventlog.OWNER, idempotency.OWNER, identity.OWNER, keystore.OWNER]


class EventSourcedApp(Application[UUID]):
    """An ``eventsourcing`` Application on PostgreSQL with idempotent commands.

    Subclass it with your own command methods, or call ``execute`` directly.
    """

    name = "aura"
    max_attempts = 5
    #: The largest event this application stores (bytes of JSON); see ``aura_es.payload``.
    max_event_bytes = payload.MAX_EVENT_BYTES
    #: Append under a table lock, so positions commit in order: only for the library's
    #: own position readers (``select_notifications``, ``subscribe``); see
    #: docs/guarantees.md. Also on when the environment sets AURA_ES_SERIAL_APPENDS=y.
    serial_appends = False
    #: How long a keyed command rides out an outage of the store (a failover, a restart)
    #: before its error reaches the caller; also ``AURA_ES_OUTAGE_SECONDS`` (0: never).
    outage_seconds = DEFAULT_OUTAGE_SECONDS

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # Before this application exists: it stays collectable, and the process's
        # start-up heap is no longer walked by every full collection (a tenth of a
        # bulk load's client CPU; ``aura_es.heap``).
        heap.settle_once()
        return super().__new__(cls)

    def __init__(
        self,
        database_url: str | None = None,
        *,
        pool_size: int = 4,
        check_schema: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        url = database_url or Settings().resolved_database_url()
        self.database_url = url
        self._pg = parse_database_url(url)
        self._pool_size = pool_size
        self._extra_env = env or {}
        self.outage_seconds = outage_seconds_from_env(self.outage_seconds)
        # Connect once up front: an unreachable server is one clear error, not a
        # pool timeout deep inside the library.
        with self.connect() as conn:
            if check_schema:
                owners.require(conn, STORE_TABLES)
        super().__init__()
        self.commands = CommandPipeline(self)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Any:
        return cls(Settings().resolved_database_url(), **kwargs)

    # -- eventsourcing wiring ---------------------------------------------------------

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Explicit, not os.environ: POSTGRES_ENABLE_DB_FUNCTIONS must stay off (its
        # insert function skips our idempotency hook and the reserved positions).
        values = {
            "POSTGRES_DBNAME": self._pg.dbname,
            "POSTGRES_HOST": self._pg.host,
            "POSTGRES_PORT": self._pg.port,
            "POSTGRES_USER": self._pg.user,
            "POSTGRES_PASSWORD": self._pg.password,
            "POSTGRES_POOL_SIZE": str(self._pool_size),
            "POSTGRES_MAX_OVERFLOW": str(self._pool_size),
            "POSTGRES_CONNECT_TIMEOUT": "5",
            # A pooled connection is checked before use: after a failover or a restart
            # the pool's connections are dead, and a dead one is dropped, not handed out
            # (``store/liveness.py`` makes the check cost a poll(), not a round trip).
            "POSTGRES_PRE_PING": "y",
            "CREATE_TABLE": "n",
            SERIAL_APPENDS: "y" if self.serial_appends else os.environ.get(SERIAL_APPENDS, "n"),
            WAKE_INTERVAL_MS: os.environ.get(WAKE_INTERVAL_MS, ""),
            **self._extra_env,
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        }
        return Environment(name, values)

    def construct_factory(self, env: Environment) -> AuraFactory:  # type: ignore[override]
        factory = AuraFactory(env)
        # The library's pool knows five parameters; every other one the URL gives
        # (sslmode, sslrootcert, options, …) must reach its connections too.
        pool = factory.datastore.pool
        # The library passes psycopg_pool's own check (a query per checkout); ours asks
        # the socket first. The pool keeps its check here; the library offers no other way.
        pool._check = liveness.check  # type: ignore[attr-defined]
        pool_kwargs = pool.kwargs
        assert isinstance(pool_kwargs, dict)
        pool_kwargs.update(self._pg.connect_kwargs())
        # Writes go only where writes are taken: of a URL's hosts, the primary (a
        # standby named beside it, or left behind by a failover, is skipped).
        pool_kwargs.setdefault("target_session_attrs", "read-write")
        # An append is one statement: bound it (a stalled client holds nothing long).
        options = pool_kwargs.get("options", "")
        pool_kwargs["options"] = (
            f"{options} -c statement_timeout={STATEMENT_TIMEOUT_SECONDS * 1000}").strip()
        return factory

    def construct_mapper(self) -> Mapper[UUID]:
        # Every write is checked against its type's schema (docs/schemas.md, G10), and
        # personal fields are sealed with their subject's key (docs/erasure.md).
        return JsonMapper(self.max_event_bytes, check=check_payload, keyring=self.keyring)

    @functools.cached_property
    def keyring(self) -> Keyring:
        """The subjects' data keys, reached through this application's pool; the master
        key from ``AURA_ES_MASTER_KEY`` (or the embedded default's key file)."""
        return Keyring.from_env(
            connect=lambda: pooled.connection(self.factory.datastore))  # type: ignore[attr-defined]

    def construct_recorder(self) -> Any:
        recorder = super().construct_recorder()
        recorder.keyring = self.keyring  # type: ignore[attr-defined]
        return recorder

    # -- connections --------------------------------------------------------------------

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new plain connection to the store's database (callers close it)."""
        return db.connect(self.database_url, autocommit=autocommit)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        # The connection the recorder keeps between appends, when free: a read of
        # aggregates for a command then costs no checkout from the pool.
        with self.recorder.connection() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
            yield cur

    def init_schema(self) -> None:
        """Creates the store's own tables; harmless when they exist. (`aura-es db init`,
        ``aura_es.tables.create_all``, creates those of the workers and the mirror too.)"""
        self.recorder.create_table()  # type: ignore[attr-defined]
        with self.connect() as conn:
            owners.create(conn, STORE_TABLES)

    # -- commands -----------------------------------------------------------------------

    def execute(self, command: Command) -> CommandResult:
        """Runs ``command`` once; a retry with the same key returns the original result."""
        return self.commands.execute(command)

    def execute_many(self, commands: Sequence[Command]) -> list[CommandResult]:
        """Runs many commands in one transaction: far faster for bulk loads (a conflict
        runs each again on its own, which sorts out which were duplicates)."""
        return self.commands.execute_many(commands)

    # -- the pipeline's store (``commands.CommandStore``) ----------------------------------

    def save_command(self, aggregate: AuraAggregate,
                     record: IdempotencyRecord | None) -> list[Appended]:
        """One command's save when it raised one event (most commands): by the
        recorder's one-event append, without the steps a save of many aggregates takes,
        which cost a keyed command ~5% of its client CPU (issue 27). The effects are
        ``save_commands``'s."""
        if len(aggregate.pending_events) != 1 or not self._saves_plainly:
            return self.save_commands(aggregate, records=[record])
        [event] = aggregate.collect_events()
        try:
            stored = self._json_mapper.to_stored_event(event)
            position = self.recorder.insert_one(stored, record)  # type: ignore[attr-defined]
        except (PersistenceOperationalError, PersistenceInterfaceError) as e:
            raise _not_taken(e) from None
        appended = [Appended(event.originator_id, event.originator_version, stored.topic,
                             position)]
        count_appended(appended)
        return appended

    @contextlib.contextmanager
    def saving_at_once(self, key_hashes: list[str]) -> Iterator[BatchSave]:
        """A batch's save in one round trip (``store/at_once.py``): its keys looked up
        first, then its key rows inserted as its commands are decided, the server at
        work meanwhile (issue 27). ``BatchSave.appended`` says what was saved
        once the block is left."""
        batch = BatchSave(self)
        try:
            with self.recorder.appending_at_once(key_hashes) as at_once:  # type: ignore[attr-defined]
                batch.at_once = at_once
                yield batch
        except (PersistenceOperationalError, PersistenceInterfaceError) as e:
            raise _not_taken(e) from None
        if batch.later is not None:
            batch.appended = self.save_commands(*batch.later[0], records=batch.later[1])
        elif batch.appended:
            count_appended(batch.appended)

    def save_commands(
        self, *aggregates: AuraAggregate, records: Sequence[IdempotencyRecord | None]
    ) -> list[Appended]:
        try:
            keys = idempotency.KeyRows(tuple([r for r in records if r is not None]))
            appended = self._save_aggregates(aggregates, keys.as_save_kwargs())
        except (PersistenceOperationalError, PersistenceInterfaceError) as e:
            raise _not_taken(e) from None
        count_appended(appended)
        return appended

    def _save_aggregates(
        self, aggregates: Sequence[AuraAggregate], kwargs: dict[str, Any]
    ) -> list[Appended]:
        """The library's ``save``, with its steps taken directly.

        Its ``collect_events`` checks every object against two runtime Protocols, which
        Python 3.11 evaluates attribute by attribute (22% of the client CPU of a
        100-command ``execute_many``, profiled), and its ``_record`` and
        ``EventStore.put`` build a processing event and a recording per event, through
        two more layers, for what is a mapping and one insert (issue 27). The effects
        are the library's: the events stored in one append, the repository's cache and
        snapshots kept, its ``_notify`` (given the recordings, when a subclass has one)
        and ``notify`` hooks called.
        """
        if len(aggregates) == 1:
            events: list[Any] = list(aggregates[0].collect_events())
        else:
            events = []
            for aggregate in aggregates:
                events.extend(aggregate.collect_events())
        stored = self._json_mapper.to_stored_events(events)
        positions = self.recorder.insert_events(stored, **kwargs) or ()
        appended = _appended(events, stored, positions)
        self._after_save(aggregates, events, stored, positions)
        return appended

    def _after_save(self, aggregates: Sequence[AuraAggregate], events: list[Any],
                    stored: Sequence[StoredEvent], positions: Sequence[int]) -> None:
        """The library's effects of a save beyond its insert (its aggregate cache, its
        snapshots, a subclass's hooks): once the save is committed."""
        if self._saves_plainly:
            return
        cached = bool(self.repository.cache) and not self.repository.fastforward
        if cached or (self.snapshots and self.snapshotting_intervals):
            processing_event = ProcessingEvent[UUID]()
            processing_event.events.extend(events)
            for aggregate in aggregates:
                processing_event.aggregates[aggregate.id] = aggregate
            if cached:
                assert self.repository.cache is not None
                for aggregate in aggregates:
                    self.repository.cache.put(aggregate.id, aggregate)
            self._take_snapshots(processing_event)
        if type(self)._notify is not Application._notify:
            self._notify([
                Recording(d, Notification(originator_id=s.originator_id,
                                          originator_version=s.originator_version,
                                          topic=s.topic, state=s.state, id=position))
                for d, s, position in zip(events, stored, positions, strict=True)])
        self.notify(events)  # the library's deprecated hook

    @functools.cached_property
    def _json_mapper(self) -> JsonMapper:
        assert isinstance(self.mapper, JsonMapper)
        return self.mapper

    @functools.cached_property
    def _saves_plainly(self) -> bool:
        """Whether a save has nothing to do beyond the insert: no aggregate cache, no
        snapshots, no ``_notify`` or ``notify`` of a subclass. Asked once: each of
        those checks, made after every round trip, cost a keyed command more client CPU
        than its own few lines suggest (issue 27)."""
        return (not self.repository.cache
                and not (self.snapshots and self.snapshotting_intervals)
                and type(self)._notify is Application._notify
                and type(self).notify is Application.notify)

    def load_aggregate(self, aggregate_id: UUID) -> AuraAggregate:
        try:
            aggregate: object = self.repository.get(aggregate_id, projector_func=_projected)
        except AggregateNotFoundError:
            raise AggregateNotFound(aggregate_id) from None
        except MapperDeserialisationError as e:
            raise EventUndecodable(f"aggregate {aggregate_id}: {e}") from None
        except (PersistenceOperationalError, PersistenceInterfaceError) as e:
            raise ServiceUnavailable(
                f"the event store did not answer: {redact(first_line(e))}") from None
        assert isinstance(aggregate, AuraAggregate)
        return aggregate

    def load_aggregates(self, aggregate_ids: list[UUID]) -> dict[UUID, AuraAggregate]:
        """The current state of many aggregates from one query; missing ids are left out."""
        if not aggregate_ids:
            return {}
        history: dict[UUID, list[Any]] = {}
        with self._cursor() as cur:
            rows = eventlog.histories(cur, aggregate_ids)
        sealed_for = {row["subject"] for row in rows if row["subject"] is not None}
        if sealed_for:
            # Their keys read in one query and cached for the events' opening below,
            # where each subject's first event would read its own (a query and a
            # pooled connection apiece).
            self.keyring.for_reading(sealed_for)
        for row in rows:
            stored = StoredEvent(
                row["originator_id"], row["originator_version"], row["topic"],
                bytes(row["state"]),
            )
            try:
                event = self.mapper.to_domain_event(stored)
            except MapperDeserialisationError as e:
                raise EventUndecodable(f"aggregate {row['originator_id']}: {e}") from None
            history.setdefault(row["originator_id"], []).append(event)
        loaded: dict[UUID, AuraAggregate] = {}
        for aggregate_id, domain_events in history.items():
            aggregate = _projected(None, domain_events)
            if isinstance(aggregate, AuraAggregate):
                loaded[aggregate_id] = aggregate
        return loaded

    def get(self, aggregate_id: UUID, expected: type[A]) -> A:
        """The aggregate's current state; an outage is ridden out like a command's."""
        aggregate = through_outages(self.outage_seconds,
                                    lambda: self.load_aggregate(aggregate_id))
        if not isinstance(aggregate, expected):
            raise AggregateNotFound(aggregate_id)
        return aggregate

    def positions_of(self, aggregate_id: UUID, to_version: int) -> tuple[int, ...]:
        with self._cursor() as cur:
            return tuple(eventlog.positions_of(cur, aggregate_id, to_version))

    def stored_keys(self, key_hashes: list[str]) -> dict[str, dict[str, Any]]:
        return self.recorder.stored_keys(key_hashes)  # type: ignore[attr-defined,no-any-return]

    def prune_idempotency_keys(self, older_than: Any) -> int:
        with self.connect() as conn:
            return idempotency.prune(conn, older_than)

    def head_position(self) -> int:
        return int(self.recorder.max_notification_id() or 0)


class BatchSave:
    """One batch's save in its own transaction (``saving_at_once``)."""

    def __init__(self, app: EventSourcedApp) -> None:
        self._app = app
        self.at_once: AppendAtOnce | None = None
        #: The events the batch appended; None while (or when) nothing was.
        self.appended: list[Appended] | None = None
        #: Saved after the transaction: what a store cannot map inside it.
        self.later: tuple[Sequence[AuraAggregate], Sequence[IdempotencyRecord]] | None = None
        self._records: list[IdempotencyRecord] = []
        self._keys_inserted = 0

    def must_look_up(self, *, wait: bool = False) -> bool:
        """Whether the batch must be run the careful way: the server has answered that a
        key is stored (or refused a key row), or this store cannot save a batch at once.
        Waits for the keys' answer only when told to."""
        at_once = self.at_once
        return at_once is None or at_once.none_stored(wait=wait) is False or (
            self._keys_inserted > 0 and at_once.refused())

    def stored_keys(self) -> dict[str, dict[str, Any]] | None:
        """The batch's keys found stored by its question (``EventSourcedApp.stored_keys``'s
        rows), once ``must_look_up`` has said so; None when not known."""
        return None if self.at_once is None else self.at_once.stored()

    def decided(self, record: IdempotencyRecord) -> None:
        """A command decided: its key row goes to the server with the next few, once it
        has answered that none of the batch's keys is stored."""
        records = self._records
        records.append(record)
        due = _FIRST_KEY_ROWS if not self._keys_inserted else _KEY_ROWS_AT_ONCE
        if len(records) - self._keys_inserted >= due:
            at_once = self.at_once
            assert at_once is not None
            if at_once.none_stored(wait=False):
                at_once.insert_keys(tuple(records[self._keys_inserted:]))
                self._keys_inserted = len(records)

    def save(self, aggregates: Sequence[AuraAggregate],
             meanwhile: Callable[[list[Appended]], None] | None = None) -> None:
        """Appends the decided aggregates' events and the key rows of the commands
        decided, unless a key row was refused (``appended`` stays None then: nothing
        saved). ``meanwhile`` is given what was appended while the commit is on the
        server (it may still fail: nothing it does may be seen before it returns)."""
        at_once = self.at_once
        assert at_once is not None
        kinds: set[type] = {type(e) for a in aggregates for e in a.pending_events}
        if any(map(personal_fields, kinds)):
            # Sealing may make a subject's key on a pooled connection: mapped and saved
            # once this transaction is over (rolled back), when no key is stored.
            if at_once.none_stored(wait=True):
                self.later = (aggregates, self._records)
            return
        app = self._app
        events: list[Any] = []
        for aggregate in aggregates:
            events.extend(aggregate.collect_events())
        stored = app._json_mapper.to_stored_events(events)
        appended: list[Appended] = []

        def while_committing(positions: list[int]) -> None:
            appended.extend(_appended(events, stored, positions))
            if meanwhile is not None:
                meanwhile(appended)

        # An append that returns its positions gave them to ``while_committing`` first.
        positions = at_once.append(stored, tuple(self._records[self._keys_inserted:]),
                                   while_committing)
        if positions is None:
            return
        app._after_save(aggregates, events, stored, positions)
        self.appended = appended


def _projected(aggregate: Any, domain_events: Iterable[Any]) -> Any:
    """The library's ``project_aggregate`` (each event's ``mutate`` in turn), without
    its check of every event against a runtime Protocol, which Python 3.11 makes
    attribute by attribute: 17% of a bulk load's CPU (profiled), a few µs an event of
    every update's load. An event that cannot mutate still fails, on ``mutate``."""
    for event in domain_events:
        aggregate = event.mutate(aggregate)
    return aggregate


#: Key rows sent to the server together while a batch is decided (a statement each;
#: the first few early, so the server starts soon).
_KEY_ROWS_AT_ONCE = 25
_FIRST_KEY_ROWS = 8


def _appended(events: list[Any], stored: Sequence[StoredEvent],
              positions: Sequence[int]) -> list[Appended]:
    if len(positions) != len(stored):
        raise AssertionError(f"{len(stored)} events stored, {len(positions)} positions")
    return [Appended(d.originator_id, d.originator_version, s.topic, position)
            for d, s, position in zip(events, stored, positions, strict=True)]


def _not_taken(error: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the event store did not take the append: {redact(first_line(error))}")
