"""How the service talks to a person: progress, waits and warnings (never to stdout).

The library default is silent; the CLI passes a reporter that draws rich progress bars
and messages on stderr.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Tally:
    """Progress of a batch of transfers (a migration): items done, bytes moved, rate, ETA.
    Thread-safe: every worker of the batch adds to it."""

    def __init__(self, items: int, total: int) -> None:
        self.items, self.total = items, total
        self.done_items = 0
        self.moved = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self._lock:
            self.moved += n

    def item_done(self) -> None:
        with self._lock:
            self.done_items += 1

    def line(self) -> str:
        """e.g. `12/30 images, 150.2 of 442.0 MB, 41.5 MB/s, ETA 7s`."""
        with self._lock:
            done, moved = self.done_items, self.moved
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = moved / elapsed
        text = f"{done}/{self.items} images, {moved / 1e6:.1f} of {self.total / 1e6:.1f} MB"
        if moved:
            eta = max(self.total - moved, 0) / rate if rate > 0 else 0
            text += f", {rate / 1e6:.1f} MB/s, ETA {_duration(eta)}"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 120:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Reporter:
    """Silent reporter; subclasses draw."""

    def info(self, message: str) -> None:
        """A status line (e.g. who we wait for)."""

    def warn(self, message: str) -> None:
        """Something the user should know about, that did not stop the command."""

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """Yield a callback taking a number of bytes moved."""
        yield lambda _n: None

    @contextlib.contextmanager
    def batch(self, description: str, tally: Tally) -> Iterator[None]:
        """Show a batch's tally while the body runs (a migration of many images)."""
        yield
