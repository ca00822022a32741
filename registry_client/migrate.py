"""`migrate SRC_REMOTE DST_REMOTE` and bucket-side `search`.

Migration copies every image of one remote (or one collection of it) to another, verified
end to end: each image is pulled into the node cache (size, ETag, sha256 checked), pushed
(the server checks every part's md5; we check the final ETag), and the destination's
recorded sha256 is read back. Images the destination already holds with the same sha256
are skipped without downloading, so an interrupted migration can simply be run again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from registry_client.backends.base import Backend, ObjectInfo
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.errors import IntegrityError, NotFound, RegistryClientError
from registry_client.names import ImageRef, ref_from_key
from registry_client.remotes import open_remote, parse_remote_target
from registry_client.service import pull, push, stat_image


def _images(backend: Backend, prefix: str) -> Iterator[tuple[ObjectInfo, ImageRef]]:
    for info in backend.list(prefix):
        ref = ref_from_key(info.key)
        if ref is not None:
            yield info, ref


def _stat_or_listed(backend: Backend, info: ObjectInfo) -> ObjectInfo:
    try:
        return backend.stat(info.key)
    except RegistryClientError:
        return info  # gone since the listing, or unreadable: what the listing said


def _sha_at(backend: Backend, ref: ImageRef) -> str | None:
    try:
        return stat_image(backend, ref).sha256
    except NotFound:
        return None


def _as_ref(remote: RemoteConfig, ref: ImageRef) -> ImageRef:
    """The reference of `ref` in `remote`, named or direct."""
    if ":" not in remote.name:  # a configured remote
        return replace(ref, remote=remote.name)
    scheme, _, location = remote.name.partition(":")
    return replace(ref, scheme=scheme, location=location, prefix=remote.prefix)


def migrate(ctx: Context, src: str, dst: str) -> list[dict[str, Any]]:
    """Copy every image of SRC (REMOTE[:COLLECTION] or URL) into DST (REMOTE or URL)."""
    src_remote, prefix = parse_remote_target(ctx.config, src)
    dst_remote, _ = parse_remote_target(ctx.config, dst)
    source, target = open_remote(src_remote), open_remote(dst_remote)
    try:
        return [
            _migrate_one(ctx, target, src_remote, dst_remote, info, ref)
            for info, ref in list(_images(source, prefix))
        ]
    finally:
        source.close()
        target.close()


def _migrate_one(
    ctx: Context,
    target: Backend,
    src_remote: RemoteConfig,
    dst_remote: RemoteConfig,
    info: ObjectInfo,
    ref: ImageRef,
) -> dict[str, Any]:
    src_ref, dst_ref = _as_ref(src_remote, ref), _as_ref(dst_remote, ref)
    row: dict[str, Any] = {"ref": ref.short, "size": info.size}
    known = info.sha256 or (info.metadata and info.metadata.get("sha256"))
    present = _sha_at(target, ref)
    if known and present == known:
        ctx.reporter.info(f"{ref.short}: already in {dst_remote.name}")
        return {**row, "sha256": known, "status": "skipped"}
    pulled = pull(ctx, src_ref)
    if present == pulled.sha256:
        return {**row, "sha256": pulled.sha256, "status": "skipped"}
    labels = {"migrated-from": src_remote.name[:100]}
    push(ctx, pulled.path, dst_ref, labels=labels)
    if _sha_at(target, ref) != pulled.sha256:
        raise IntegrityError(f"{dst_ref}: the destination does not hold sha256:{pulled.sha256}")
    ctx.reporter.info(f"{ref.short}: copied ({pulled.size} bytes)")
    return {**row, "sha256": pulled.sha256, "status": "copied"}


def search_remotes(ctx: Context, query: str) -> list[dict[str, Any]]:
    """Images whose COLLECTION/NAME:TAG contains QUERY, in every configured remote."""
    rows: list[dict[str, Any]] = []
    remotes = dict(ctx.config.remotes)
    remotes.setdefault(ctx.config.default_remote, ctx.config.remote(None))
    for name, remote in sorted(remotes.items()):
        try:
            backend = open_remote(remote)
            try:
                found = [(i, r) for i, r in _images(backend, "") if query.lower() in r.short]
                # Only the matches are stat'ed: their metadata has arch and the digest.
                stat = functools.partial(_stat_or_listed, backend)
                infos = backend.limiter.map(stat, [info for info, _ in found])
                rows += [
                    {
                        "ref": f"{name}:{ref.short}",
                        "size": info.size,
                        "remote": name,
                        "arch": info.metadata.get("arch"),
                        "digest": f"sha256:{info.sha256}" if info.sha256 else None,
                    }
                    for info, (_, ref) in zip(infos, found, strict=True)
                ]
            finally:
                backend.close()
        except RegistryClientError as exc:
            ctx.reporter.warn(f"search: remote {name} skipped: {exc.message}")
    return rows
