"""Projections defined in YAML alone: a key, computed fields and optional windows.

A batch is folded in memory per key (and per window), then written with ONE upsert
per table whose ``ON CONFLICT`` clause merges the batch into the stored row: counts and
sums add, min and max compare, first keeps the stored value, last takes the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from aura_es.catalog.model import DeclarativeField, DeclarativeSpec, ProjectionSpec
from aura_es.errors import AuraError, ConfigurationError
from aura_es.personal import personal_fields_of_topic
from aura_es.projection.handlers.api import Projection, Tx
from aura_es.store.envelope import EventEnvelope

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMN_TYPES = {
    "count": "bigint NOT NULL DEFAULT 0",
    "sum": "numeric NOT NULL DEFAULT 0",
    "min": "jsonb",
    "max": "jsonb",
    "first": "jsonb",
    "last": "jsonb",
}
# first/last compare the log positions kept beside them (``<field>__pos``), so the
# result does not depend on the order batches arrive in (a DLQ retry applies an old
# event late); count, sum, min and max do not depend on order at all.
_MERGE = {
    "count": "{t}.{c} + EXCLUDED.{c}",
    "sum": "{t}.{c} + EXCLUDED.{c}",
    "min": "LEAST({t}.{c}, EXCLUDED.{c})",
    "max": "GREATEST({t}.{c}, EXCLUDED.{c})",
    # A stored value without a position (a table from before positions were kept) stays.
    "first": "CASE WHEN {t}.{c} IS NULL OR EXCLUDED.{p} < {t}.{p}"
             " THEN EXCLUDED.{c} ELSE {t}.{c} END, {p} = CASE WHEN {t}.{c} IS NULL"
             " OR EXCLUDED.{p} < {t}.{p} THEN EXCLUDED.{p} ELSE {t}.{p} END",
    "last": "CASE WHEN EXCLUDED.{p} > coalesce({t}.{p}, -1)"
            " THEN EXCLUDED.{c} ELSE {t}.{c} END, {p} = GREATEST({t}.{p}, EXCLUDED.{p})",
}
#: A first/last value's subject column, set under the value's own condition.
_FOLLOW = {
    "first": "CASE WHEN {t}.{c} IS NULL OR EXCLUDED.{p} < {t}.{p}"
             " THEN EXCLUDED.{s} ELSE {t}.{s} END",
    "last": "CASE WHEN EXCLUDED.{p} > coalesce({t}.{p}, -1) THEN EXCLUDED.{s} ELSE {t}.{s} END",
}
_ORDERED = ("first", "last")
POSITION_SUFFIX = "__pos"
#: Beside a first/last column folded from a personal field: whose value it holds, so the
#: subject's erasure finds and clears it (docs/erasure.md).
SUBJECT_SUFFIX = "__subject"
_ARRAY_TYPES = {"count": "bigint[]", "sum": "numeric[]"}


class MissingKey(AuraError):
    """An event lacks the value the projection's key is taken from."""


#: Where a row's fold keeps, per personal first/last field, the events that may hold
#: its value; settled (and dropped) before the row is written. '__' is reserved in
#: column names, so it names no column.
_CANDIDATES = "__candidates"


