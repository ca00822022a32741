"""Commands over many references: `cache warm` (stage a list of images into the node
cache, for Slurm prologs and allocations) and `resolve` (pin references to digests, for
job scripts and lock files). Each reference goes through the same pull as `pull`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from registry_client.context import Context
from registry_client.errors import RegistryClientError, UsageError
from registry_client.names import FetcherRef, ImageRef, parse_image_ref, parse_reference
from registry_client.sources import FetchOptions

if TYPE_CHECKING:
    from registry_client.hits import PullResult

MAX_JOBS = 64


def read_reference_list(lines: Iterable[str]) -> list[str]:
    """One reference per line; blank lines and `#` comments skipped; duplicates once."""
    refs: dict[str, None] = {}
    for line in lines:
        text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if text:
            refs.setdefault(text, None)
    return list(refs)


@dataclass
class WarmReport:
    results: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.results)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == "failed"]

    def summary(self) -> str:
        return (
            f"warmed {len(self.results)} image(s): {self.count('downloaded')} downloaded, "
            f"{self.count('cached')} already cached, {self.count('failed')} failed"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "downloaded": self.count("downloaded"),
            "cached": self.count("cached"),
            "failed": self.count("failed"),
        }


def warm(
    ctx: Context, refs: list[str], *, jobs: int = 4, options: FetchOptions | None = None
) -> WarmReport:
    """Pull every reference into the cache, `jobs` at a time; one failure never stops the
    rest. Idempotent: what the cache holds costs one HEAD (or nothing, when pinned)."""
    if not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs {jobs}: expected 1 to {MAX_JOBS}")
    for text in refs:
        parse_reference(text)  # every reference is checked before any download starts

    from registry_client.fetch import pull_any

    def one(text: str) -> dict[str, Any]:
        try:
            ref = parse_reference(text)
            result = _held(ctx, ref) or pull_any(ctx, ref, options=options)
        except RegistryClientError as exc:
            ctx.reporter.warn(f"{text}: {exc.message}")
            return {"ref": text, "status": "failed", "error": exc.message, "exit": exc.exit_code}
        status = "cached" if result.cached else "downloaded"
        ctx.reporter.info(f"{status}: {text} → {result.path}")
        return {"ref": text, "status": status, "path": result.path, "sha256": result.sha256}

    with ThreadPoolExecutor(min(jobs, max(1, len(refs))), thread_name_prefix="rc-warm") as pool:
        return WarmReport(list(pool.map(one, refs)))


def _held(ctx: Context, ref: ImageRef | FetcherRef) -> PullResult | None:
    """A bucket image the cache holds, answered as the console script answers `pull REF`:
    from the cache, or after one HEAD asked without the store's client library
    (hits.light_hit), so that warming a list the node already holds builds no S3 or Swift
    client per image (docs/performance.md, "cache warm"). None: run the full pull."""
    if not isinstance(ref, ImageRef):
        return None
    from registry_client.hits import light_hit, pull_from_cache
    from registry_client.remotes import remote_for, remote_id

    try:
        remote = remote_for(ctx.config, ref)
        rid = remote_id(remote)
        return pull_from_cache(ctx.cache, ref, rid, False) or light_hit(ctx.cache, ref, remote, rid)
    except Exception:  # noqa: BLE001 - the full pull runs again and reports it its own way
        return None


def resolve(ctx: Context, texts: list[str]) -> list[dict[str, Any]]:
    """Each bucket reference with the digest the store holds for it now (REF@sha256:HEX).

    The sha256 comes from the object's metadata (one HEAD); an object another tool wrote
    without it is pulled, verified against its ETag and hashed, so the pin is always the
    sha256 of bytes that were checked. A reference that already has a digest must still
    hold it (exit 4 otherwise)."""
    refs = [_bucket_ref(text) for text in texts]
    return [_resolve_one(ctx, ref) for ref in refs]


def _bucket_ref(text: str) -> ImageRef:
    parsed = parse_reference(text)
    if isinstance(parsed, FetcherRef):
        raise UsageError(
            f"resolve pins bucket references, not {parsed.scheme}://",
            hint="copy it into a bucket first (`registry-client copy`), then resolve that",
        )
    return parse_image_ref(text)


def _resolve_one(ctx: Context, ref: ImageRef) -> dict[str, Any]:
    from registry_client.errors import IntegrityError
    from registry_client.remotes import open_remote, remote_for
    from registry_client.service import pull, stat_image

    backend = open_remote(remote_for(ctx.config, ref))
    with contextlib.closing(backend):
        info = stat_image(backend, ref)
    sha = info.sha256 or pull(ctx, replace(ref, digest=None)).sha256
    if ref.digest and ref.digest != sha:
        raise IntegrityError(
            f"{ref.short} now holds sha256:{sha}, not the pinned digest",
            hint="resolve the reference without @sha256 to pin the current image",
        )
    pinned = replace(ref, digest=sha)
    return {"ref": str(replace(ref, digest=None)), "pinned": str(pinned), "sha256": sha}
