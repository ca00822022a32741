"""Pulls from other registries (docker://, library://, shub://) into the same cache.

The rules of a bucket pull (service.pull) hold for every source, through the same acquire
pipeline (registry_client.acquire):

    resolve (one metadata request) → cache hit? → lock → resume or produce into a cache
    temp file → verify → publish by sha256 → remember (version → sha256, tag → sha256)

Each source (registry_client.sources) sits behind the small `Source` interface: it names
the content upstream (`Version.key`: library hash, Hub md5, docker manifest digest), and
says how the image is made on a miss (`producer`: a verified download, resumable, or a
SIF built from verified docker layers). Locks, temp files, resume state, verification,
publishing and the version records are the pipeline's; the tag records are kept here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

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
    from registry_client.acquire import Wanted, acquire

    version = source.resolve()
    wanted = Wanted(
        source.text, version.key, version.aliases, version.sha256, record_size(version.record)
    )
    got = acquire(ctx, wanted, lambda: source.producer(ctx, version), force=force)
    _remember(ctx, source, version, got.sha256)
    return PullResult(
        source.text, str(got.path), got.sha256, got.size, got.cached, got.checks, got.resumed
    )


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