class DeclarativeProjection(Projection):
    # A first/last over a personal field opens only the event whose value it keeps.
    opens_on_read = True

    def __init__(self, spec: ProjectionSpec, storage: str | None = None) -> None:
        super().__init__(spec, storage)
        assert spec.declarative is not None
        self.declarative: DeclarativeSpec = spec.declarative
        self.key_column = self.declarative.key_column  # type: ignore[misc]
        self.window_seconds = _bucket_seconds(spec)
        #: Fields copied from a personal field, and the value each reads as once erased.
        self.personal = _personal_fields(spec)

    @property
    def windows_table(self) -> sql.Identifier:
        return self.aux_table("windows")

    def tables(self) -> list[str]:
        names = [self.storage]
        if self.window_seconds:
            names.append(self.aux_name("windows"))
        return names

    # -- schema ---------------------------------------------------------------------------

    def create(self, tx: Tx) -> None:
        fields = self.declarative.fields
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_COLUMN_TYPES[f.op]))
            for name, f in fields.items()
        ] + [
            sql.SQL("{} bigint").format(sql.Identifier(name + POSITION_SUFFIX))
            for name, f in fields.items() if f.op in _ORDERED
        ] + [
            sql.SQL("{} text").format(sql.Identifier(name + SUBJECT_SUFFIX))
            for name in self.personal
        ]
        derived = [
            sql.SQL(
                "{name} double precision GENERATED ALWAYS AS (CASE WHEN {den} = 0 THEN NULL"
                " ELSE {num}::double precision / {den} END) STORED"
            ).format(
                name=sql.Identifier(name),
                num=sql.Identifier(ratio.ratio[0]),
                den=sql.Identifier(ratio.ratio[1]),
            )
            for name, ratio in self.declarative.derived.items()
        ]
        key = sql.Identifier(self.key_column)
        tx.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {t} ({k} text PRIMARY KEY, {cols})").format(
            t=self.table, k=key, cols=sql.SQL(", ").join(columns + derived),
        ))
        if self.window_seconds:
            tx.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {t} ({k} text NOT NULL,"
                " window_start timestamptz NOT NULL, {cols}, PRIMARY KEY ({k}, window_start))"
            ).format(t=self.windows_table, k=key, cols=sql.SQL(", ").join(columns + derived)))
        # Read models made before first/last kept positions gain the column in place.
        for table in (self.table, self.windows_table) if self.window_seconds else (self.table,):
            for name, f in fields.items():
                if f.op in _ORDERED:
                    tx.execute(sql.SQL(
                        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} bigint"
                    ).format(t=table, c=sql.Identifier(name + POSITION_SUFFIX)))
            for name in self.personal:
                tx.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} text").format(
                    t=table, c=sql.Identifier(name + SUBJECT_SUFFIX)))

    def erase_subject(self, tx: Tx, subject: str) -> None:
        """Sets every value folded from ``subject``'s personal fields to its erased
        placeholder: what a rebuild folds from the erased events, so it equals this."""
        for table in (self.table, self.windows_table) if self.window_seconds else (self.table,):
            for name, erased in self.personal.items():
                tx.execute(sql.SQL("UPDATE {t} SET {c} = %s WHERE {s} = %s").format(
                    t=table, c=sql.Identifier(name),
                    s=sql.Identifier(name + SUBJECT_SUFFIX)), (Jsonb(erased), subject))

    def sliding_query(self) -> sql.Composed:
        """Rows over the last window, computed at read time from the stored buckets."""
        assert self.spec.windowing is not None
        pieces = []
        for name, f in self.declarative.fields.items():
            column = sql.Identifier(name)
            if f.op == "count":
                pieces.append(sql.SQL("sum({c})::bigint AS {c}").format(c=column))
            elif f.op == "sum":
                pieces.append(sql.SQL("sum({c}) AS {c}").format(c=column))
            elif f.op in ("min", "max"):
                pieces.append(sql.SQL(f"{f.op}({{c}}) AS {{c}}").format(c=column))
            else:
                order = "ASC" if f.op == "first" else "DESC"
                pieces.append(sql.SQL(
                    f"(array_agg({{c}} ORDER BY {{p}} {order})"
                    " FILTER (WHERE {c} IS NOT NULL))[1] AS {c}"
                ).format(c=column, p=sql.Identifier(name + POSITION_SUFFIX)))
        for name, ratio in self.declarative.derived.items():
            num, den = (sql.Identifier(p) for p in ratio.ratio)
            pieces.append(sql.SQL(
                "CASE WHEN sum({den}) = 0 THEN NULL ELSE sum({num})::double precision"
                " / sum({den}) END AS {name}"
            ).format(num=num, den=den, name=sql.Identifier(name)))
        return sql.SQL(
            "SELECT {k}, {cols} FROM {t} WHERE window_start > now() - %s::interval GROUP BY {k}"
        ).format(
            k=sql.Identifier(self.key_column), cols=sql.SQL(", ").join(pieces),
            t=self.windows_table,
        )

    # -- events ---------------------------------------------------------------------------

    def forget(self, tx: Tx, aggregate_ids: Sequence[UUID]) -> None:
        keys = [str(a) for a in aggregate_ids]
        for table in (self.table, self.windows_table) if self.window_seconds else (self.table,):
            tx.execute(sql.SQL("DELETE FROM {t} WHERE {k} = ANY(%s)").format(
                t=table, k=sql.Identifier(self.key_column)), [keys])

    def partial_replay_refusal(self) -> str | None:
        if self.declarative.key != "aggregate_id":
            return (
                f"projection {self.spec.name!r} is keyed by {self.declarative.key}, not"
                " aggregate_id: a row combines events of many aggregates, so only a full"
                f" `aura-es replay {self.spec.name}` can rebuild it"
            )
        return super().partial_replay_refusal()

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        rows: dict[str, dict[str, Any]] = {}
        windows: dict[tuple[str, datetime], dict[str, Any]] = {}
        for event in batch:
            key = event.value(self.declarative.key)
            if key is None or key == "":
                raise MissingKey(
                    f"event {event.topic} at position {event.position} has no "
                    f"{self.declarative.key} (the key of projection {self.spec.name!r})"
                )
            key = str(key)
            self._fold(rows.setdefault(key, {}), event)
            if self.window_seconds:
                start = _window_start(event.occurred_at, self.window_seconds)
                self._fold(windows.setdefault((key, start), {}), event)
        for acc in (*rows.values(), *windows.values()):
            self._settle(acc)
        if rows:
            self._upsert(tx, self.table, [(k,) for k in rows], list(rows.values()), False)
        if windows:
            self._upsert(tx, self.windows_table, list(windows), list(windows.values()), True)

    def _fold(self, acc: dict[str, Any], event: EventEnvelope) -> None:
        for name, f in self.declarative.fields.items():
            if f.topics and event.topic not in f.topics:
                continue
            if name in self.personal:
                # Settled after the batch: only the kept value's event is opened.
                acc.setdefault(_CANDIDATES, {}).setdefault(name, []).append(event)
                continue
            value = None if f.of is None else event.value(f.of)
            if f.op in _ORDERED:
                if value is not None and (f.op == "last" or acc.get(name) is None):
                    acc[name], acc[name + POSITION_SUFFIX] = value, event.position
                continue
            acc[name] = _combine(f, acc.get(name), value)

    def _settle(self, acc: dict[str, Any]) -> None:
        """Each personal first/last field's value: the first (last) non-null one of its
        candidates, in log order, as ``_fold`` keeps it for any other field."""
        candidates: dict[str, list[EventEnvelope]] = acc.pop(_CANDIDATES, {})
        for name, events in candidates.items():
            f = self.declarative.fields[name]
            assert f.of is not None  # first/last always read a path
            for event in reversed(events) if f.op == "last" else events:
                value = event.value(f.of)
                if value is not None:
                    acc[name], acc[name + POSITION_SUFFIX] = value, event.position
                    acc[name + SUBJECT_SUFFIX] = event.subject
                    break

    def _upsert(
        self, tx: Tx, table: sql.Identifier, keys: list[tuple[Any, ...]],
        values: list[dict[str, Any]], windowed: bool,
    ) -> None:
        fields = self.declarative.fields
        key = sql.Identifier(self.key_column)
        key_columns = [key, sql.Identifier("window_start")] if windowed else [key]
        key_types = ["text[]", "timestamptz[]"] if windowed else ["text[]"]
        names = list(fields)
        positions = [n + POSITION_SUFFIX for n in names if fields[n].op in _ORDERED]
        subjects = [n + SUBJECT_SUFFIX for n in self.personal]
        params: list[list[Any]] = [[k[i] for k in keys] for i in range(len(key_columns))]
        for name in names:
            f = fields[name]
            params.append([_stored(f, v.get(name)) for v in values])
        for name in (*positions, *subjects):
            params.append([v.get(name) for v in values])
        casts = [
            *key_types, *(_ARRAY_TYPES.get(fields[n].op, "jsonb[]") for n in names),
            *("bigint[]" for _ in positions), *("text[]" for _ in subjects),
        ]
        target = sql.Identifier("t")
        tx.execute(
            sql.SQL(
                "INSERT INTO {table} AS t ({cols}) SELECT * FROM unnest({arrays})"
                " ON CONFLICT ({keys}) DO UPDATE SET {merge}"
            ).format(
                table=table,
                cols=sql.SQL(", ").join([
                    *key_columns, *map(sql.Identifier, names), *map(sql.Identifier, positions),
                    *map(sql.Identifier, subjects)]),
                arrays=sql.SQL(", ").join(sql.SQL("%s::" + c) for c in casts),
                keys=sql.SQL(", ").join(key_columns),
                merge=sql.SQL(", ").join([
                    *(sql.SQL("{c} = " + _MERGE[fields[n].op]).format(
                        c=sql.Identifier(n), t=target, p=sql.Identifier(n + POSITION_SUFFIX))
                      for n in names),
                    # Whose value it is follows the value (the same condition, old row).
                    *(sql.SQL("{s} = " + _FOLLOW[fields[n].op]).format(
                        s=sql.Identifier(n + SUBJECT_SUFFIX), t=target,
                        c=sql.Identifier(n), p=sql.Identifier(n + POSITION_SUFFIX))
                      for n in self.personal),
                ]),
            ),
            params,
        )


