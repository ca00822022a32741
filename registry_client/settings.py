"""Tunables of the data path, kept apart so that cache hits need not import it."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferSettings:
    """Ranged reads of a download: range size and how many run at once."""

    chunk_size: int = 16 * MiB
    concurrency: int = 8
