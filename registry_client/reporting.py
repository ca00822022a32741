"""How the service talks to a person: progress, waits and warnings (never to stdout).

The library default is silent; the CLI passes a reporter that draws rich progress bars
and messages on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


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
