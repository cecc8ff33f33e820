"""From a catalog entry to a projection object, with clear errors for bad handlers."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence

import orjson

from aura_es.catalog.model import Catalog, ProjectionSpec
from aura_es.errors import ConfigurationError
from aura_es.events import KNOWN_TOPICS
from aura_es.projection.engine.failures import transient_types
from aura_es.projection.handlers.api import Projection
from aura_es.projection.handlers.declarative import DeclarativeProjection


def projection_class(spec: ProjectionSpec) -> type[Projection]:
    if spec.handler is None:
        return DeclarativeProjection
    module_name, _, class_name = spec.handler.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigurationError(
            f"projection {spec.name!r}: handler {spec.handler!r} does not import: "
            f"{type(e).__name__}: {e}"
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Projection)):
        raise ConfigurationError(
            f"projection {spec.name!r}: handler {spec.handler!r} is not a "
            "subclass of aura_es.projection.Projection"
        )
    return cls


def build(spec: ProjectionSpec, storage: str | None = None) -> Projection:
    return projection_class(spec)(spec, storage)


def fingerprint(spec: ProjectionSpec) -> str:
    """Changes when the catalog entry or the handler's ``version`` changes (drift)."""
    # Only what shapes the read model: retries, batch sizes or partitions do not make it
    # drift (a read model split four ways holds what the unsplit one holds).
    definition = spec.model_dump(
        mode="json", exclude={"description", "error_handling", "batch_size", "partitions"}
    )
    definition["handler_version"] = projection_class(spec).version
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def select(catalog: Catalog, names: Sequence[str] = ()) -> list[ProjectionSpec]:
    """The named projections (all when none are named); unknown names are an error."""
    if not names:
        return list(catalog.projections)
    try:
        return [catalog.get(name) for name in names]
    except KeyError as e:
        raise ConfigurationError(str(e.args[0])) from None


def check_imports(specs: Sequence[ProjectionSpec]) -> None:
    """Every handler and every ``transient_exceptions`` class imports, or a
    ConfigurationError names the first that does not: found before any worker starts,
    not in a worker that would fail on it again at every restart."""
    for spec in specs:
        projection_class(spec)
        try:
            transient_types(spec.error_handling)
        except ConfigurationError as e:
            raise ConfigurationError(f"projection {spec.name!r}: {e}") from None


def topic_warnings(specs: Sequence[ProjectionSpec]) -> list[str]:
    """Source events no loaded event class declares (after importing every handler)."""
    for spec in specs:
        projection_class(spec)
    return [
        f"projection {spec.name!r}: no known event class has the topic {topic!r}"
        for spec in specs
        for topic in spec.source_events
        if topic not in KNOWN_TOPICS
    ]
