"""The declarative projection catalog: its models, loading with clear errors, fingerprints."""

from aura_es.catalog.loader import DEFAULT_CATALOG, load_catalog
from aura_es.catalog.model import (
    Catalog,
    CircuitBreaker,
    DeclarativeField,
    DeclarativeSpec,
    ErrorHandling,
    ProjectionSpec,
    Windowing,
)

__all__ = [
    "DEFAULT_CATALOG",
    "Catalog",
    "CircuitBreaker",
    "DeclarativeField",
    "DeclarativeSpec",
    "ErrorHandling",
    "ProjectionSpec",
    "Windowing",
    "load_catalog",
]
