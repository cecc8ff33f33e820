"""Importing a module a user named (a catalog's event modules or transient exceptions,
``--module``): whatever the name, one line saying why it did not import.

Python's ``importlib`` raises more than ``ImportError`` for a bad name: an empty one is a
``ValueError``, a relative one a ``TypeError``, and the module itself may raise anything.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from aura_es.errors import ConfigurationError


def import_named(name: str, what: str) -> ModuleType:
    """The module ``name``; else ``ConfigurationError`` naming ``what`` and the name (cut
    to 100 characters), with the first line of the reason."""
    try:
        return importlib.import_module(name)
    except Exception as e:  # an application's module, or no module named: its own
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise ConfigurationError(f"{what}: cannot import {shown(name)!r}"
                                 f" ({type(e).__name__}: {detail})") from None


def shown(name: str) -> str:
    """A name as an error line shows it: its first 100 characters."""
    return name if len(name) <= 100 else name[:100] + "…"
