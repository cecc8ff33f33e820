"""A child process's stderr, read as it comes: tests wait for a line that proves what they
need (a retry logged, a breaker opened) instead of sleeping a fixed time."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable


class LogLines:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None, "start the process with stderr=PIPE, text=True"
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, args=(process.stderr,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._lock:
                self._chunks.append(line)

    def text(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def wait_for(self, what: str, condition: Callable[[str], bool],
                 timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if condition(text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:"
                             f" {self.text()[-2000:]}")
