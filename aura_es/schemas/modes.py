"""Compatibility modes, as Confluent Schema Registry and KurrentDB name them.

BACKWARD: a reader of the new version reads data of the previous one (here: after the
upcasters). FORWARD: a reader of the previous version reads data of the new one (a
service on the mesh that has not upgraded). FULL: both. ``_TRANSITIVE``: against every
earlier version, not only the previous. NONE: no check.
"""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def backward(self) -> bool:
        return self.name.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        return self.name.startswith(("FORWARD", "FULL"))

    @property
    def transitive(self) -> bool:
        return self.name.endswith("_TRANSITIVE")


#: Events on the JetStream stream are read by services that upgrade on their own
#: schedule, so both directions must hold against every version.
PUBLISHED_DEFAULT = Mode.FULL_TRANSITIVE
#: Events only this codebase reads: its upcasters must reach the current version.
INTERNAL_DEFAULT = Mode.BACKWARD_TRANSITIVE


def mode_for(compatibility: str | None, published: bool) -> Mode:
    """A type's mode from its catalog entry (``events:`` in the catalog)."""
    if compatibility is not None:
        return Mode(compatibility)
    return PUBLISHED_DEFAULT if published else INTERNAL_DEFAULT
