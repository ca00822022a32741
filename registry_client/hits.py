"""Pulls answered from the node cache alone: no remote, no backend, no network — or,
by tag, after one HEAD asked without the store's client library (`light_hit`).

Both the full pull (registry_client.service, registry_client.fetch) and the console
script's fast path (registry_client.entry) answer cache hits here, so a hit behaves the
same whichever way it came; `cache warm` (registry_client.batch) asks `light_hit` first
for each image, as the console script does for a pull. This module is on the fast path,
where every import counts (a hit takes about as long as `import typer`): keep heavy
imports out of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry_client.backends.base import ObjectInfo
    from registry_client.cache import Cache
    from registry_client.config import RemoteConfig
    from registry_client.names import ImageRef


@dataclass(frozen=True)
class PullResult:
    ref: str
    path: str
    sha256: str
    size: int
    cached: bool
    verified: tuple[str, ...] = ()
    resumed_bytes: int = 0
    stale: bool = False  # answered from the cache because the store was unreachable

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "cached": self.cached,
            "verified": list(self.verified),
            "resumed_bytes": self.resumed_bytes,
            "stale": self.stale,
        }


def pinned_key(ref: ImageRef, sha256: str) -> str:
    """The record (beside the tag's own) saying this node saw REF with this digest."""
    return f"{ref.tag}@sha256:{sha256}"


def pull_from_cache(cache: Cache, ref: ImageRef, rid: str, offline: bool) -> PullResult | None:
    """A digest-pinned pull, or an --offline one by the tag's last recorded digest.

    A pinned pull answers without network only where this node has seen the reference
    with that digest (its pull recorded it), so that a job script behaves the same on
    every node: elsewhere it costs one HEAD, which checks the name still has that digest.
    --offline asks for the cache alone: there the digest is enough.
    `rid` is the remote's id (remotes.remote_id), under which tags are recorded.
    None when the image is not cached (or nothing pins it): the caller asks the remote.
    """
    sha, size = ref.digest, None
    if sha is not None and not offline:
        seen = cache.resolve_ref(rid, ref.collection, ref.name, pinned_key(ref, sha))
        sha, size = (sha, record_size(seen)) if seen else (None, None)
    if sha is None and offline:
        record = cache.resolve_ref(rid, ref.collection, ref.name, ref.tag) or {}
        sha, size = record.get("sha256"), record_size(record)
    return cache_hit(cache, str(ref), sha, size)


def cache_hit(
    cache: Cache, label: str, sha: str | None, size: int | None = None
) -> PullResult | None:
    """The cached image with this sha256 as a pull result, its use recorded; or None.

    Only a file the cache trusts is a hit (a regular file of the user, root or a trusted
    user that nobody else may write; in a shared cache another member's image is copied
    and re-hashed first) and, when the server just reported a size, of that size."""
    with cache.using(sha):  # `cache prune` leaves it alone while we hand it out
        entry = cache.lookup_entry(sha, size)
        if entry is None:
            return None
        return PullResult(label, str(entry.path), entry.sha256, entry.size, True, ("cache",))


def record_size(record: dict[str, Any]) -> int | None:
    """The size a tag record (or a source's version record) holds, if it is a sane one."""
    size = record.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def version_hit(cache: Cache, ref: ImageRef, rid: str, info: ObjectInfo) -> PullResult | None:
    """The image a store just described (its HEAD: `info`) answered from the cache: by the
    sha256 in its metadata (or the pinned digest), else by the sha256 a pull of this very
    object version (key, ETag, size) recorded. On a hit the tag's records are updated as
    a download's are. The full pull (service) and the console script's light HEAD
    (entry, backends.light) both answer here."""
    version = (rid, info.key, info.etag or "", str(info.size))
    sha = info.sha256 or ref.digest or cache.resolve_etag(*version)
    hit = cache_hit(cache, str(ref), sha, info.size)
    if hit is not None:
        record_ref(cache, ref, rid, info, hit.sha256)
    return hit


def light_hit(cache: Cache, ref: ImageRef, remote: RemoteConfig, rid: str) -> PullResult | None:
    """A pull by tag (or by a digest this node has not seen with the tag) of an image the
    cache holds: what service.pull does up to its cache hit — one HEAD, then the hit by
    sha256 or by the object version's recorded sha256 — with the HEAD asked without the
    store's client library (backends.light). None for anything else: a miss, a HEAD the
    light path does not do, a tag that holds another image now; the caller then runs the
    full pull, whose errors and warnings are its own."""
    from registry_client.backends.light import stat_image
    from registry_client.names import IMAGE_SUFFIXES

    info = stat_image(remote, [ref.key(suffix) for suffix in IMAGE_SUFFIXES])
    if info is None or info.ignored:
        return None
    if ref.digest and info.sha256 and ref.digest != info.sha256:
        return None  # the tag holds another image now: the full pull's error says so
    return version_hit(cache, ref, rid, info)


def record_ref(cache: Cache, ref: ImageRef, rid: str, info: ObjectInfo, sha: str) -> None:
    """What the tag resolved to (for --offline and stale answers), and that this node saw
    the reference with this digest (for pinned pulls without network: pull_from_cache)."""
    import time

    record = {
        "ref": str(ref),
        "sha256": sha,
        "etag": info.etag,
        "size": info.size,
        "key": info.key,
        "pulled": time.time(),
    }
    cache.record_ref(rid, ref.collection, ref.name, ref.tag, record)
    cache.record_ref(rid, ref.collection, ref.name, pinned_key(ref, sha), record)
