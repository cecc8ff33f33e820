"""Hypothesis strategies for the JSON Schema subset event schemas use.

hypothesis-jsonschema 0.23 fails on object schemas with the hypothesis this project
pins (it uses a private API that changed), so the subset is generated here: objects
(``properties``, ``required``, ``additionalProperties``), strings (``uuid``,
``date-time``, ``date``; ``minLength``/``maxLength``, ``enum``/``const``), integers and
numbers within 64 bits, booleans, null, arrays (``items``, ``prefixItems``) and
``anyOf``/``oneOf``. A schema using anything else is refused by name, never sampled
wrongly.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from aura_es.errors import ConfigurationError

_INT64 = 2**63 - 1
#: Lower bounds above this are refused: a hand-edited ``minLength: 1000000000`` would
#: otherwise have the check build gigabyte strings.
MAX_MIN_SIZE = 1_000
#: Keywords that only annotate: they never change which values are valid.
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "examples", "default",
                          "$comment", "deprecated", "readOnly", "writeOnly",
                          "contentEncoding", "contentMediaType"})
_EXTRA_KEYS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                      min_size=1, max_size=12)
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-_INT64, _INT64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_EXTRA_KEYS, inner,
                                                                 max_size=3),
    max_leaves=6,
)


def from_schema(schema: Any, where: str = "") -> st.SearchStrategy[Any]:
    if schema is True or schema == {}:
        return _ANY_JSON
    if not isinstance(schema, dict):
        raise ConfigurationError(f"schema{where}: cannot sample {schema!r}")
    # "x-" keywords are ours (x-aura-personal, x-aura-subject): annotations too.
    keys = {k for k in set(schema) - _ANNOTATIONS if not k.startswith("x-")}
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return st.one_of([from_schema(s, f"{where}.{combinator}[{i}]")
                              for i, s in enumerate(schema[combinator])])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, where) for k in kind])
    allowed = _KEYWORDS.get(kind)
    if allowed is None:
        raise ConfigurationError(f"schema{where}: type {kind!r} is not supported")
    unsupported = keys - allowed - {"type"}
    if unsupported:
        raise ConfigurationError(f"schema{where}: keyword {sorted(unsupported)[0]!r} is not"
                                 " supported by aura-es's compatibility check")
    for bound in ("minLength", "minItems"):
        value = schema.get(bound, 0)
        if not isinstance(value, int) or value > MAX_MIN_SIZE:
            raise ConfigurationError(f"schema{where}: {bound} {value!r} is beyond what the"
                                     f" compatibility check samples ({MAX_MIN_SIZE:,})")
    strategy: st.SearchStrategy[Any] = _BUILDERS[kind](schema, where)
    return strategy


def _object(schema: dict[str, Any], where: str) -> st.SearchStrategy[Any]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = {name: from_schema(sub, f"{where}.{name}") for name, sub in properties.items()
             if name in required}
    optional = {name: from_schema(sub, f"{where}.{name}")
                for name, sub in properties.items() if name not in required}
    base = st.fixed_dictionaries(fixed, optional=optional)
    extra = schema.get("additionalProperties", True)
    if extra is False:
        return base
    values = _ANY_JSON if extra is True else from_schema(extra, f"{where}.*")
    more = st.dictionaries(_EXTRA_KEYS.filter(lambda k: k not in properties), values,
                           max_size=2)
    return st.builds(lambda a, b: {**b, **a}, base, more)


def _string(schema: dict[str, Any], where: str) -> st.SearchStrategy[Any]:
    fmt = schema.get("format")
    if fmt == "uuid":
        return st.uuids().map(str)
    if fmt == "date-time":
        return st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    if fmt == "date":
        return st.dates().map(lambda d: d.isoformat())
    if fmt is not None:
        raise ConfigurationError(f"schema{where}: format {fmt!r} is not supported")
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                   min_size=schema.get("minLength", 0),
                   max_size=schema.get("maxLength", schema.get("minLength", 0) + 20))


def _integer(schema: dict[str, Any], where: str) -> st.SearchStrategy[Any]:
    return st.integers(max(math.ceil(schema.get("minimum", -_INT64)), -_INT64),
                       min(math.floor(schema.get("maximum", _INT64)), _INT64))


def _number(schema: dict[str, Any], where: str) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    return st.floats(low, high, allow_nan=False, allow_infinity=False) | _integer(schema, where)


def _array(schema: dict[str, Any], where: str) -> st.SearchStrategy[Any]:
    prefix = [from_schema(s, f"{where}[{i}]") for i, s in enumerate(schema.get("prefixItems", []))]
    items = schema.get("items", True)
    if prefix:
        head = st.tuples(*prefix).map(list)
        if items is False:
            return head
        tail = st.lists(from_schema(items, f"{where}[]"), max_size=3)
        return st.builds(lambda a, b: a + b, head, tail)
    low = schema.get("minItems", 0)
    return st.lists(from_schema(items, f"{where}[]"), min_size=low,
                    max_size=max(low, min(schema.get("maxItems", 4), 4)))


_KEYWORDS: dict[Any, set[str]] = {
    "object": {"properties", "required", "additionalProperties"},
    "string": {"format", "minLength", "maxLength", "pattern"},
    "integer": {"minimum", "maximum"},
    "number": {"minimum", "maximum"},
    "boolean": set(),
    "null": set(),
    "array": {"items", "prefixItems", "minItems", "maxItems"},
}
_BUILDERS: dict[Any, Any] = {
    "object": _object, "string": _string, "integer": _integer, "number": _number,
    "boolean": lambda s, w: st.booleans(), "null": lambda s, w: st.none(), "array": _array,
}
