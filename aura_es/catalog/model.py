"""What a projection catalog may say, as pydantic models (and so as JSON Schema).

Names that become SQL identifiers (``storage``, field names) are checked here and are
always quoted with ``psycopg.sql.Identifier`` when used; nothing is formatted into SQL.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aura_es import durations, identifiers
from aura_es.store.partitioning import MAX_PARTITIONS

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
_PATH = re.compile(
    r"^(payload|meta)\.[A-Za-z_][A-Za-z0-9_]*$|^(aggregate_id|topic|position|occurred_at)$"
)
_HANDLER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: A dotted module path (what `import` takes).
_MODULE = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")

Identifier = Annotated[str, Field(description="A lower-case SQL identifier (a-z, 0-9, _).")]


def check_identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"{what} {value!r} is not an identifier: lower-case letters, digits and _, "
            "starting with a letter or _, at most 50 characters"
        )
    return value


def parse_duration(value: str) -> timedelta:
    return durations.parse_duration(value)


class _Strict(BaseModel):
    # strict: `batch_size: true` or `recovery_timeout: "60"` is an error, not 1 or 60.0;
    # no NaN or infinity (`.inf` in YAML) for any number.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CircuitBreaker(_Strict):
    failure_threshold: int = Field(
        default=5, ge=1, le=1_000_000, description="Consecutive transient failures."
    )
    recovery_timeout: float = Field(
        default=60.0, gt=0, le=86_400, description="Seconds open before a probe."
    )


class ErrorHandling(_Strict):
    retry_policy: Literal["exponential_backoff", "fixed", "none"] = "exponential_backoff"
    max_retries: int = Field(default=3, ge=0, le=100)
    dead_letter_queue: bool = True
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    transient_exceptions: list[str] = Field(
        default_factory=list,
        description="Extra exception classes (module:Class) to treat as transient.",
    )


class Windowing(_Strict):
    type: Literal["sliding", "tumbling"]
    duration: str = Field(description="e.g. 1h, 15m, 1d")

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def seconds(self) -> int:
        return int(parse_duration(self.duration).total_seconds())


class DeclarativeField(_Strict):
    """One computed column: ``count`` needs no ``of``; the others read a path."""

    op: Literal["count", "sum", "min", "max", "first", "last"]
    of: str | None = Field(None, description="payload.<name>, meta.<name>, topic, position")
    topics: list[str] = Field(
        default_factory=list, description="Only events of these topics (default: all)."
    )

    @field_validator("of")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.match(value):
            raise ValueError(
                f"{value!r} is not a path: use payload.<name>, meta.<name>, "
                "aggregate_id, topic or position"
            )
        return value

    @model_validator(mode="after")
    def _needs_path(self) -> DeclarativeField:
        if self.op != "count" and self.of is None:
            raise ValueError(f"op {self.op!r} needs 'of' (the value to {self.op})")
        return self


class Ratio(_Strict):
    """A column computed from two others: numerator / denominator (NULL when 0)."""

    # YAML has lists, not tuples: the one field that converts.
    ratio: Annotated[tuple[str, str], Field(strict=False)]


class DeclarativeSpec(_Strict):
    key: str = Field(description="Where the row key comes from, e.g. payload.agent_id")
    key_column: Identifier = "key"
    fields: dict[Identifier, DeclarativeField]
    derived: dict[Identifier, Ratio] = Field(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _PATH.match(value):
            raise ValueError(f"key {value!r} is not a path such as payload.agent_id")
        return value

    @field_validator("key_column")
    @classmethod
    def _key_column(cls, value: str) -> str:
        return check_identifier(value, "key_column")

    @model_validator(mode="after")
    def _columns(self) -> DeclarativeSpec:
        names = [self.key_column, *self.fields, *self.derived]
        for name in names:
            check_identifier(name, "column")
            if "__" in name:
                raise ValueError(f"column {name!r}: '__' is reserved for aura-es's own columns")
        if len(set(names)) != len(names):
            raise ValueError("column names (key_column, fields, derived) must be distinct")
        if not self.fields:
            raise ValueError("fields must name at least one column")
        for name, derived in self.derived.items():
            for part in derived.ratio:
                if part not in self.fields:
                    raise ValueError(f"derived {name!r} uses {part!r}, which is not a field")
        return self


class ProjectionSpec(_Strict):
    name: str = Field(description="Unique; how commands name the projection.")
    description: str = ""
    source_events: list[str] = Field(min_length=1, description="Event topics it reads.")
    output_model: str = Field(description="The name of the row type users read.")
    storage: str = Field(
        description=(
            "The read-model table (its stable name): lower-case letters, digits and single"
            " underscores, starting with a letter, at most 40 characters, not starting with"
            " 'aura_'."
        ),
        # For editors reading the schema; the validator below gives the clearer message.
        json_schema_extra={"pattern": identifiers.STORAGE_PATTERN,
                           "maxLength": identifiers.MAX_STORAGE_LENGTH},
    )
    update_strategy: Literal["event_sourced", "incremental"] = "event_sourced"
    error_handling: ErrorHandling = Field(default_factory=ErrorHandling)
    windowing: Windowing | None = None
    batch_size: int = Field(500, ge=1, le=100_000)
    partitions: int = Field(
        default=1, ge=1, le=MAX_PARTITIONS,
        description=(
            "How many partitions the projection is split into, by a stable hash of the"
            " aggregate id (docs/partitions.md): each has its own checkpoint and is run by"
            " one live worker at a time; an aggregate's events stay in order. A change to"
            " a multiple splits the checkpoints in place; any other change needs"
            " `aura-es replay`."
        ),
    )
    handler: str | None = Field(None, description="module:Class of a Python projection")
    declarative: DeclarativeSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"name {value!r} must be letters, digits, '_', '-' or '.'")
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        problem = identifiers.storage_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str | None) -> str | None:
        if value is not None and not _HANDLER.match(value):
            raise ValueError(f"handler {value!r} must look like package.module:ClassName")
        return value

    @field_validator("source_events")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("source_events lists a topic twice")
        return value

    @model_validator(mode="after")
    def _one_implementation(self) -> ProjectionSpec:
        if (self.handler is None) == (self.declarative is None):
            raise ValueError("give exactly one of 'handler' (Python) or 'declarative' (YAML)")
        if self.declarative is not None:
            for name, fld in self.declarative.fields.items():
                unknown = set(fld.topics) - set(self.source_events)
                if unknown:
                    raise ValueError(
                        f"field {name!r} filters on {sorted(unknown)}, not in source_events"
                    )
        return self


CompatibilityMode = Literal[
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
    "FULL_TRANSITIVE", "NONE",
]


class EventTypeSpec(_Strict):
    """How one event type's schema may evolve (docs/schemas.md)."""

    compatibility: CompatibilityMode | None = Field(
        None, description="default: FULL_TRANSITIVE when published, else BACKWARD_TRANSITIVE")
    published: bool = Field(
        True, description="read by services on the mesh: its CloudEvents name their schema"
                          " (dataschema) and the registry on JetStream holds it")


class Catalog(_Strict):
    """The file: ``projections: [...]`` and, optionally, ``events: {topic: ...}`` and the
    ``event_modules`` that define the event classes."""

    projections: list[ProjectionSpec]
    events: dict[str, EventTypeSpec] = Field(default_factory=dict)
    event_modules: list[Annotated[str, Field(pattern=_MODULE)]] = Field(
        default_factory=list,
        description="modules defining the event classes the projections read (e.g."
                    " myapp.events): imported when the catalog is loaded, so topics and"
                    " schemas are checked against them")

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        for attribute in ("name", "storage"):
            seen: set[str] = set()
            for spec in self.projections:
                value = getattr(spec, attribute)
                if value in seen:
                    raise ValueError(f"two projections have the {attribute} {value!r}")
                seen.add(value)
        return self

    def get(self, name: str) -> ProjectionSpec:
        for spec in self.projections:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.projections) or "none"
        raise KeyError(f"unknown projection {name!r} (the catalog has: {known})")
