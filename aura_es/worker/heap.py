"""A worker process's heap, settled once it has started.

CPython's cyclic collector walks every tracked object at each full collection. A worker
allocates a batch's envelopes, rows and dicts by the thousand, and those allocations
trigger full collections that would also walk everything the process made while
starting (modules, the catalog, the driver's and the library's state: some 70,000
objects) every time. ``gc.freeze`` takes what exists at start out of the collector's
walk, so a full collection costs what the batches made, not the whole process. Measured
with issue 25's benchmark (docs/benchmarks.md, "erasure"): a fold of 30,000 events
spent 4-10 µs an event less, most where an event allocates more (sealed fields).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collects what starting left behind, then freezes the rest (it lives as long as
    the process: nothing frozen is ever collected)."""
    gc.collect()
    gc.freeze()
