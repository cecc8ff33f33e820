"""The rules for read-model table names, so no two projections can ever share a table.

A projection's tables are all derived from its ``storage`` name:
``<storage>`` (generation 1), ``<storage>__g<N>`` (a rebuilt generation) and
``<storage>[__g<N>]__<suffix>`` (auxiliary tables). ``__`` is the separator, so a
storage name may not contain it, nor end in ``_``, and a suffix must start with a
letter and contain no ``__``: then every derived name splits back into exactly one
storage name, and distinct storage names can never derive the same table. Names are
also bounded so that every derived name fits PostgreSQL's 63-byte identifiers (longer
ones would be truncated silently, and truncation is how collisions happen).
"""

from __future__ import annotations

import re

from aura_es.errors import ConfigurationError

#: PostgreSQL truncates identifiers longer than this many bytes.
MAX_IDENTIFIER_BYTES = 63
MAX_STORAGE_LENGTH = 40
#: aura-es's own tables start with this; a read model may not.
RESERVED_PREFIX = "aura_"
SEPARATOR = "__"

_STORAGE = re.compile(r"^[a-z][a-z0-9_]*$")
#: The same rules as one regular expression (for the catalog's JSON Schema).
STORAGE_PATTERN = r"^(?!aura_)[a-z][a-z0-9]*(_[a-z0-9]+)*$"
_SUFFIX = re.compile(r"^[a-z][a-z0-9_]*$")
_GENERATION_SUFFIX = re.compile(r"^g\d+$")


def storage_problem(value: str) -> str | None:
    """Why ``value`` cannot be a read model's storage name, or None."""
    if not isinstance(value, str) or not _STORAGE.match(value):
        return (f"storage {value!r} is not an identifier: lower-case letters, digits and _,"
                " starting with a letter")
    if len(value) > MAX_STORAGE_LENGTH:
        return (f"storage {value!r} is {len(value)} characters long; the limit is"
                f" {MAX_STORAGE_LENGTH} (its rebuilt and auxiliary tables must fit"
                f" PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte names)")
    if SEPARATOR in value or value.endswith("_"):
        return (f"storage {value!r} may not contain '__' or end in '_': '__' separates"
                " the tables aura-es derives from a storage name (e.g. <storage>__g2)")
    if value.startswith(RESERVED_PREFIX):
        return f"storage {value!r}: names starting with {RESERVED_PREFIX!r} are aura-es's own"
    return None


def check_length(name: str) -> str:
    size = len(name.encode())
    if size > MAX_IDENTIFIER_BYTES:
        raise ConfigurationError(
            f"table name {name!r} is {size} bytes long; PostgreSQL keeps only"
            f" {MAX_IDENTIFIER_BYTES}: use a shorter storage name or suffix"
        )
    return name


def generation_table(storage: str, generation: int) -> str:
    """The physical table of ``storage`` in ``generation``."""
    if generation == 1:
        return storage
    return check_length(f"{storage}{SEPARATOR}g{generation}")


def aux_table(base: str, suffix: str) -> str:
    """An auxiliary table beside ``base`` (a generation's physical table)."""
    if not _SUFFIX.match(suffix) or SEPARATOR in suffix or _GENERATION_SUFFIX.match(suffix):
        raise ConfigurationError(
            f"auxiliary table suffix {suffix!r} must be lower-case letters, digits and _,"
            " start with a letter, contain no '__' and not look like a generation (g<N>)"
        )
    return check_length(f"{base}{SEPARATOR}{suffix}")
