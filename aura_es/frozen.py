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
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """``cls`` (a frozen dataclass whose fields have plain defaults, without
    ``__post_init__`` or slots) with an ``__init__`` that fills ``__dict__`` at once."""
    init = _filling(cls, "__init__", "self", "self.__dict__.update({assigned})")
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def quick_new(cls: type[T], *, held_post_init: Callable[[Any], None] | None = None
              ) -> Callable[..., T]:
    """A function making ``cls``'s instances (the same arguments as ``cls(...)``) by
    filling their ``__dict__`` at once: for a frozen dataclass whose ``__init__`` is
    not ours to replace (the library's ``StoredEvent``, made for every event written
    and read; an aggregate's events). The same conditions as ``quick_init``, but that
    ``cls`` may have ``held_post_init`` as its ``__post_init__``: a check its caller
    holds by construction, so it is not run. A class with a ``__new__`` of its own is
    refused: the function makes instances with ``object.__new__``."""
    if cls.__new__ is not object.__new__:
        raise TypeError(f"{cls.__name__}: quick_new takes no __new__ of its own")
    make: Callable[..., T] = _filling(
        cls, "make", None, "instance = _new(_cls)\n"
        "    instance.__dict__.update({assigned})\n    return instance",
        held_post_init, _new=object.__new__, _cls=cls)
    make.__qualname__ = f"quick_new({cls.__qualname__})"
    return make


def _filling(cls: type, name: str, first: str | None, body: str,
             held_post_init: Callable[[Any], None] | None = None,
             **names: Any) -> Callable[..., Any]:
    """A function ``name`` taking ``cls``'s fields as its ``__init__`` does (after
    ``first``, if any), whose ``body`` has ``{assigned}``: ``field=field, ...``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__dataclass_fields__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    post_init = getattr(cls, "__post_init__", None)
    if (post_init is not None and post_init is not held_post_init) or any(
            getattr(base, "__slots__", ()) for base in cls.__mro__):
        raise TypeError(f"{cls.__name__}: quick_init takes no __post_init__ or slots")
    fields = [f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init]
    defaults: dict[str, Any] = {}
    signature = [first] if first else []
    for f in fields:
        if f.default_factory is not dataclasses.MISSING or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: quick_init takes plain fields only")
        if f.default is dataclasses.MISSING:
            signature.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            signature.append(f"{f.name}=_default_{f.name}")
    assigned = ", ".join(f"{f.name}={f.name}" for f in fields)
    source = (f"def {name}({', '.join(signature)}):\n"
              f"    {body.format(assigned=assigned)}\n")
    namespace: dict[str, Any] = {**defaults, **names}
    exec(compile(source, f"<quick_init {cls.__qualname__}>", "exec"), namespace)
    made: Callable[..., Any] = namespace[name]
    return made
