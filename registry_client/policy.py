"""The node cache's policy, applied by the pull flow at two points and nowhere else:

- after_publish: `[cache] max_size` trims the cache by least-recent use after a download
  published a new image (maintenance.prune_cache: an image a running pull holds is never
  removed, nor the one just published);
- answer_when_unreachable: when the store cannot be reached (after the retries), a pull by
  tag answers from the cache with a warning — `[cache] stale_if_error`, on by default — so
  an outage of the store does not fail every queued job on nodes that hold the image.
"""

from __future__ import annotations

import time
from typing import Any

from registry_client.context import Context
from registry_client.errors import RemoteUnavailable
from registry_client.hits import PullResult, cache_hit, record_size
from registry_client.names import ImageRef


def _cache_options(ctx: Context) -> dict[str, Any]:
    table = ctx.config.settings.get("cache")
    return table if isinstance(table, dict) else {}


def max_size(ctx: Context) -> int | None:
    """`[cache] max_size` in bytes (a size such as "200G", or an integer), or None."""
    value = _cache_options(ctx).get("max_size")
    if value is None:
        return None
    if isinstance(value, int):
        return value
    from registry_client.units import parse_size

    return parse_size(str(value))  # checked when the config was read


def after_publish(ctx: Context, sha256: str) -> None:
    """Trim the cache to `[cache] max_size`, keeping the image just published."""
    limit = max_size(ctx)
    if limit is None:
        return
    from registry_client.maintenance import prune_cache

    with ctx.cache.using(sha256):  # in use: prune skips it, even if it alone is too big
        report = prune_cache(ctx.cache, max_size=limit)
    if report.removed:
        ctx.reporter.info(
            f"cache over max_size: removed {len(report.removed)} least recently used "
            f"image(s), {report.freed / 2**20:.0f} MiB"
        )
    total = sum(e.size for e in ctx.cache.entries())
    if total > limit:
        ctx.reporter.warn(
            f"the cache holds {total / 2**20:.0f} MiB, over max_size "
            f"{limit / 2**20:.0f} MiB: the rest is in use"
        )


def answer_when_unreachable(
    ctx: Context, ref: ImageRef, rid: str, error: RemoteUnavailable
) -> PullResult:
    """The cached image of a tag, with a warning, when the store is unreachable; else
    `error`, saying whether the node holds a copy and what --offline would do."""
    if not error.retryable:  # the object changed under us: not an outage
        raise error
    record = None if ref.digest else ctx.cache.resolve_ref(rid, ref.collection, ref.name, ref.tag)
    hit = (
        cache_hit(ctx.cache, str(ref), record.get("sha256"), record_size(record))
        if record
        else None
    )
    if hit is None:
        what = "a pinned reference is never answered stale" if ref.digest else "no cached copy"
        error.message = f"{error.message}; {ref} is not in this node's cache ({what})"
        error.hint = "retry when the store is back; `pull --offline` answers from the cache only"
        raise error
    if _cache_options(ctx).get("stale_if_error", True) is not True:
        error.hint = (
            f"this node has a copy of {ref} (pulled before): `pull --offline` uses it; "
            "[cache] stale_if_error = true would answer with it"
        )
        raise error
    assert record is not None
    pulled = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(record.get("pulled", 0))))
    ctx.reporter.warn(
        f"the store is unreachable ({error.message}); answering {ref} from this node's "
        f"cache: sha256:{hit.sha256[:12]}, pulled {pulled}, may be out of date"
    )
    return PullResult(hit.ref, hit.path, hit.sha256, hit.size, True, hit.verified, 0, True)