def _personal_fields(spec: ProjectionSpec) -> dict[str, Any]:
    """The fields folded from a personal field of one of their topics' event classes, and
    the value each reads as once its subject is erased. Only first and last may copy
    one (they know which event, so whose, each value came from); a personal key, min or
    max is refused: nothing could clear it."""
    assert spec.declarative is not None
    out: dict[str, Any] = {}
    key = spec.declarative.key
    for name, f in spec.declarative.fields.items():
        for topic in f.topics or spec.source_events:
            for path in (key, f.of):
                placeholders = _personal_placeholders(topic, path)
                if placeholders is None:
                    continue
                if path == key:
                    raise ConfigurationError(
                        f"projection {spec.name!r}: key {key} is a personal field of {topic};"
                        " key it by an id (an erased person's data cannot be a row's key)")
                if f.op not in _ORDERED:
                    raise ConfigurationError(
                        f"projection {spec.name!r} field {name!r}: op {f.op} of {f.of}, a"
                        f" personal field of {topic}; use first or last (they can be cleared"
                        " when the subject is erased)")
                out[name] = placeholders[1]
    return out


def _personal_placeholders(topic: str, path: str | None) -> tuple[Any, Any] | None:
    if path is None or not path.startswith("payload."):
        return None
    return personal_fields_of_topic(topic).get(path.removeprefix("payload."))


def _combine(f: DeclarativeField, current: Any, value: Any) -> Any:
    if f.op == "count":
        return (current or 0) + 1
    if value is None:
        return current
    if f.op == "sum":
        return (current or Decimal(0)) + Decimal(str(value))
    if current is None:
        return value
    return min(current, value) if f.op == "min" else max(current, value)


def _stored(f: DeclarativeField, value: Any) -> Any:
    if f.op == "count":
        return value or 0
    if f.op == "sum":
        return value or Decimal(0)
    return None if value is None else Jsonb(value)


def _bucket_seconds(spec: ProjectionSpec) -> int:
    if spec.windowing is None:
        return 0
    if spec.windowing.type == "tumbling":
        return spec.windowing.seconds
    # A sliding window is summed at read time from 60 buckets of its length.
    return max(1, spec.windowing.seconds // 60)


def _window_start(at: datetime, seconds: int) -> datetime:
    elapsed = int((at - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=elapsed - elapsed % seconds)
