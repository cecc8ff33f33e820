"""Random (version 4) UUIDs as text, for event and correlation ids, at a fraction of the cost.

``str(uuid.uuid4())`` asks the kernel for 16 bytes (a system call) and builds a UUID
object only to print it: 2 µs, twice in every command (issue 27). Here the kernel's
bytes (``os.urandom``, the same source) are read 4 KiB at a time and printed, 256 ids
at once, with the version and variant bits set: a command takes its ids ready made.
Printed one at a time, after each round trip, they cost 4.7% of a batch's client CPU
(py-spy, issue 27); printed in one loop, a quarter of that. The ids are as random as
uuid4's.

A forked child throws its parent's unread ids away (it would otherwise hand out the
ids its parent hands out). Threads take ids from one iterator, which CPython advances
atomically, so no two threads get the same bytes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

_IDS_PER_READ = 256
#: The variant's hex digit (``10`` then two random bits) for each random one.
_VARIANT = {f"{n:x}": f"{n & 0b0011 | 0b1000:x}" for n in range(16)}
_refill = threading.Lock()


def _read() -> Iterator[str]:
    """The next ids: 32 random hex digits each, the 13th made the version (4), the
    17th the variant (RFC 9562: ``10`` then the random digit's two low bits)."""
    h = os.urandom(16 * _IDS_PER_READ).hex()
    variant = _VARIANT
    return iter([f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-"
                 f"{variant[h[i + 16]]}{h[i + 17:i + 20]}-{h[i + 20:i + 32]}"
                 for i in range(0, len(h), 32)])


_ids = _read()


def _forget() -> None:
    global _ids, _refill
    _ids, _refill = _read(), threading.Lock()


os.register_at_fork(after_in_child=_forget)


def random_uuid() -> str:
    """A new random UUID (RFC 9562 version 4), in its canonical text form."""
    global _ids
    try:
        return next(_ids)
    except StopIteration:
        with _refill:
            # Another thread may have read more while this one waited for the lock.
            after_wait = next(_ids, None)
            if after_wait is None:
                _ids = _read()
                after_wait = next(_ids)
            return after_wait
