"""`scripts/bench cpu --instructions`: the client's instructions per command, counted.

A machine's speed moves between runs and within one (the same code's client CPU per
command was 52-55 µs one day and 134-142 µs the next, issue 27), and a change of a few
percent drowns in it. The instructions a command makes the client's processor run do
not move: valgrind's callgrind counts them, the same code giving the same count to a
fraction of a percent (the main thread's: ``_counted``). Each case runs twice in a
process of its own under callgrind, ``SMALL`` and ``LARGE`` times; the difference over
the extra runs is one command's, start-up and warm-up left out. Counted: user-space
instructions (Python, psycopg, libpq, OpenSSL, orjson, pydantic-core); not counted: the
kernel's (the system calls) and the server's. Instructions are not time (a cache miss
costs more than an add), so this sits beside the CPU figures, not in their place.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

if __name__ == "__main__":  # a case's own process: the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SMALL, LARGE = 5, 25
#: Each case: its commands (or rows) per run, and what one run does.
CASES: dict[str, int] = {
    "bare psycopg INSERT": 1,
    "keyed single-event command": 1,
    "a retried keyed command (absorbed)": 1,
    "100-event command, per event": 100,
    "100 keyed commands in one transaction, per command": 100,
    "raw executemany of 100 rows, per row": 100,
}
#: Single commands run this many times more than the batches (a run is one command).
_SINGLES = 20
_TOTALS = re.compile(rb"^totals: (\d+)$", re.MULTILINE)


class ValgrindMissing(Exception):
    """``--instructions`` needs valgrind, which is not installed."""


def _case(name: str, url: str) -> Callable[[int], object]:
    import psycopg

    from aura_es.app import AuraApp
    from aura_es.commands import Create
    from scripts.benchmarks.append import UsageBatch
    from scripts.benchmarks.cpu import BARE_INSERT, bare_row

    app = AuraApp(url, pool_size=2)
    raw = psycopg.connect(url, autocommit=True)
    state = b'{"topic": "t", "participants": ["a", "b"]}'
    retried = f"r-{uuid4()}"
    if name == "a retried keyed command (absorbed)":
        app.start_debate("AI ethics", ["a", "b"], idempotency_key=retried)
    cases: dict[str, Callable[[int], object]] = {
        "bare psycopg INSERT": lambda i: raw.execute(BARE_INSERT, bare_row()),
        "keyed single-event command": lambda i: app.start_debate(
            "AI ethics", ["a", "b"], idempotency_key=f"k{i}-{uuid4()}"),
        "a retried keyed command (absorbed)": lambda i: app.start_debate(
            "AI ethics", ["a", "b"], idempotency_key=retried),
        "100-event command, per event": lambda i: app.execute(Create(
            "import", f"b{i}-{uuid4()}", {"n": i},
            lambda batch_id: UsageBatch.imported(batch_id, "bench", 100))),
        "100 keyed commands in one transaction, per command": lambda i: app.execute_many([
            app.start_debate_command("AI ethics", ["a", "b"],
                                     idempotency_key=f"m{i}-{j}-{uuid4()}")
            for j in range(100)]),
        "raw executemany of 100 rows, per row": lambda i: _raw_batch(raw, state),
    }
    return cases[name]


def _raw_batch(raw: Any, state: bytes) -> None:
    with raw.transaction(), raw.cursor() as cur:
        cur.executemany("INSERT INTO bench_raw_events (originator_id, originator_version,"
                        " topic, state) VALUES (%s, 1, 'aura.debate.started.v1', %s)",
                        [(uuid4(), state) for _ in range(100)])


def _run_case(name: str, runs: int, url: str) -> None:
    """A case's own process: ``runs`` runs, nothing printed."""
    one = _case(name, url)
    for i in range(runs):
        one(i)


def _counted(name: str, runs: int, url: str) -> int:
    """The instructions of the main thread of a process running ``name`` ``runs``
    times. The other threads (the pool's, the waker's NOTIFYs) run by the clock, and a
    process under valgrind runs some fifty times slower: counted, they moved a single
    command's figure by ±3% between runs of the same code; the main thread's, by
    0.3%."""
    with tempfile.TemporaryDirectory(prefix="aura-instructions-") as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}/counted", sys.executable, __file__, name,
             str(runs), url],
            capture_output=True, timeout=1800, check=False)
        main_thread = Path(out, "counted-01")
        found = _TOTALS.search(main_thread.read_bytes()) if main_thread.exists() else None
    if done.returncode != 0 or found is None:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"the case {name!r} failed under valgrind: {last[0][:200]}")
    return int(found.group(1))


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise ValgrindMissing("--instructions counts with valgrind, which is not installed"
                              " (e.g. apt-get install valgrind)")


def per_command(url: str, names: list[str] | None = None) -> dict[str, float]:
    """Instructions per command (or row) of each case, two cases counted at once."""
    require_valgrind()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw_events (id bigserial PRIMARY KEY,"
                     " originator_id uuid, originator_version int, topic text, state bytea)")
    chosen = names or list(CASES)

    def count(name: str) -> float:
        per = CASES[name]
        scale = _SINGLES if per == 1 else 1
        small, large = SMALL * scale, LARGE * scale
        extra = _counted(name, large, url) - _counted(name, small, url)
        return extra / ((large - small) * per)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(chosen, pool.map(count, chosen), strict=True))


if __name__ == "__main__":
    _run_case(sys.argv[1], int(sys.argv[2]), sys.argv[3])
