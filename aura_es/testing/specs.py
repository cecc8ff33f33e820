"""Given/when/then for your aggregates and projections, against the real store.

    scenario(app)
        .given(app.start_debate_command("AI", ["a"], idempotency_key="k1"))
        .when(lambda g: app.reach_consensus_command(g.last, "adopt", idempotency_key="k2"))
        .then(event("aura.debate.consensus_reached.v1", decision="adopt"))

``given`` takes commands, not hand-built events: the events then come out exactly as
production stores them (metadata, versions, upcasting, idempotency keys). A step may be
a command or a function of what was given so far (``g.ids``, ``g.last``), for commands
that need an id a create made. ``then`` compares the events the command stored;
``then_error`` a refusal (and that nothing was stored); ``then_once`` that the command
sent twice stores one result; ``then_rows`` what a projection's read model holds once it
has caught up. A mismatch fails with a diff, never a bare assertion.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from psycopg import sql

from aura_es.application import EventSourcedApp
from aura_es.catalog import DEFAULT_CATALOG, load_catalog
from aura_es.catalog.model import Catalog, ProjectionSpec
from aura_es.commands import Command, CommandResult
from aura_es.payload import json_default
from aura_es.projection.engine.loading import build
from aura_es.store import eventlog
from aura_es.store.envelope import EventEnvelope
from aura_es.store.opening import open_events
from aura_es.testing.catchup import caught_up


@dataclass(frozen=True)
class Given:
    """What the ``given`` commands stored, for the steps that follow."""

    results: tuple[CommandResult, ...] = ()

    @property
    def ids(self) -> list[UUID]:
        return [r.aggregate_id for r in self.results]

    @property
    def last(self) -> UUID:
        if not self.results:
            raise AssertionError("nothing was given: there is no last aggregate")
        return self.results[-1].aggregate_id


Step = Command | Callable[[Given], Command]


@dataclass(frozen=True)
class Expected:
    """An event by topic (or class), with the payload fields that must match."""

    topic: str
    fields: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.topic} {_json(self.fields)}"


def event(kind: str | type, **fields: Any) -> Expected:
    """``kind`` is a topic or an event class (its ``TOPIC``); ``fields`` a subset of its
    payload, compared as stored (UUIDs and decimals as strings)."""
    topic = kind if isinstance(kind, str) else str(getattr(kind, "TOPIC", kind.__name__))
    return Expected(topic, fields)


def scenario(app: EventSourcedApp) -> Scenario:
    return Scenario(app)


class Scenario:
    def __init__(self, app: EventSourcedApp, given: Given | None = None) -> None:
        self.app = app
        self.given_so_far = given or Given()

    def given(self, *steps: Step) -> Scenario:
        """Runs ``steps`` in order (each is stored, as in production)."""
        results = list(self.given_so_far.results)
        for step in steps:
            results.append(self.app.execute(_command(step, Given(tuple(results)))))
        return Scenario(self.app, Given(tuple(results)))

    def when(self, step: Step) -> When:
        return When(self, _command(step, self.given_so_far))

    def then_rows(
        self, projection: str | ProjectionSpec, rows: Sequence[dict[str, Any]], *,
        catalog: Catalog | Path | str | None = None, timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Runs ``projection`` until it has caught up, then compares its read model with
        ``rows`` (in any order; each expected row names the columns it checks)."""
        spec = _spec(projection, catalog)
        caught_up(self.app.database_url, [spec], timeout=timeout)
        actual = _read_model(self.app, spec)
        columns = sorted({c for row in rows for c in row})
        want = sorted(_json({c: row.get(c) for c in columns}) for row in rows)
        have = sorted(_json({c: _plain(row.get(c)) for c in columns}) for row in actual)
        if want != have:
            raise AssertionError(
                f"read model of {spec.name!r} differs (- expected, + actual):\n"
                + _diff(want, have))
        return actual


