"""Whether this process was forked since a value was noted, without asking the kernel.

Objects that hold a socket or a thread (the recorder's kept connection, the waker)
must not use their parent's in a forked child. They compared ``os.getpid()`` at every
append: a system call, two in each command, ~1-2 µs of its client CPU after a round
trip (issue 27). This number changes in every forked child instead, so noting it and
comparing it is a read of a global.
"""

from __future__ import annotations

import os

_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def generation() -> int:
    """A number that differs, in a forked child, from any its parent noted."""
    return _generation
