"""Pulls from other registries (docker://, library://, shub://) into the same cache."""

from __future__ import annotations

from typing import Any

from registry_client.errors import UsageError
from registry_client.names import FetcherRef


def pull_fetcher(ctx: Any, ref: FetcherRef, *, output: str | None = None, force: bool = False,
                 offline: bool = False) -> Any:
    raise UsageError(f"{ref.scheme}:// pulls are not supported by this version")
