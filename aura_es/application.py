"""The domain-agnostic application: idempotent commands over the event store.

A command names its type, carries an idempotency key and its arguments, and says how
to change one aggregate. ``execute`` runs it exactly once however often it is retried:
the key's hash is stored in the transaction of the events, and a retry gets the
original result back. Commands racing on one aggregate are retried against the new
state a bounded number of times.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    project_aggregate,
)
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    MapperDeserialisationError,
    Recording,
    StoredEvent,
)
from eventsourcing.persistence import InterfaceError as PersistenceInterfaceError
from eventsourcing.persistence import OperationalError as PersistenceOperationalError
from eventsourcing.utils import Environment

from aura_es import db, payload
from aura_es.aggregate import AuraAggregate
from aura_es.db import first_line
from aura_es.dsn import parse_database_url, redact
from aura_es.errors import (
    AggregateNotFound,
    ConcurrencyConflict,
    DomainError,
    EventUndecodable,
    IdempotencyKeyConflict,
    ServiceUnavailable,
)
from aura_es.events import CommandContext, command_context
from aura_es.mapper import JsonMapper
from aura_es.observability.metrics import DUPLICATES_ABSORBED, EVENTS_APPENDED
from aura_es.observability.tracing import span
from aura_es.retry import Backoff
from aura_es.settings import Settings
from aura_es.store import eventlog, idempotency, identity, schema
from aura_es.store.factory import SERIAL_APPENDS, WAKE_INTERVAL_MS, AuraFactory
from aura_es.store.idempotency import IdempotencyRecord
from aura_es.store.recorder import STATEMENT_TIMEOUT_SECONDS

A = TypeVar("A", bound=AuraAggregate)
#: After losing a version race: a short, random wait so the racers spread out.
VERSION_RACE = Backoff(base=0.002, cap=0.05, jitter="full")
#: The tables this application writes; the rest are the workers' and the mirror's.
STORE_TABLES = [eventlog.OWNER, identity.OWNER]


@dataclass(frozen=True)
class CommandResult:
    """What a command stored: the same for the first call and every retry of it."""

    aggregate_id: UUID
    from_version: int
    to_version: int
    positions: tuple[int, ...]
    duplicate: bool = False


@dataclass(frozen=True)
class Create(Generic[A]):
    """A command that creates an aggregate; its id is derived from the idempotency key."""

    type: str
    idempotency_key: str
    request: dict[str, Any]
    make: Callable[[UUID], A]
    tenant_id: str = "default"
    correlation_id: str | None = None
    causation_id: str | None = None


@dataclass(frozen=True)
class Update(Generic[A]):
    """A command that changes an existing aggregate."""

    type: str
    idempotency_key: str
    aggregate_id: UUID
    request: dict[str, Any]
    change: Callable[[A], None]
    tenant_id: str = "default"
    correlation_id: str | None = None
    causation_id: str | None = None


Command = Create[Any] | Update[Any]


@dataclass
class _Prepared:
    command: Command
    aggregate_id: UUID
    key_hash: str
    request_hash: str
    record: IdempotencyRecord | None = None
    result: CommandResult | None = field(default=None)


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
        # Connect once up front: an unreachable server is one clear error, not a
        # pool timeout deep inside the library.
        with self.connect() as conn:
            if check_schema:
                schema.require(conn, STORE_TABLES)
        super().__init__()

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
        pool_kwargs = factory.datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict)
        pool_kwargs.update(self._pg.connect_kwargs())
        # An append is one statement: bound it (a stalled client holds nothing long).
        options = pool_kwargs.get("options", "")
        pool_kwargs["options"] = (
            f"{options} -c statement_timeout={STATEMENT_TIMEOUT_SECONDS * 1000}").strip()
        return factory

    def construct_mapper(self) -> Mapper[UUID]:
        return JsonMapper(self.max_event_bytes)

    # -- connections --------------------------------------------------------------------

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new plain connection to the store's database (callers close it)."""
        return db.connect(self.database_url, autocommit=autocommit)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        with self.factory.datastore.get_connection() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
            yield cur

    def init_schema(self) -> None:
        """Creates the store's own tables; harmless when they exist. (`aura-es db init`,
        ``aura_es.schema.create_all``, creates those of the workers and the mirror too.)"""
        self.recorder.create_table()  # type: ignore[attr-defined]
        with self.connect() as conn:
            schema.create(conn, STORE_TABLES)

    # -- commands -----------------------------------------------------------------------

    def execute(self, command: Command) -> CommandResult:
        """Runs ``command`` once; a retry with the same key returns the original result."""
        with span("aura.append", command=command.type):
            return self._execute(command)

    def _execute(self, command: Command) -> CommandResult:
        prepared = self._prepare(command)
        # A creating command's aggregate id comes from its key, so a duplicate cannot
        # be stored twice: its key row and its first event both collide. It goes
        # straight to the save, and a collision is answered from the key row. That
        # saves fresh creates a round trip. An update is looked up first, so a retried
        # update never reserves positions it then throws away.
        if not isinstance(command, Create) and (earlier := self._stored_result(prepared)):
            return earlier
        for attempt in range(self.max_attempts):
            try:
                aggregate = self._decide(prepared)
            except (DomainError, AggregateNotFound):
                # A concurrent duplicate may have committed since our lookup: then the
                # command is not invalid, it is done (e.g. "complete" of a completed call).
                if earlier := self._stored_result(prepared):
                    return earlier
                raise
            try:
                recordings = self._save(aggregate, records=[prepared.record])
            except IntegrityError:
                if earlier := self._stored_result(prepared):
                    return earlier
                if isinstance(command, Create):
                    # Its id comes from its key, so the aggregate was made by this very
                    # command, whose key has been pruned since: answer with it.
                    return self._created_earlier(prepared)
                # Lost a version race with another command: back off a little, with
                # jitter so the racers spread out, then decide again on the new state.
                time.sleep(VERSION_RACE.delay(attempt + 1))
                continue
            assert prepared.record is not None
            return CommandResult(
                aggregate_id=prepared.aggregate_id,
                from_version=prepared.record.from_version,
                to_version=prepared.record.to_version,
                positions=tuple(r.notification.id for r in recordings),
            )
        raise ConcurrencyConflict(prepared.aggregate_id, self.max_attempts)

    def execute_many(self, commands: Sequence[Command]) -> list[CommandResult]:
        """Runs many commands in one transaction: far faster for bulk loads.

        Duplicates are answered from the idempotency table first. If the transaction
        meets a conflict (a concurrent duplicate or a version race), every command is
        run again on its own, which sorts out which were duplicates.
        """
        with span("aura.append", commands=len(commands)):
            return self._execute_many(commands)

    def _execute_many(self, commands: Sequence[Command]) -> list[CommandResult]:
        prepared = [self._prepare(c) for c in commands]
        found = self._lookup([p.key_hash for p in prepared])
        fresh: list[_Prepared] = []
        seen: set[str] = set()
        for p in prepared:
            if p.key_hash in found:
                p.result = self._as_duplicate(p, found[p.key_hash])
            elif p.key_hash in seen:
                pass  # the same key twice in one batch: answered after the save
            else:
                seen.add(p.key_hash)
                fresh.append(p)
        if fresh:
            try:
                self._save_together(fresh)
            except (IntegrityError, DomainError, AggregateNotFound):
                return [self.execute(c) for c in commands]
        firsts = {p.key_hash: p for p in fresh}
        results: list[CommandResult] = []
        for p in prepared:
            if p.result is None:
                p.result = self._as_duplicate(p, _as_row(firsts[p.key_hash]))
            results.append(p.result)
        return results

    def _save_together(self, fresh: list[_Prepared]) -> None:
        # One query for every aggregate the batch changes, not one per command.
        aggregates = self._load_many(
            [p.aggregate_id for p in fresh if isinstance(p.command, Update)]
        )
        for p in fresh:
            aggregates[p.aggregate_id] = self._decide(p, aggregates.get(p.aggregate_id))
        recordings = self._save(*aggregates.values(), records=[p.record for p in fresh])
        positions = {
            (r.domain_event.originator_id, r.domain_event.originator_version): r.notification.id
            for r in recordings
        }
        for p in fresh:
            assert p.record is not None
            p.result = CommandResult(
                aggregate_id=p.aggregate_id,
                from_version=p.record.from_version,
                to_version=p.record.to_version,
                positions=tuple(
                    positions[(p.aggregate_id, v)]
                    for v in range(p.record.from_version, p.record.to_version + 1)
                ),
            )

    def _save(
        self, *aggregates: AuraAggregate, records: Sequence[IdempotencyRecord | None]
    ) -> list[Any]:
        try:
            keys = idempotency.KeyRows(tuple(r for r in records if r is not None))
            recordings = self._save_aggregates(aggregates, keys.as_save_kwargs())
        except (PersistenceOperationalError, PersistenceInterfaceError) as e:
            raise ServiceUnavailable(
                f"the event store did not take the append: {redact(first_line(e))}"
            ) from None
        _count_appended(recordings)
        return recordings

    def _save_aggregates(
        self, aggregates: Sequence[AuraAggregate], kwargs: dict[str, Any]
    ) -> list[Recording[UUID]]:
        """The library's ``save``, collecting our own aggregates' events directly.

        Its ``collect_events`` checks every object against two runtime Protocols, which
        Python 3.11 evaluates attribute by attribute: 22% of the client CPU of a
        100-command ``execute_many`` (profiled). The steps after it are the library's.
        """
        processing_event = ProcessingEvent[UUID]()
        for aggregate in aggregates:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # the library's deprecated hook
        return recordings

    def _created_earlier(self, p: _Prepared) -> CommandResult:
        """The result of a create whose aggregate exists but whose key was pruned."""
        assert p.record is not None
        to_version = p.record.to_version
        with self._cursor() as cur:
            positions = tuple(eventlog.positions_of(cur, p.aggregate_id, to_version))
        if not positions:
            raise ConcurrencyConflict(p.aggregate_id, self.max_attempts)
        DUPLICATES_ABSORBED.inc()
        return CommandResult(p.aggregate_id, 1, len(positions), positions, duplicate=True)

    def _prepare(self, command: Command) -> _Prepared:
        key = idempotency.check_key(command.idempotency_key)
        for name in ("type", "tenant_id", "correlation_id", "causation_id"):
            payload.check_text(name, getattr(command, name))
        if isinstance(command, Create):
            aggregate_id = idempotency.derived_aggregate_id(command.type, command.tenant_id, key)
        else:
            aggregate_id = command.aggregate_id
        return _Prepared(
            command=command,
            aggregate_id=aggregate_id,
            key_hash=idempotency.key_hash(command.type, aggregate_id, key),
            request_hash=idempotency.request_hash(command.type, command.request),
        )

    def _decide(self, p: _Prepared, current: AuraAggregate | None = None) -> AuraAggregate:
        """Applies the command to the aggregate's state; raises DomainError, stores nothing."""
        command = p.command
        existing = None
        tenant_id = command.tenant_id
        if isinstance(command, Update):
            existing = current if current is not None else self._load(p.aggregate_id)
            # Events of an existing aggregate belong to the aggregate's tenant.
            tenant_id = getattr(existing, "tenant_id", tenant_id)
        context = CommandContext(
            tenant_id=tenant_id,
            correlation_id=command.correlation_id or str(uuid4()),
            causation_id=command.causation_id,
            idempotency_key=command.idempotency_key,
        )
        aggregate: AuraAggregate
        with command_context(context):
            if isinstance(command, Create):
                aggregate = command.make(p.aggregate_id)
                before = 0
            else:
                assert existing is not None
                aggregate = existing
                before = aggregate.version
                command.change(aggregate)
        if aggregate.version == before:
            raise DomainError(f"command {command.type!r} raised no event")
        p.record = IdempotencyRecord(
            key_hash=p.key_hash,
            command_type=command.type,
            idempotency_key=command.idempotency_key,
            aggregate_id=p.aggregate_id,
            request_hash=p.request_hash,
            from_version=before + 1,
            to_version=aggregate.version,
        )
        return aggregate

    def _load(self, aggregate_id: UUID) -> AuraAggregate:
        try:
            aggregate: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise AggregateNotFound(aggregate_id) from None
        except MapperDeserialisationError as e:
            raise EventUndecodable(f"aggregate {aggregate_id}: {e}") from None
        assert isinstance(aggregate, AuraAggregate)
        return aggregate

    def _load_many(self, aggregate_ids: list[UUID]) -> dict[UUID, AuraAggregate]:
        """The current state of many aggregates from one query; missing ids are left out."""
        if not aggregate_ids:
            return {}
        history: dict[UUID, list[Any]] = {}
        with self._cursor() as cur:
            for row in eventlog.histories(cur, aggregate_ids):
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
            aggregate = project_aggregate(None, domain_events)
            if isinstance(aggregate, AuraAggregate):
                loaded[aggregate_id] = aggregate
        return loaded

    def get(self, aggregate_id: UUID, expected: type[A]) -> A:
        aggregate = self._load(aggregate_id)
        if not isinstance(aggregate, expected):
            raise AggregateNotFound(aggregate_id)
        return aggregate

    def _lookup(self, key_hashes: list[str]) -> dict[str, dict[str, Any]]:
        with self._cursor() as cur:
            return eventlog.stored_keys(cur, key_hashes)

    def _stored_result(self, p: _Prepared) -> CommandResult | None:
        """The original result when ``p``'s key is stored (a retry), else None."""
        found = self._lookup([p.key_hash])
        return self._as_duplicate(p, found[p.key_hash]) if p.key_hash in found else None

    def _as_duplicate(self, p: _Prepared, row: dict[str, Any]) -> CommandResult:
        if row["request_hash"] != p.request_hash:
            raise IdempotencyKeyConflict(p.command.type, p.command.idempotency_key)
        DUPLICATES_ABSORBED.inc()
        return CommandResult(
            aggregate_id=row["aggregate_id"],
            from_version=row["from_version"],
            to_version=row["to_version"],
            positions=tuple(row["positions"]),
            duplicate=True,
        )

    def prune_idempotency_keys(self, older_than: Any) -> int:
        with self.connect() as conn:
            return idempotency.prune(conn, older_than)

    def head_position(self) -> int:
        return int(self.recorder.max_notification_id() or 0)


def _as_row(first: _Prepared) -> dict[str, Any]:
    """The stored-key row of a command saved earlier in the same batch."""
    assert first.result is not None
    return {
        "request_hash": first.request_hash,
        "aggregate_id": first.result.aggregate_id,
        "from_version": first.result.from_version,
        "to_version": first.result.to_version,
        "positions": first.result.positions,
    }


def _count_appended(recordings: Sequence[Any]) -> None:
    for recording in recordings:
        EVENTS_APPENDED.labels(recording.notification.topic).inc()
