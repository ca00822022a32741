"""Tunables of the data path, kept apart so that cache hits need not import it."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferSettings:
    """Ranged reads of a download: range size, how many run at once, and how long a read
    may deliver nothing before it is stopped and retried (seconds)."""

    chunk_size: int = 16 * MiB
    concurrency: int = 8
    stall_timeout: float = 30.0


#: images a migration copies at once (`migrate --jobs`); large ones also go in parallel parts
MIGRATE_JOBS = 8
