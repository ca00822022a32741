"""`cache verify` and `cache prune`: keep a long-lived node cache whole and bounded."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry_client import locks
from registry_client.cache import Cache, CacheEntry
from registry_client.digests import hash_file

STALE_RESUME_SECONDS = 24 * 3600
BLOB_GRACE = 600


@dataclass
class VerifyReport:
    checked: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "bad": self.bad}


def verify_cache(cache: Cache) -> VerifyReport:
    """Re-hash every published image; move damaged ones to quarantine/."""
    report = VerifyReport()
    for entry in cache.entries():
        report.checked += 1
        try:
            actual = hash_file(str(entry.path)).sha256
        except OSError as exc:
            actual = f"unreadable: {exc.strerror}"
        if actual != entry.sha256:
            moved = _quarantine(cache, entry)
            report.bad.append(
                {"digest": f"sha256:{entry.sha256}", "actual": actual, "moved_to": str(moved)}
            )
    return report


def _quarantine(cache: Cache, entry: CacheEntry) -> Path:
    folder = cache.base / "quarantine"
    folder.mkdir(exist_ok=True, mode=0o700)
    dest = folder / f"{entry.sha256}.{int(time.time())}.sif"
    os.replace(entry.path, dest)
    return dest


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
    report = PruneReport(temps_removed=0 if dry_run else _clean_temps(cache, now))
    # Layer blobs only serve rebuilds of docker:// images: they go first, but never one
    # a build may be reading right now.
    blobs = [b for b in cache.entries("blobs") if now - max(b.atime, b.mtime) > BLOB_GRACE]
    entries = sorted(cache.entries(), key=lambda e: max(e.atime, e.mtime))
    entries = sorted(blobs, key=lambda e: max(e.atime, e.mtime)) + entries
    total = sum(e.size for e in entries)
    for entry in entries:
        too_old = max_age is not None and now - max(entry.atime, entry.mtime) > max_age
        too_big = max_size is not None and total > max_size
        if not (too_old or too_big):
            continue
        if _remove_unless_used(cache, entry, dry_run):
            report.removed.append(f"sha256:{entry.sha256}")
            report.freed += entry.size
            total -= entry.size
        else:
            report.kept_in_use.append(f"sha256:{entry.sha256}")
    return report


def _remove_unless_used(cache: Cache, entry: CacheEntry, dry_run: bool = False) -> bool:
    with locks.try_exclusive(cache.base / "locks" / f"use-{entry.sha256}.lock") as free:
        if not free or dry_run:
            return free
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        return True


def _clean_temps(cache: Cache, now: float) -> int:
    """Dead writers' temp files, and resumable downloads nobody resumed for a day."""
    removed = cache.clean_dead_temps()
    folder = cache.base / "tmp"
    for path in folder.glob("*.resume") if folder.is_dir() else []:
        lock = cache.base / "locks" / f"{path.name.removesuffix('.resume')}.lock"
        with locks.try_exclusive(lock) as free, contextlib.suppress(FileNotFoundError):
            if free and now - path.stat().st_mtime > STALE_RESUME_SECONDS:
                path.unlink()
                path.with_suffix(".state").unlink(missing_ok=True)
                removed += 1
    return removed


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?", re.IGNORECASE)
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
MAX_SIZE = 1 << 62  # far beyond any disk; keeps the arithmetic exact
MAX_AGE = 100 * 365 * 86400.0


def parse_size(text: str) -> int:
    """'500M', '20G', '1.5T', '1048576' → bytes (binary units); ValueError otherwise.

    No sign, no exponent, no inf/nan: a value that is not a plain size must not turn into
    "delete everything" (a negative bound) or a crash (1e999)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--max-size {text!r}: expected a size such as 500M, 20G or 1.5T")
    size = float(match.group(1)) * SIZE_UNITS[match.group(2).upper()]
    if size > MAX_SIZE:  # inf included
        raise ValueError(f"--max-size {text!r} is too large")
    return int(size)


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '90s', '2w' → seconds; a unit is required (ValueError)."""
    match = _AGE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--max-age {text!r}: expected a number and a unit, e.g. 7d or 12h")
    age = float(match.group(1)) * AGE_UNITS[match.group(2).lower()]
    if age > MAX_AGE:
        raise ValueError(f"--max-age {text!r} is too large")
    return age


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
