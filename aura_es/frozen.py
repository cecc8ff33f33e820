"""Frozen dataclasses made at the cost of a plain class.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its
own ``__setattr__`` refuses): a call per field, ~0.1 µs each. The objects the write
path makes for every command (the command, its context, its result) have five to
nine fields: about a microsecond a command, 3% of a batch's client CPU (issue 27).
``quick_init`` gives such a class an ``__init__`` of the same signature that fills the
instance's ``__dict__`` in one call. Nothing else changes: the fields, ``repr``,
equality, hashing, ``dataclasses.replace`` and the refusal of assignment are the
dataclass's own (``tests/test_frozen.py`` holds them to a plain twin's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """``cls`` (a frozen dataclass whose fields have plain defaults, without
    ``__post_init__`` or slots) with an ``__init__`` that fills ``__dict__`` at once."""
    params = cls.__dict__.get("__dataclass_params__")
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init takes no __post_init__ or slots")
    fields = [f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init]
    defaults: dict[str, Any] = {}
    signature = []
    for f in fields:
        if f.default_factory is not dataclasses.MISSING or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: quick_init takes plain fields only")
        if f.default is dataclasses.MISSING:
            signature.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            signature.append(f"{f.name}=_default_{f.name}")
    assigned = ", ".join(f"{f.name}={f.name}" for f in fields)
    source = (f"def __init__(self, {', '.join(signature)}):\n"
              f"    self.__dict__.update({assigned})\n")
    namespace: dict[str, Any] = dict(defaults)
    exec(compile(source, f"<quick_init {cls.__qualname__}>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
