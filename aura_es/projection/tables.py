"""The tables projection workers keep their own state in: checkpoints and worker rows."""

from __future__ import annotations

from psycopg import sql

from aura_es.store import schema

CHECKPOINTS = "aura_projection_checkpoints"
WORKERS = "aura_projection_workers"


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " projection text PRIMARY KEY,"
            " position bigint NOT NULL DEFAULT 0,"
            " events_applied bigint NOT NULL DEFAULT 0,"
            " fingerprint text,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=sql.Identifier(CHECKPOINTS)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " worker_id text PRIMARY KEY,"
            " projection text NOT NULL,"
            " host text NOT NULL,"
            " pid integer NOT NULL,"
            " role text NOT NULL,"
            " started_at timestamptz NOT NULL DEFAULT now(),"
            " heartbeat_at timestamptz NOT NULL DEFAULT now(),"
            " events_per_second double precision NOT NULL DEFAULT 0,"
            " last_error text,"
            " last_error_at timestamptz)"
        ).format(t=sql.Identifier(WORKERS)),
        # Columns added after the first release: `db init` upgrades older tables in place.
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS breaker text NOT NULL DEFAULT 'closed'"
        ).format(t=sql.Identifier(WORKERS)),
        # Which generation of the read model the checkpoint belongs to, and the tables it
        # writes (NULL: the catalog's ``storage`` itself, as before the first replay).
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 1"
        ).format(t=sql.Identifier(CHECKPOINTS)),
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS storage text").format(
            t=sql.Identifier(CHECKPOINTS)
        ),
        # When an open breaker lets its next probe through (NULL when it is not open).
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS next_probe_at timestamptz").format(
            t=sql.Identifier(WORKERS)
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (projection)").format(
            i=sql.Identifier(f"{WORKERS}_projection_idx"), t=sql.Identifier(WORKERS)
        ),
    ]


schema.register(ddl, [CHECKPOINTS, WORKERS])
