"""Running `aura-es` as a user does (a subprocess) and checking its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys


def aura(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aura_es.cli", *args],
        capture_output=True, text=True, env=env or dict(os.environ), timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
