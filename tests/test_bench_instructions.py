"""`scripts/bench cpu --instructions` without valgrind: one line naming what is missing,
exit 2, before any server is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_counting_without_valgrind_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # A PATH without valgrind; a database URL nothing listens on, never reached.
    env = {**os.environ, "PATH": str(tmp_path),
           "AURA_ES_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run(
        [sys.executable, "scripts/benchmarks/run.py", "cpu", "--instructions", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "valgrind" in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""
