"""`aura-es load --rate`: the load shapes send what they promise, and the longest
unavailability is what a client saw (pure logic, then once against the store)."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from aura_es.db import connect
from aura_es.load import PROFILES, PacedReport, due_at
from tests.support.cli import assert_one_line_error, aura
from tests.support.workers import env_for

SHARE = {"sustained": 1.0, "spike": 0.505, "soak": 0.8}


@given(st.sampled_from(PROFILES), st.floats(0.5, 200), st.floats(1, 300))
def test_each_shape_sends_its_share_of_rate_times_duration_in_order(
    profile: str, rate: float, duration: float,
) -> None:
    times = list(itertools.takewhile(lambda t: t < duration, (
        due_at(profile, rate, duration, k) for k in range(10**6))))
    assert times == sorted(times) and times[0] == 0.0
    expected = SHARE[profile] * rate * duration
    assert abs(len(times) - expected) <= 1 + expected * 1e-9


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 5), st.booleans()), min_size=1,
                max_size=200))
def test_the_longest_unavailability_is_the_longest_time_without_a_success(
    commands: list[tuple[float, float, bool]],
) -> None:
    report = PacedReport("sustained", 1.0, 1.0)
    for due, took, ok in commands:
        report.record(due, due + took, None if ok else "ServiceUnavailable")
    start = min(d for d, _, _ in commands)
    end = max(d + t for d, t, _ in commands)
    successes = sorted(d + t for d, t, ok in commands if ok)
    gap = report.longest_unavailability()
    assert gap >= 0 and gap <= end - start + 1e-9
    # No success inside the gap it reports, and every success-free stretch fits in it.
    marks = [start, *successes, end]
    assert gap == max(b - a for a, b in itertools.pairwise(marks))


def test_a_paced_run_reports_as_it_promises_and_refuses_bad_values(db_url: str) -> None:
    done = aura("load", "--rate", "40", "--duration", "2", "--json", env=env_for(db_url))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sent"] == report["succeeded"] == 80 and report["success_ratio"] == 1.0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    for args, needle in ((("--rate", "0"), "--rate"), (("--rate", "nan"), "--rate"),
                         (("--duration", "5"), "go together"),
                         (("--rate", "5", "--duration", "1e9"), "--duration"),
                         (("--rate", "5", "--duration", "2", "--profile", "flat"),
                          "--profile"),
                         (("--rate", "inf"), "--rate"), (("--rate", "-1e308"), "--rate"),
                         (("--rate", "5", "--duration", "2", "--profile", "x\x01y" * 1000),
                          "--profile"),
                         (("--rate", "5", "--duration", "2", "--samples",
                           "/nonexistent/dir/samples.csv"), "--samples")):
        if "--duration" not in args and "--rate" in args:
            args = (*args, "--duration", "2")
        assert_one_line_error(aura("load", *args, env=env_for(db_url)), needle)
    with connect(db_url) as conn:  # the refused runs sent nothing
        assert conn.execute("SELECT count(*) FROM aura_idempotency").fetchone() == (80,)
