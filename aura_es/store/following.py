"""How a reader of the log waits: for a NOTIFY while the log is quiet, not while it is busy.

A writing process sends at most one NOTIFY per wake interval (``wakeup.Waker``): the
first commit after a quiet interval at once, later ones together at the end of it. So
while the log is busy a commit's NOTIFY may be held back for up to one interval. A
reader that has heard of activity lately (a NOTIFY, or a read that returned events)
does not wait for the next NOTIFY: it reads again after a short pause (8 ms, and once
nothing new has turned up for 50 ms, doubling to at most 40 ms), and it keeps doing so
for ``WINDOW_INTERVALS`` wake intervals after the last activity.

Why no commit waits longer than one pause: a commit whose NOTIFY is held back was made
within one interval of the previous NOTIFY of the same process, which the reader heard;
the reader is still following when the commit lands (the window is 2.5 intervals), and
when the held-back NOTIFY arrives it follows for another window. A reader that is not
following is woken by the NOTIFY itself, which is sent at once after a quiet interval.
(``tests/test_following.py`` checks this against a model of both sides.)

So the writers can send few NOTIFYs (each one is a transaction on the server) without
readers waking late. The price is on the readers' side: about a dozen reads in the
window after each burst of activity, and a quiet log costs a reader only its poll
interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The reader follows for this many wake intervals after the last activity it heard of.
WINDOW_INTERVALS = 2.5
#: The pause between reads while following: the first, kept while less than
#: ``STEADY_SECONDS`` have passed since the last activity (a steady stream is read as
#: often as the NOTIFYs of a 10 ms wake interval came), then doubling up to the longest.
FIRST_PAUSE_SECONDS = 0.008
STEADY_SECONDS = 0.050
MAX_PAUSE_SECONDS = 0.040


class Follow:
    """A reader's state: ``heard()`` on activity, ``timeout()`` before each wait."""

    def __init__(self, wake_interval: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = WINDOW_INTERVALS * wake_interval
        self._clock = clock
        self._last_heard = -float("inf")
        self._last_read = -float("inf")
        self._pause = FIRST_PAUSE_SECONDS

    def reading(self) -> None:
        """A read starts: the next pause counts from here, not from its end (a batch
        that took 5 ms to apply leaves 3 ms of an 8 ms pause)."""
        self._last_read = self._clock()

    def heard(self) -> None:
        """A NOTIFY arrived, or a read returned events: the log is busy."""
        self._last_heard = self._clock()
        self._pause = FIRST_PAUSE_SECONDS

    @property
    def following(self) -> bool:
        return self._clock() - self._last_heard < self.window

    def timeout(self, poll_seconds: float) -> float:
        """How long to wait for a NOTIFY before reading again anyway."""
        now = self._clock()
        quiet_for = now - self._last_heard
        if quiet_for >= self.window:
            return poll_seconds
        pause = self._pause
        if quiet_for >= STEADY_SECONDS:  # the stream has paused: look less often
            self._pause = min(2 * pause, MAX_PAUSE_SECONDS)
        return max(0.0, min(pause - (now - self._last_read), poll_seconds))
