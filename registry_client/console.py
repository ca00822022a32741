"""stderr output for people: rich progress bars, waits, warnings and one-line errors.

stdout is reserved for results; everything here goes to stderr, and progress bars are
drawn only when stderr is a terminal (or --progress asks for them).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from registry_client.errors import RegistryClientError
from registry_client.reporting import Reporter


class ConsoleReporter(Reporter):
    def __init__(
        self, *, quiet: bool = False, verbose: bool = False, progress: bool | None = None
    ) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.show_progress = (not quiet) and (sys.stderr.isatty() if progress is None else progress)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if not self.show_progress or total <= 0:
            yield lambda _n: None
            return
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
        console = Console(stderr=True, force_terminal=True if self.show_progress else None)
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def print_error(exc: RegistryClientError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
