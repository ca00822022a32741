"""What the command line writes: results on stdout, everything for people on stderr.

stdout is reserved for results (write_result); progress bars, waits, warnings and
one-line errors go to stderr, and progress bars are drawn only when stderr is a terminal
(or --progress asks for them).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

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


def write_result(data: Any, text: str | None, *, as_json: bool) -> None:
    """A command's result on stdout: `data` as one line of JSON with --json, else `text`."""
    if as_json:
        import json

        sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")
    elif text is not None:
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))
