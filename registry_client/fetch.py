"""Pulls from other registries (docker://, library://, shub://) into the same cache.

The rules of a bucket pull (service.pull) hold for every source:

    resolve (one metadata request) → cache hit? → lock → produce into a cache temp file
    → verify → publish by sha256 → remember (version → sha256, tag → sha256)

Each source (registry_client.sources) sits behind the small `Source` interface: it names
the content upstream (`Version.key`: library hash, Hub md5, docker manifest digest), and
produces the image file into a temp path (a verified download, or a SIF built from
verified docker layers). Locks, temp files, publishing and the indexes are shared here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_client import policy
from registry_client.cache import raise_for_os_error, short_id
from registry_client.errors import NotFound
from registry_client.hits import PullResult, cache_hit, record_size
from registry_client.names import FetcherRef, ImageRef
from registry_client.sources import FetchOptions, Source, Version, open_source

if TYPE_CHECKING:
    from registry_client.context import Context


# -- the pull -----------------------------------------------------------------------------


def pull_any(
    ctx: Context,
    ref: ImageRef | FetcherRef,
    *,
    output: str | None = None,
    force: bool = False,
    offline: bool = False,
    options: FetchOptions | None = None,
) -> PullResult:
    """`pull`: a bucket image from its remote, anything else from its source."""
    from registry_client import service

    if isinstance(ref, FetcherRef):
        return pull_fetcher(ctx, ref, output=output, force=force, offline=offline, options=options)
    return service.pull(ctx, ref, output=output, force=force, offline=offline)


def pull_fetcher(
    ctx: Context,
    ref: FetcherRef,
    *,
    output: str | None = None,
    force: bool = False,
    offline: bool = False,
    options: FetchOptions | None = None,
) -> PullResult:
    from registry_client.service import place_output

    source = open_source(ctx, ref, options or FetchOptions())
    try:
        result = None if force else _from_cache(ctx, source, offline)
        if result is None:
            if offline:
                raise NotFound(
                    f"{source.text} is not in the cache", hint="pull it once without --offline"
                )
            result = _pull(ctx, source, force)
            if not result.cached:
                policy.after_publish(ctx, result.sha256)
    finally:
        source.close()
    return place_output(result, output) if output else result


def _from_cache(ctx: Context, source: Source, offline: bool) -> PullResult | None:
    """Digest-pinned and offline pulls answered without any network."""
    sha, size = source.pinned(ctx.cache), None
    if sha is None and offline:
        record = ctx.cache.resolve_ref(source.remote_id, *source.slot()) or {}
        sha, size = record.get("sha256"), record_size(record)
    return _hit(ctx, source, sha, size)


def _hit(ctx: Context, source: Source, sha: str | None, size: int | None) -> PullResult | None:
    return cache_hit(ctx.cache, source.text, sha, size)


def _pull(ctx: Context, source: Source, force: bool) -> PullResult:
    version = source.resolve()

    def cached() -> PullResult | None:
        if force:
            return None
        sha = version.sha256 or ctx.cache.resolve_etag(*version.key)
        return _hit(ctx, source, sha, record_size(version.record))

    hit = cached()
    if hit is None:
        with ctx.cache.lock(
            short_id(*version.key),
            on_wait=lambda who: ctx.reporter.info(f"waiting for {who} to pull {source.text}"),
        ):
            hit = cached()
            if hit is None:
                path, sha, checks = _produce(ctx, source, version, force)
                # Recorded before the lock goes, so the pulls waiting for it find the image.
                _remember(ctx, source, version, sha)
                return PullResult(source.text, str(path), sha, path.stat().st_size, False, checks)
    _remember(ctx, source, version, hit.sha256)
    return hit


def _produce(
    ctx: Context, source: Source, version: Version, force: bool
) -> tuple[Path, str, tuple[str, ...]]:
    ctx.cache.clean_dead_temps()
    try:
        with ctx.cache.temp_file(source.scheme) as tmp:
            sha, checks = source.produce(ctx, version, tmp)
            return ctx.cache.publish(tmp, sha, replace=force), sha, checks
    except OSError as exc:
        raise raise_for_os_error(exc, f"pull of {source.text} into {ctx.cache.root}") from None


def _remember(ctx: Context, source: Source, version: Version, sha: str) -> None:
    for key in (version.key, *version.aliases):
        ctx.cache.record_etag(sha, *key)
    ctx.cache.record_ref(
        source.remote_id,
        *source.slot(),
        {"ref": source.text, "sha256": sha, "pulled": time.time(), **version.record},
    )


# -- search ---------------------------------------------------------------------------


def search(ctx: Context, query: str, options: FetchOptions | None = None) -> list[dict[str, Any]]:
    """Images in the Library matching QUERY (the Library API's /v1/search)."""
    from registry_client.retry import retry_call
    from registry_client.sources import library

    options = options or FetchOptions()
    client = library.library_client(ctx, options)
    try:
        found = retry_call(f"library search {query!r}", lambda: client.search(query, options.arch))
    finally:
        client.close()
    return library.search_rows(found)
