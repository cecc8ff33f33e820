"""A connection from the store's pool, its errors turned into the library's persistence
errors (which the command pipeline and the recorder's retries catch).

The library's ``PostgresDatastore.get_connection`` does the same, and per call also
opens the pool and registers composite types we never use: ~20 µs of a keyed command's
client CPU (profiled, issue 27). The pool is opened here only when it is not open. The
store's connections are in autocommit: a statement is its own transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from eventsourcing import persistence
from eventsourcing.postgres import PostgresDatastore
from psycopg_pool import ConnectionPool

# Most specific first: a psycopg error is turned into the first that it is an instance of.
_ERRORS: tuple[tuple[type[psycopg.Error], type[persistence.PersistenceError]], ...] = (
    (psycopg.InterfaceError, persistence.InterfaceError),
    (psycopg.OperationalError, persistence.OperationalError),
    (psycopg.DataError, persistence.DataError),
    (psycopg.IntegrityError, persistence.IntegrityError),
    (psycopg.InternalError, persistence.InternalError),
    (psycopg.ProgrammingError, persistence.ProgrammingError),
    (psycopg.NotSupportedError, persistence.NotSupportedError),
    (psycopg.DatabaseError, persistence.DatabaseError),
    (psycopg.Error, persistence.PersistenceError),
)


def as_persistence_error(error: psycopg.Error) -> persistence.PersistenceError:
    for driver_error, library_error in _ERRORS:
        if isinstance(error, driver_error):
            return library_error(str(error))
    return persistence.PersistenceError(str(error))  # pragma: no cover - psycopg.Error is last


def connect_like(pool: ConnectionPool[Any]) -> psycopg.Connection[Any]:
    """A new autocommit connection with the pool's parameters, not counted by it (the
    waker's, which must never wait for a pooled one)."""
    conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
    kwargs = (pool.kwargs() if callable(pool.kwargs) else pool.kwargs) or {}
    return psycopg.connect(conninfo, **{**kwargs, "autocommit": True})


@contextlib.contextmanager
def connection(datastore: PostgresDatastore) -> Iterator[psycopg.Connection[Any]]:
    pool = datastore.pool
    try:
        if pool.closed:
            pool.open(datastore.pool_open_timeout is not None,
                      datastore.pool_open_timeout or 30.0)
        # getconn/putconn, not pool.connection(): that one also enters the connection's
        # own context, whose commit on exit is a no-op in autocommit that still costs a
        # lock and a wait. putconn rolls back anything left open and drops a broken one.
        conn = pool.getconn()
        try:
            yield conn
        finally:
            pool.putconn(conn)
    except psycopg.Error as e:
        raise as_persistence_error(e) from e
