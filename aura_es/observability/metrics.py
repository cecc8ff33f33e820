"""The metrics aura-es processes record, under the hardening plan's names.

Worker processes record into prometheus-client's multiprocess files when the supervisor
serves them (``PROMETHEUS_MULTIPROC_DIR`` set by ``workers run --metrics-port``);
otherwise nothing scrapes them and recording is skipped. Gauges computed from the
database (lag, DLQ, breakers, health) are not here: the supervisor's collector reads
them at scrape time (``collector.py``), so they are right whichever process is alive.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import Counter, Histogram

#: The plan's buckets, in seconds.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

EVENTS_PROCESSED = Counter(
    "aura_events_processed_total", "Events processed by projections, by outcome.",
    ["projection_name", "event_type", "status"],
)
PROCESSING_DURATION = Histogram(
    "aura_event_processing_duration_seconds",
    "From the start of the batch holding an event to its commit, per event.",
    ["projection_name", "event_type"], buckets=DURATION_BUCKETS,
)
PROJECTION_ERRORS = Counter(
    "aura_projection_errors_total", "Failures while projecting, by kind.",
    ["projection_name", "error_type"],
)
EVENTS_APPENDED = Counter(
    "aura_events_appended_total", "Events appended to the store by this process.",
    ["event_type"],
)
SIDE_EFFECTS = Counter(
    "aura_side_effects_total",
    "Side-effect attempts by projection, action and outcome (done, retry, dead).",
    ["projection_name", "action", "outcome"],
)
DUPLICATES_ABSORBED = Counter(
    "aura_duplicates_absorbed_total",
    "Commands recognised by their idempotency key and answered with the original result.",
)
OUTAGE_RETRIES = Counter(
    "aura_command_outage_retries_total",
    "Attempts of keyed commands made again because the store was unreachable (a"
    " failover, a restart).",
)

PROCESSED, PARKED, DEAD_LETTERED = "processed", "parked", "dead_lettered"


def worker_metrics_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def record_batch(
    projection: str, by_type: Mapping[str, int], seconds: float, status: str = PROCESSED
) -> None:
    """Counts a committed batch's events and their processing duration, per event type."""
    for event_type, count in by_type.items():
        EVENTS_PROCESSED.labels(projection, event_type, status).inc(count)
        if status == PROCESSED:
            _observe_many(PROCESSING_DURATION.labels(projection, event_type), seconds, count)


def _observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of one value: every event of a batch took the batch's time.

    prometheus-client has no weighted observe; one call per event would cost ~1.5 µs
    each in multiprocess mode, so the buckets are bumped directly when they exist.
    """
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None:
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for bucket, bound in zip(buckets, bounds, strict=True):
        if value <= bound:
            bucket.inc(count)
            break
