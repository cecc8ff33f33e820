"""Random (version 4) UUIDs as text, for event and correlation ids, at a quarter of the cost.

``str(uuid.uuid4())`` asks the kernel for 16 bytes (a system call) and builds a UUID
object only to print it: 2 µs, twice in every command (issue 27). Here the kernel's
bytes (``os.urandom``, the same source) are read 4 KiB at a time and printed directly
with the version and variant bits set: 0.5 µs. The ids are as random as uuid4's.

A forked child throws its parent's unread bytes away (it would otherwise hand out the
ids its parent hands out). Threads take ids from one iterator, which CPython advances
atomically, so no two threads get the same bytes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

_IDS_PER_READ = 256
_VERSION_4 = 0x0000_0000_0000_4000_8000_0000_0000_0000
_KEEP = 0xFFFF_FFFF_FFFF_0FFF_3FFF_FFFF_FFFF_FFFF
_refill = threading.Lock()


def _read() -> Iterator[int]:
    data = os.urandom(16 * _IDS_PER_READ)
    return iter([int.from_bytes(data[i:i + 16], "big") for i in range(0, len(data), 16)])


_numbers = _read()


def _forget() -> None:
    global _numbers, _refill
    _numbers, _refill = _read(), threading.Lock()


os.register_at_fork(after_in_child=_forget)


def random_uuid() -> str:
    """A new random UUID (RFC 9562 version 4), in its canonical text form."""
    global _numbers
    try:
        number = next(_numbers)
    except StopIteration:
        with _refill:
            # Another thread may have read more while this one waited for the lock.
            after_wait = next(_numbers, None)
            if after_wait is None:
                _numbers = _read()
                after_wait = next(_numbers)
            number = after_wait
    h = f"{(number & _KEEP) | _VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
