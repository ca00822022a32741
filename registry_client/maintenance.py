"""`cache verify` and `cache prune`: keep a long-lived node cache whole and bounded.

The policy lives here; every file operation is the cache's own (registry_client.cache),
so that it never follows a symlink and, in a shared cache, touches only what the user may.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from registry_client.cache import Cache
from registry_client.digests import hash_file

STALE_RESUME_SECONDS = 24 * 3600
BLOB_GRACE = 600


@dataclass
class VerifyReport:
    checked: int = 0
    bad: list[dict[str, str | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "bad": self.bad}


def verify_cache(cache: Cache) -> VerifyReport:
    """Re-hash every published image and docker layer blob; move damaged ones to
    quarantine/ (the next pull fetches them again). In a shared cache another member's
    damaged file is reported, not moved: only its owner or root may."""
    report = VerifyReport()
    for entry in [*cache.entries("sif"), *cache.entries("blobs")]:
        report.checked += 1
        try:
            actual = hash_file(str(entry.path)).sha256
        except OSError as exc:
            actual = f"unreadable: {exc.strerror}"
        if actual != entry.sha256:
            moved = cache.quarantine(entry)
            report.bad.append(
                {
                    "digest": f"sha256:{entry.sha256}",
                    "kind": "image" if entry.kind == "sif" else "layer blob",
                    "path": str(entry.path),
                    "actual": actual,
                    "moved_to": str(moved) if moved else None,
                }
            )
    return report


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)
    freed: int = 0
    kept_in_use: list[str] = field(default_factory=list)
    temps_removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "freed": self.freed,
            "in_use": self.kept_in_use,
            "temps_removed": self.temps_removed,
        }


def prune_cache(
    cache: Cache,
    *,
    max_age: float | None = None,
    max_size: int | None = None,
    now: float | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Remove images unused for max_age seconds, then least-recently-used ones until the
    total is at most max_size bytes. An image a running pull holds is never removed.
    With dry_run, report what would go and remove nothing (temp files included)."""
    now = time.time() if now is None else now
    removed = 0
    if not dry_run:
        removed = cache.clean_dead_temps() + cache.remove_stale_resumes(now - STALE_RESUME_SECONDS)
    report = PruneReport(temps_removed=removed)
    # Layer blobs only serve rebuilds of docker:// images: they go first, but never one
    # a build may be reading right now. Only what the user may remove counts (in a shared
    # cache: their own files).
    mine = cache.may_remove
    blobs = [
        b for b in cache.entries("blobs") if mine(b) and now - max(b.atime, b.mtime) > BLOB_GRACE
    ]
    entries = sorted(filter(mine, cache.entries()), key=lambda e: max(e.atime, e.mtime))
    entries = sorted(blobs, key=lambda e: max(e.atime, e.mtime)) + entries
    total = sum(e.size for e in entries)
    for entry in entries:
        too_old = max_age is not None and now - max(entry.atime, entry.mtime) > max_age
        too_big = max_size is not None and total > max_size
        if not (too_old or too_big):
            continue
        if cache.remove(entry, dry_run=dry_run):
            report.removed.append(f"sha256:{entry.sha256}")
            report.freed += entry.size
            total -= entry.size
        else:
            report.kept_in_use.append(f"sha256:{entry.sha256}")
    return report


def cache_listing(cache: Cache) -> list[dict[str, Any]]:
    """`cache ls`: each cached image with the references that last resolved to it."""
    refs: dict[str, set[str]] = {}
    for rec in cache.refs():  # a pull records its tag and its (ref, digest) pair: once each
        refs.setdefault(str(rec.get("sha256")), set()).add(str(rec.get("ref")))
    return [
        {
            "digest": f"sha256:{e.sha256}",
            "size": e.size,
            "path": str(e.path),
            "refs": sorted(refs.get(e.sha256, ())),
        }
        for e in cache.entries()
    ]
