"""Side-effect actions: what a projection asks to happen outside its database (a webhook,
an email, a message), by name.

A handler cannot hand a closure to be run later: it would be lost in a crash between the
batch's commit and the call. So it records *which* action to run and a JSON payload in
the batch's own transaction (``tx.side_effect``), and the worker's dispatcher runs the
registered function afterwards, retrying it, with an idempotency key the receiver can
deduplicate on (at least once, never lost).

    @side_effect_action("notify-billing")
    def notify_billing(payload: dict, idempotency_key: str) -> None:
        requests.post(URL, json=payload, headers={"Idempotency-Key": idempotency_key})
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from aura_es.errors import ConfigurationError

Action = Callable[[dict[str, Any], str], None]
A = TypeVar("A", bound=Action)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,99}$")
_actions: dict[str, Action] = {}


def side_effect_action(name: str) -> Callable[[A], A]:
    """Registers ``fn(payload, idempotency_key)`` as the side effect called ``name``."""
    if not _NAME.match(name):
        raise ConfigurationError(
            f"side-effect action name {name!r}: letters, digits and _ . : - only")

    def register(fn: A) -> A:
        existing = _actions.get(name)
        if existing is not None and _place(existing) != _place(fn):
            raise ConfigurationError(f"side-effect action {name!r} is already {existing!r}")
        _actions[name] = fn
        return fn

    return register


def get(name: str) -> Action:
    try:
        return _actions[name]
    except KeyError:
        known = ", ".join(sorted(_actions)) or "none"
        raise ConfigurationError(
            f"no side-effect action {name!r} is registered (registered: {known}); register"
            " it with @side_effect_action in a module the handler imports"
        ) from None


def _place(fn: Callable[..., Any]) -> tuple[str, str]:
    return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")