class When:
    def __init__(self, scene: Scenario, command: Command) -> None:
        self.scene = scene
        self.command = command

    def then(self, *expected: Expected) -> CommandResult:
        """The command stores exactly these events, in this order."""
        result = self.scene.app.execute(self.command)
        stored = _events(self.scene.app, result)
        want = [e.describe() for e in expected]
        have = [
            f"{e.topic} {_json({k: e.payload.get(k) for k in x.fields})}"
            if i < len(expected) and (x := expected[i]).topic == e.topic
            else f"{e.topic} {_json(e.payload)}"
            for i, e in enumerate(stored)
        ]
        if want != have:
            raise AssertionError(
                f"command {self.command.type!r} stored other events (- expected, + actual):\n"
                + _diff(want, have))
        return result

    def then_error(
        self, error: type[BaseException], match: str | None = None,
    ) -> BaseException:
        """The command is refused with ``error`` (its message matching ``match``) and
        stores nothing."""
        before = _head(self.scene.app)
        try:
            result = self.scene.app.execute(self.command)
        except error as e:
            if match is not None and not re.search(match, str(e)):
                raise AssertionError(
                    f"command {self.command.type!r} raised {type(e).__name__}: {e}\n"
                    f"which does not match {match!r}") from e
            if _head(self.scene.app) != before:
                raise AssertionError(
                    f"command {self.command.type!r} was refused but stored events") from e
            return e
        stored = [f"{e.topic} {_json(e.payload)}" for e in _events(self.scene.app, result)]
        raise AssertionError(
            f"command {self.command.type!r} was expected to raise {error.__name__},"
            f" but it stored:\n" + "\n".join(f"+ {line}" for line in stored))

    def then_once(self) -> CommandResult:
        """Sent twice, the command stores one result: the retry is answered with the
        original one and stores nothing."""
        first = self.scene.app.execute(self.command)
        head = _head(self.scene.app)
        again = self.scene.app.execute(self.command)
        if (again.aggregate_id, again.positions) != (first.aggregate_id, first.positions) \
                or not again.duplicate or _head(self.scene.app) != head:
            raise AssertionError(
                f"command {self.command.type!r} sent twice: first {first}, then {again};"
                f" the log went from position {head} to {_head(self.scene.app)}")
        return first


def _command(step: Step, given: Given) -> Command:
    return step(given) if callable(step) else step


def _events(app: EventSourcedApp, result: CommandResult) -> list[EventEnvelope]:
    """The command's events as its author wrote them: sealed personal fields opened."""
    with app.connect(autocommit=False) as conn, conn.transaction(), conn.cursor() as cur:
        return open_events(cur, app.keyring, eventlog.read_positions(cur, result.positions))


def _head(app: EventSourcedApp) -> int:
    with app.connect() as conn:
        return eventlog.head(conn)


def _spec(projection: str | ProjectionSpec, catalog: Catalog | Path | str | None) -> ProjectionSpec:
    if isinstance(projection, ProjectionSpec):
        return projection
    loaded = catalog if isinstance(catalog, Catalog) else load_catalog(catalog or DEFAULT_CATALOG)
    return loaded.get(projection)


def _read_model(app: EventSourcedApp, spec: ProjectionSpec) -> list[dict[str, Any]]:
    with app.connect() as conn:
        cur = conn.execute(sql.SQL("SELECT * FROM {}").format(build(spec).table))
        names = [d.name for d in cur.description or []]
        return [
            {k: v for k, v in zip(names, row, strict=True) if "__" not in k}
            for row in cur.fetchall()
        ]


def _plain(value: Any) -> Any:
    """A stored value as JSON would hold it (what expected rows are written in)."""
    return orjson.loads(orjson.dumps(value, default=json_default))


def _json(value: Any) -> str:
    return orjson.dumps(value, default=json_default, option=orjson.OPT_SORT_KEYS).decode()


def _diff(want: Sequence[str], have: Sequence[str]) -> str:
    lines = difflib.ndiff(list(want), list(have))
    return "\n".join(line for line in lines if not line.startswith("?"))
