"""What the command line writes: results on stdout, everything for people on stderr.

stdout is reserved for results (write_result); progress bars, waits, warnings and
one-line errors go to stderr, and progress bars are drawn only when stderr is a terminal
(or --progress asks for them).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from registry_client.errors import RegistryClientError
from registry_client.reporting import Reporter, Tally

if TYPE_CHECKING:
    from rich.progress import Progress

#: seconds between the plain progress lines of a batch when stderr is not a terminal
ENV_INTERVAL = "REGISTRY_CLIENT_PROGRESS_INTERVAL"


def progress_interval() -> float:
    """Seconds between plain progress lines ($REGISTRY_CLIENT_PROGRESS_INTERVAL, default 5)."""
    try:
        return max(0.2, float(os.environ.get(ENV_INTERVAL, "5")))
    except ValueError:
        return 5.0


class ConsoleReporter(Reporter):
    def __init__(
        self, *, quiet: bool = False, verbose: bool = False, progress: bool | None = None
    ) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.show_progress = (not quiet) and (sys.stderr.isatty() if progress is None else progress)
        # Batch jobs (stderr not a terminal): a plain line every few seconds instead of bars.
        self.plain_progress = not quiet and progress is None and not self.show_progress

    def info(self, message: str) -> None:
        if not self.quiet:
            print(one_line(message), file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.plain_progress and total > 0:
            yield PlainProgress(description, total)
            return
        if not self.show_progress or total <= 0:
            yield lambda _n: None
            return
        with _bar() as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    @contextlib.contextmanager
    def batch(self, description: str, tally: Tally) -> Iterator[None]:
        """A live bar on a terminal; in a batch log (no TTY) a plain line every few seconds
        and one at the end, so a long migration shows it is alive."""
        if self.quiet:
            yield
            return
        if self.show_progress:
            with self._live(description, tally):
                yield
            return
        interval = progress_interval()
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(interval):
                self.info(f"{description}: {tally.line()}")

        ticker = threading.Thread(target=tick, name="rc-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            self.info(f"{description}: {tally.line()}")

    @contextlib.contextmanager
    def _live(self, description: str, tally: Tally) -> Iterator[None]:
        stop = threading.Event()
        with _bar() as bar:
            task = bar.add_task(description, total=max(tally.total, 1))

            def refresh() -> None:
                while True:
                    text = f"{description} {tally.done_items}/{tally.items}"
                    bar.update(task, completed=tally.moved, description=text)
                    if stop.wait(0.25):
                        return

            painter = threading.Thread(target=refresh, name="rc-progress", daemon=True)
            painter.start()
            try:
                yield
            finally:
                stop.set()
                painter.join()


class PlainProgress:
    """`pull lab/app:1: 512/1024 MiB (50%), 85.3 MiB/s` on stderr every few seconds
    ($REGISTRY_CLIENT_PROGRESS_INTERVAL, default 5): logs of batch jobs show that a long
    transfer is moving, without the control characters of a progress bar."""

    def __init__(self, description: str, total: int) -> None:
        import time

        self.description = one_line(description, 200)
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._clock = time.monotonic
        self._start = self._last = self._clock()
        self.interval = progress_interval()

    def __call__(self, n: int) -> None:
        with self._lock:  # workers report from several threads
            self.done += n
            now = self._clock()
            if now - self._last < self.interval or self.done >= self.total:
                return
            self._last = now
        rate = self.done / 2**20 / max(now - self._start, 1e-6)
        print(
            f"{self.description}: {self.done / 2**20:.0f}/{self.total / 2**20:.0f} MiB "
            f"({100 * self.done // self.total}%), {rate:.1f} MiB/s",
            file=sys.stderr,
            flush=True,
        )


#: longest message line printed; a server's error text can be any length
MAX_LINE = 2000


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` safe to print as one line: control and format characters escaped.

    Messages quote what servers, files and users sent (error bodies, ETags, names):
    a newline there would forge an `error:` or `hint:` line, an escape sequence would
    rewrite the terminal, a bidi override would reorder what is shown. Each such
    character becomes a visible escape (\\n, \\x1b, \\u202e), and the line is bounded.
    """
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(_escape(c) for c in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _escape(char: str) -> str:
    # Not printable: Unicode's control, format, surrogate, unassigned and separator
    # characters other than the plain space.
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def print_error(exc: RegistryClientError) -> None:
    """The contract's error lines: `error: …` and maybe `hint: …`, one line each."""
    print(f"error: {one_line(exc.message)}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {one_line(exc.hint)}", file=sys.stderr)


def write_result(data: Any, text: str | None, *, as_json: bool) -> None:
    """A command's result on stdout: `data` as one line of JSON with --json, else `text`."""
    if as_json:
        import json

        sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")
    elif text is not None:
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))


def _bar() -> Progress:
    """A rich bar on stderr (imported only when a terminal shows one: rich is slow to load)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True, force_terminal=True))
