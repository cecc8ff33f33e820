"""The side-effect outbox: actions a batch recorded, waiting for the dispatcher.

The only module with SQL on the outbox table. A row is written in the batch's
transaction, so it exists exactly when the batch's read-model writes do; the dispatcher
marks it done, schedules a retry, or marks it dead after the last retry (shown and
retried with `aura-es dlq`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from aura_es.store import owners

TABLE = "aura_side_effects"
_T = sql.Identifier(TABLE)
PENDING, DONE, DEAD = "pending", "done", "dead"


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " id bigserial PRIMARY KEY,"
            " projection text NOT NULL,"
            " position bigint,"
            " idempotency_key text NOT NULL,"
            " action text NOT NULL,"
            " payload jsonb NOT NULL,"
            " status text NOT NULL DEFAULT 'pending',"
            " attempts integer NOT NULL DEFAULT 0,"
            " next_attempt_at timestamptz NOT NULL DEFAULT now(),"
            " last_error text,"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " finished_at timestamptz)"
        ).format(t=_T),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {i} ON {t} (projection, next_attempt_at)"
            " WHERE status = 'pending'"
        ).format(i=sql.Identifier(f"{TABLE}_due_idx"), t=_T),
    ]


OWNER = owners.Owner("the side-effect outbox", ddl, (TABLE,))


@dataclass(frozen=True)
class SideEffect:
    id: int
    projection: str
    position: int | None
    idempotency_key: str
    action: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime


_COLUMNS = sql.SQL("id, projection, position, idempotency_key, action, payload, status,"
                   " attempts, last_error, created_at")


def record(
    cur: psycopg.Cursor[Any], projection: str, position: int | None, key: str, action: str,
    payload: dict[str, Any],
) -> None:
    cur.execute(
        sql.SQL("INSERT INTO {t} (projection, position, idempotency_key, action, payload)"
                " VALUES (%s, %s, %s, %s, %s)").format(t=_T),
        (projection, position, key, action, Jsonb(payload)),
    )


def due(conn: psycopg.Connection[Any], projection: str, limit: int) -> list[SideEffect]:
    """Pending side effects of ``projection`` whose time has come, oldest first."""
    return [SideEffect(*row) for row in conn.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE projection = %s AND status = 'pending'"
                " AND next_attempt_at <= now() ORDER BY id LIMIT %s").format(c=_COLUMNS, t=_T),
        (projection, limit),
    )]


def done(conn: psycopg.Connection[Any], effect_id: int) -> None:
    conn.execute(
        sql.SQL("UPDATE {t} SET status = 'done', attempts = attempts + 1,"
                " finished_at = now(), last_error = NULL WHERE id = %s").format(t=_T),
        (effect_id,),
    )


def failed(
    conn: psycopg.Connection[Any], effect_id: int, error: str, retry_in: float | None,
) -> None:
    """One more failed attempt: retried in ``retry_in`` seconds, or dead when None."""
    if retry_in is None:
        conn.execute(
            sql.SQL("UPDATE {t} SET status = 'dead', attempts = attempts + 1,"
                    " last_error = %s, finished_at = now() WHERE id = %s").format(t=_T),
            (error, effect_id),
        )
        return
    conn.execute(
        sql.SQL("UPDATE {t} SET attempts = attempts + 1, last_error = %s,"
                " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s")
        .format(t=_T),
        (error, retry_in, effect_id),
    )


def dead(conn: psycopg.Connection[Any], projection: str | None = None) -> list[SideEffect]:
    where = sql.SQL(" AND projection = %s") if projection else sql.SQL("")
    return [SideEffect(*row) for row in conn.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE status = 'dead'{w} ORDER BY id").format(
            c=_COLUMNS, t=_T, w=where),
        [projection] if projection else [],
    )]


def requeue(conn: psycopg.Connection[Any], effect_id: int) -> bool:
    """A dead side effect goes back to pending, to run again at once; False if it is not
    dead (unknown, pending or done)."""
    cur = conn.execute(
        sql.SQL("UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = now(),"
                " finished_at = NULL WHERE id = %s AND status = 'dead'").format(t=_T),
        (effect_id,),
    )
    return cur.rowcount == 1


def counts(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    """Per projection: pending and dead side effects."""
    out: dict[str, dict[str, int]] = {}
    for projection, status, n in conn.execute(sql.SQL(
        "SELECT projection, status, count(*) FROM {t} WHERE status <> 'done'"
        " GROUP BY projection, status").format(t=_T)):
        out.setdefault(projection, {})[status] = int(n)
    return out


def scrub(cur: psycopg.Cursor[Any], positions: list[int]) -> int:
    """Clears the payload and error of side effects of these events (an erased subject's);
    one not yet run is not run (status ``erased``): it would act on data that is gone."""
    cur.execute(sql.SQL(
        "UPDATE {t} SET payload = '{{\"erased\": true}}'::jsonb, last_error = NULL,"
        " status = CASE WHEN status = 'done' THEN status ELSE 'erased' END,"
        " finished_at = coalesce(finished_at, now())"
        " WHERE position = ANY(%s)").format(t=_T), (positions,))
    return cur.rowcount
