"""Yes/no settings (``AURA_ES_SERIAL_APPENDS``, ``AURA_ES_SETTLE_HEAP``): one reading of
them, and one line naming the setting for any other value."""

from __future__ import annotations

from eventsourcing.utils import strtobool

from aura_es.errors import ConfigurationError


def yes_no(name: str, raw: str, *, default: bool) -> bool:
    """``raw`` as the value of setting ``name``: y/yes/t/true/on/1 or n/no/f/false/off/0,
    any case; ``default`` when empty. ``ConfigurationError`` (the value shortened) else."""
    if not raw:
        return default
    try:
        return strtobool(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw[:40]!r} is not a yes/no value") from None
