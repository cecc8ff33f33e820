"""`scripts/test`'s own setting: a number of worker processes that is not one is refused
in one line, exit 2, before anything runs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_ACCEPTED = re.compile(r"[1-9][0-9]?")


def _run(workers: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AURA_ES_TEST_WORKERS": workers}
    return subprocess.run(["bash", "scripts/test"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@settings(max_examples=25, deadline=None)
@given(workers=st.text(st.characters(blacklist_characters="\x00", codec="utf-8"),
                       min_size=1, max_size=40).filter(lambda v: not _ACCEPTED.fullmatch(v)))
def test_a_number_of_workers_that_is_not_one_is_one_line_and_exit_2(workers: str) -> None:
    done = _run(workers)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "AURA_ES_TEST_WORKERS" in lines[0]
    assert done.stdout == ""  # nothing ran: not even ruff
