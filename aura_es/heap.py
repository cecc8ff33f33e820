"""A process's start-up heap, kept out of the cyclic collector's full passes.

CPython's cyclic collector walks every tracked object at each full collection, and
what a process makes while starting (modules, classes, the driver's and the library's
state: some 66,000 objects in a writer, 70,000 in a worker) lives as long as the
process. Commands and folds allocate by the thousand, and the objects a batch keeps
until it ends are promoted until a full collection comes, every few dozen batches: each
walked the start-up heap again, ~20 ms. ``gc.freeze`` moves what exists into a
generation the collector never walks.

A worker settles its heap once started (``settle``: what starting left behind is
collected first). An application settles it, once per process, when the first is made
(``settle_once``), unless ``AURA_ES_SETTLE_HEAP`` says no: a batch of 100 keyed
commands spent a tenth of its client CPU in those collections (issue 27,
docs/benchmarks.md). Frozen objects are never collected: what was alive then and later
becomes cyclic garbage stays in memory (bounded by that one moment's heap); what
becomes garbage otherwise is freed by its reference count as always.
"""

from __future__ import annotations

import gc
import os
import threading

from aura_es.switches import yes_no

#: ``AURA_ES_SETTLE_HEAP``: a yes/no value, yes when unset.
SETTLE_HEAP = "AURA_ES_SETTLE_HEAP"

_lock = threading.Lock()
#: Whether this process's heap was settled (a forked child's not yet: ``_forked``).
_settled = False


def _forked() -> None:
    # The child's heap is its own to settle; and a child forked while another thread
    # held the lock would wait on it for ever.
    global _lock, _settled
    _lock, _settled = threading.Lock(), False


os.register_at_fork(after_in_child=_forked)


def settle() -> None:
    """Collects what starting left behind, then freezes the rest (it lives as long as
    the process: nothing frozen is ever collected)."""
    gc.collect()
    gc.freeze()


def settle_once() -> bool:
    """Freezes what exists now, the first time in this process (a forked child's
    first time too), unless ``AURA_ES_SETTLE_HEAP`` says no; whether it froze. No
    collection first (a full one costs a short command tens of milliseconds): what
    the imports left behind is little. ``ConfigurationError`` names a value that is
    not yes or no."""
    global _settled
    if not settling_wanted() or _settled:
        return False
    with _lock:
        if _settled:
            return False
        gc.freeze()
        _settled = True
    return True


def settling_wanted() -> bool:
    """What ``AURA_ES_SETTLE_HEAP`` says (yes when unset or empty)."""
    return settle_setting(os.environ.get(SETTLE_HEAP, ""))


def settle_setting(raw: str) -> bool:
    """An ``AURA_ES_SETTLE_HEAP`` value: yes or no ("" for yes); anything else is one line."""
    return yes_no(SETTLE_HEAP, raw, default=True)
