"""What the commands do: resolve, then the image through the acquire pipeline
(registry_client.acquire: cache hit | lock → resume or download → verify → publish).

The data path reads top-down: CLI → this module → backend (behind the retry wrapper) →
transfer → cache. Nothing here prints; a Reporter carries progress and warnings.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_client import __version__, policy
from registry_client.backends.base import Backend, EtagPlan, ObjectInfo
from registry_client.cache import raise_for_os_error
from registry_client.config import Config
from registry_client.context import Context
from registry_client.errors import (
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
    UnverifiableError,
    UsageError,
)
from registry_client.hits import PullResult, pull_from_cache, record_ref
from registry_client.names import IMAGE_SUFFIXES, ImageRef
from registry_client.remotes import open_remote, remote_for, remote_id
from registry_client.reporting import Reporter

if TYPE_CHECKING:
    from collections.abc import Callable

    from registry_client.acquire import Producer
    from registry_client.digests import DigestResult

LAYOUT_VERSION = "1"
MiB = 1024 * 1024
PULL_RESTARTS = 3  # fresh stat + download when the object changes under us


# -- pull ---------------------------------------------------------------------------


def pull(
    ctx: Context,
    ref: ImageRef,
    *,
    output: str | None = None,
    force: bool = False,
    offline: bool = False,
) -> PullResult:
    remote = remote_for(ctx.config, ref)
    rid = remote_id(remote)
    result = None if force else pull_from_cache(ctx.cache, ref, rid, offline)
    if result is None:
        if offline:
            raise NotFound(f"{ref} is not in the cache", hint="pull it once without --offline")
        from registry_client.fleet import fleet_settings

        start = time.monotonic()
        try:
            backend = open_remote(remote, fleet=fleet_settings(ctx.config, remote))
            try:
                result = _pull_remote(ctx, backend, ref, rid, force)
            except NotFound as exc:
                raise explain_missing(backend, ref, exc, remote.name) from None
            finally:
                backend.close()
        except RemoteUnavailable as exc:
            result = policy.answer_when_unreachable(ctx, ref, rid, exc)
        if not result.cached:
            _log_download(result, time.monotonic() - start)
    if output:
        result = place_output(result, output)
    return result


def _log_download(result: PullResult, seconds: float) -> None:
    import logging

    fetched = result.size - result.resumed_bytes
    logging.getLogger("registry_client.service").info(
        "pulled %s: %d bytes (%d resumed) in %.2f s, %.1f MB/s; verified %s",
        result.ref,
        fetched,
        result.resumed_bytes,
        seconds,
        fetched / MiB / max(seconds, 1e-6),
        ", ".join(result.verified),
    )


def _pull_remote(
    ctx: Context, backend: Backend, ref: ImageRef, rid: str, force: bool
) -> PullResult:
    for attempt in range(PULL_RESTARTS):
        try:
            return _pull_once(ctx, backend, ref, rid, force)
        except ObjectChanged:
            if attempt + 1 == PULL_RESTARTS:
                raise
            ctx.reporter.warn(f"{ref} changed during the download; starting again")
    raise AssertionError("unreachable")


NEAR_MISS_SCAN = 2000  # keys of the collection read to suggest a name or tag


def explain_missing(backend: Backend, ref: ImageRef, error: NotFound, remote: str) -> NotFound:
    """`error` with a hint: near-miss names and tags in the collection, and the `ls` that
    lists it. Only on the error path, with one bounded listing."""
    import difflib
    import itertools

    from registry_client.names import ref_from_key

    listing = ls_target(ref, remote)
    try:
        keys = itertools.islice(backend.list(f"{ref.prefix}{ref.collection}/"), NEAR_MISS_SCAN)
        prefix = len(ref.prefix)
        known = sorted(
            {r.short for info in keys if (r := ref_from_key(info.key[prefix:])) is not None}
        )
    except RegistryClientError:
        known = []
    tags = [
        k.partition(":")[2] for k in known if k.partition(":")[0] == ref.short.partition(":")[0]
    ]
    close = difflib.get_close_matches(ref.short, known, n=3, cutoff=0.75)
    if tags:
        hint = f"{ref.collection}/{ref.name} has the tags {', '.join(tags[:10])}"
    elif close:
        hint = f"did you mean {' or '.join(close)}"
    else:
        hint = f"no image like it in {ref.collection}/"
    error.hint = f"{hint} (list them: registry-client ls {listing})"
    return error


def ls_target(ref: ImageRef, remote: str) -> str:
    """What to give `ls` to list the collection of `ref` in the remote named `remote`."""
    if ref.scheme:
        return f"{ref.scheme}://{ref.location}/{ref.prefix}{ref.collection}"
    return f"{remote}:{ref.collection}"


def stat_image(backend: Backend, ref: ImageRef) -> ObjectInfo:
    """HEAD the image, under .sif or (buckets sregistry-cli filled) .simg."""
    for suffix in IMAGE_SUFFIXES:
        with contextlib.suppress(NotFound):
            return backend.stat(ref.key(suffix))
    raise NotFound(f"{ref} not found in {backend.location}")


def _pull_once(ctx: Context, backend: Backend, ref: ImageRef, rid: str, force: bool) -> PullResult:
    from registry_client.acquire import Wanted, acquire

    info = stat_image(backend, ref)
    for note in info.ignored:
        ctx.reporter.warn(f"{info.key}: {note}")
    expected = _expected_sha(ref, info)
    wanted = Wanted(
        str(ref), (rid, info.key, info.etag or "", str(info.size)), (), expected, info.size
    )
    got = acquire(ctx, wanted, lambda: bucket_download(backend, info, expected), force=force)
    record_ref(ctx.cache, ref, rid, info, got.sha256)
    return PullResult(
        str(ref), str(got.path), got.sha256, got.size, got.cached, got.checks, got.resumed
    )


def bucket_download(backend: Backend, info: ObjectInfo, expected: str | None) -> Producer:
    """How a bucket object is fetched on a miss: ranged reads checked against its size,
    its ETag (the backend's plan) and the sha256 it should have."""
    from registry_client.acquire import Download
    from registry_client.verify import object_expect

    plan = backend.etag_plan(info)
    _check_verifiable(info, plan, expected)
    return Download(backend, info, object_expect(info, plan, expected))


def _expected_sha(ref: ImageRef, info: ObjectInfo) -> str | None:
    if ref.digest and info.sha256 and ref.digest != info.sha256:
        raise IntegrityError(
            f"{ref.short} now holds sha256:{info.sha256}, not the pinned digest",
            hint="pull the tag without @sha256 to get the current image",
        )
    return info.sha256 or ref.digest


def _check_verifiable(info: ObjectInfo, plan: EtagPlan, expected: str | None) -> None:
    """Before any byte is fetched: an object whose metadata or ETag had to be ignored as
    invalid must still have a checksum to be verified by, or it is not pulled (exit 4).
    (Objects of other tools that simply have no md5 ETag stay pullable, with a warning.)"""
    if plan.verifiable or expected:
        return
    if plan.impossible or info.ignored:
        why = plan.description if plan.impossible else info.ignored[0]
        raise UnverifiableError(
            f"{info.key}: {why}, and no other checksum is left to verify the image by; "
            "nothing was downloaded",
            hint="push the image again, or ask the store's operator to check it",
        )


def place_output(result: PullResult, output: str) -> PullResult:
    """Put a copy of the image at OUTPUT atomically: a reflink where the filesystem shares
    blocks, else a full copy. Never a link to the cached file: writing to OUTPUT must not
    change the cache."""
    dest = Path(output).absolute()
    if dest.is_dir():
        raise UsageError(f"-o {output}: is a directory", hint="give a file name")
    try:
        _copy_atomic(Path(result.path), dest, result.size)
    except OSError as exc:
        raise raise_for_os_error(exc, f"writing {dest}") from None
    return PullResult(
        result.ref,
        str(dest),
        result.sha256,
        result.size,
        result.cached,
        result.verified,
        result.resumed_bytes,
    )


def _copy_atomic(src: Path, dest: Path, size: int) -> None:
    """Copy into a new, unguessable temp name beside dest (O_EXCL: never through a planted
    symlink), then rename it over dest."""
    import secrets

    from registry_client.safefs import NEW_FLAGS, READ_FLAGS, clone_or_copy, unlink_at

    folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f".{dest.name}.{os.getpid()}.{secrets.token_hex(8)}.partial"
    try:
        out = os.open(tmp, NEW_FLAGS, 0o644, dir_fd=folder)
        try:
            # src: the checked path of a trusted cache file (see docs/security.md); its
            # last name is opened without following a symlink.
            source = os.open(src, READ_FLAGS)
            try:
                if not stat.S_ISREG(os.fstat(source).st_mode):
                    raise OSError(f"{src}: not a regular file")
                clone_or_copy(source, out)
            finally:
                os.close(source)
            if os.fstat(out).st_size != size:
                raise OSError(f"{dest}: the copy is not {size} bytes")
            os.fchmod(out, 0o444)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, dest.name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        unlink_at(folder, tmp)
        raise
    finally:
        os.close(folder)


# -- cache import ---------------------------------------------------------------------


def import_file(ctx: Context, file: str, ref: ImageRef) -> PullResult:
    """Publish a copy of FILE as REF, verified against the remote as a pull would verify
    it: the no-cache-server way to fan an image out (Slurm's sbcast, a parallel file
    system, pdcp), docs/fleet.md. Only the HEAD goes to the store."""
    from registry_client.acquire import CopyIn, Wanted, acquire
    from registry_client.verify import object_expect

    size = _check_push_file(file)
    remote = remote_for(ctx.config, ref)
    rid = remote_id(remote)
    backend = open_remote(remote)
    try:
        info = stat_image(backend, ref)
        expected = _expected_sha(ref, info)
        version = (rid, info.key, info.etag or "", str(info.size))

        def copy_in() -> Producer:
            if size != info.size:
                raise IntegrityError(f"{file} has {size} bytes, {ref} has {info.size}")
            # A file of the right size proves nothing (it may be another user's): a
            # checkable ETag or sha256 must vouch for it (strong).
            return CopyIn(file, object_expect(info, backend.etag_plan(info), expected))

        got = acquire(ctx, Wanted(str(ref), version, (), expected, info.size), copy_in)
    finally:
        backend.close()
    record_ref(ctx.cache, ref, rid, info, got.sha256)
    return PullResult(str(ref), str(got.path), got.sha256, got.size, got.cached, got.checks)


# -- push ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    ref: str
    sha256: str
    size: int
    key: str
    location: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "sha256": self.sha256,
            "size": self.size,
            "key": self.key,
            "remote": self.location,
        }


def push(
    ctx: Context,
    file: str,
    ref: ImageRef,
    *,
    labels: dict[str, str] | None = None,
    strict: bool = False,
) -> PushResult:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    size = _check_push_file(file)
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="rc-sha256") as pool:
        # sha256 starts first and runs beside everything else: reading the SIF header,
        # opening the remote (botocore's import and client take ~0.2 s) and the upload.
        # Backends that write metadata last (Swift's manifest, the file backend's
        # sidecar) wait for it only then; S3 needs it before the first part.
        hashing = pool.submit(_hash_push_file, file, stop)
        try:
            arch = _sif_arch(file, strict, ctx.reporter)

            def metadata() -> dict[str, str]:
                digest = hashing.result()
                if ref.digest and ref.digest != digest.sha256:
                    raise IntegrityError(
                        f"{file} has sha256:{digest.sha256}, not the digest in {ref}"
                    )
                return build_metadata(digest, ctx.part_size, arch, labels or {})

            key, location = _upload(ctx, file, ref, size, metadata)
        finally:
            stop.set()  # a failed push need not wait for the whole file to be hashed
        digest = hashing.result()
    return PushResult(str(ref), digest.sha256, size, key, location)


def _upload(
    ctx: Context, file: str, ref: ImageRef, size: int, metadata: Callable[[], dict[str, str]]
) -> tuple[str, str]:
    remote = remote_for(ctx.config, ref)
    _note_local_remote(ctx, remote)
    backend = open_remote(remote)
    try:
        with ctx.reporter.progress(f"push {ref.short}", size) as advance:
            info = backend.put(
                ref.key(),
                file,
                metadata,
                part_size=ctx.part_size,
                concurrency=ctx.push_concurrency,
                progress=advance,
            )
    finally:
        backend.close()
    return info.key, backend.location


#: Variables that say a job meant to use a cloud store.
CLOUD_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "OS_AUTH_URL",
    "OS_STORAGE_URL",
    "ST_AUTH",
)


def _note_local_remote(ctx: Context, remote: Any) -> None:
    """Pushing to the built-in `local` remote (a folder, not a bucket) is rarely what a CI
    job with AWS_* variables meant: say so on stderr, and why."""
    from registry_client.config import LOCAL_REMOTE

    if remote.name != LOCAL_REMOTE or remote.source:
        return
    aws = [v for v in CLOUD_VARIABLES if os.environ.get(v)]
    why = (
        f" ({', '.join(aws[:3])}{'…' if len(aws) > 3 else ''} only apply to s3:// or swift:// "
        "URLs and configured remotes)"
        if aws
        else ""
    )
    ctx.reporter.warn(
        f"pushing to the built-in local remote, the folder {remote.location}: no remote is "
        f"configured{why}; use `registry-client remote add NAME s3://BUCKET --default` "
        "or a URL such as s3://BUCKET/COLLECTION/NAME:TAG"
    )


def _check_push_file(file: str) -> int:
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise NotFound(f"{file}: no such file") from None
    except OSError as exc:
        raise raise_for_os_error(exc, file) from None
    if not os.path.isfile(file):
        raise UsageError(f"{file}: not a regular file")
    if st.st_size == 0:
        raise UsageError(f"{file} is empty", hint="check that the image build succeeded")
    return st.st_size


def _sif_arch(file: str, strict: bool, reporter: Reporter) -> str:
    from registry_client import sif

    try:
        return sif.read_sif(file).primary_arch() or "unknown"
    except (sif.SifError, OSError) as exc:
        if strict:
            raise UsageError(
                f"{file} is not a SIF image ({exc})", hint="drop --strict to push it anyway"
            ) from None
        reporter.warn(f"{file} is not a SIF image ({exc}); pushing it anyway")
        return "unknown"


def _hash_push_file(file: str, stop: Any) -> DigestResult:
    from registry_client.digests import hash_file

    try:
        return hash_file(file, stop=stop)
    except OSError as exc:
        raise raise_for_os_error(exc, f"reading {file}") from None


def build_metadata(
    digest: DigestResult, part_size: int, arch: str, labels: dict[str, str]
) -> dict[str, str]:
    """Object metadata (docs/bucket-layout.md); S3 and Swift cap its size, so stay small."""
    meta = {
        "sha256": digest.sha256,
        "size": str(digest.size),
        "part-size": str(part_size),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": arch,
        "layout": LAYOUT_VERSION,
        "tool": f"registry-client/{__version__}",
    }
    if labels:
        text = json.dumps(labels, sort_keys=True, separators=(",", ":"))
        if len(text) > 256 or not text.isascii():
            raise UsageError("labels too long or not ASCII (at most 256 bytes of JSON)")
        meta["labels"] = text
    return meta


# -- list, rm, tag --------------------------------------------------------------------


def image_record(info: ObjectInfo, ref: ImageRef) -> dict[str, Any]:
    labels = _labels(info.metadata.get("labels"))
    pushed = info.metadata.get("created") or (info.modified.isoformat() if info.modified else None)
    return {
        "ref": str(ref),
        "size": info.size,
        "digest": f"sha256:{info.sha256}" if info.sha256 else None,
        "pushed": pushed,
        "etag": info.etag,
        "arch": info.metadata.get("arch"),
        "labels": labels or {},
    }


def _labels(text: str | None) -> dict[str, str]:
    """The labels metadata (a flat JSON object of strings, as push writes it); anything
    else another tool or a store put there is ignored."""
    try:
        labels = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if isinstance(v, str)}


def list_remote(config: Config, target: str | None) -> list[dict[str, Any]]:
    """`ls`: the images of REMOTE, REMOTE:COLLECTION or a bucket URL (default remote if None)."""
    from registry_client.remotes import ls_targets

    records: list[dict[str, Any]] = []
    for remote, prefix, url in ls_targets(config, target):
        backend = open_remote(remote)
        try:
            name = None if remote.name == config.default_remote and not target else remote.name
            records = list_images(backend, prefix, name if not url else None)
        finally:
            backend.close()
        if records:
            for record in records:  # a URL listing gives URLs, to pull as they are
                record["ref"] = f"{url}{record['ref']}" if url else record["ref"]
            break
    return records


def list_images(backend: Backend, prefix: str, remote_name: str | None) -> list[dict[str, Any]]:
    from registry_client.names import ref_from_key

    found = [
        (info, ref)
        for info in backend.list(prefix)
        if (ref := ref_from_key(info.key, remote=remote_name)) is not None
    ]
    infos = backend.limiter.map(lambda pair: _stat_or(backend, pair[0]), found)
    return [image_record(info, ref) for info, (_, ref) in zip(infos, found, strict=True)]


def _stat_or(backend: Backend, info: ObjectInfo) -> ObjectInfo:
    try:
        return backend.stat(info.key)
    except RegistryClientError:
        return info  # listed but gone, or unreadable metadata: show what the listing had


def remove(ctx: Context, ref: ImageRef, *, dry_run: bool = False) -> str:
    """Delete the image's object (and segments); with dry_run only check it is there."""
    remote = remote_for(ctx.config, ref)
    backend = open_remote(remote)
    try:
        try:
            info = stat_image(backend, ref)
        except NotFound as exc:
            raise explain_missing(backend, ref, exc, remote.name) from None
        if ref.digest and info.sha256 and info.sha256 != ref.digest:
            raise NotFound(f"{ref.short} does not hold sha256:{ref.digest}")
        if not dry_run:
            backend.delete(info.key)
        return info.key
    finally:
        backend.close()


def tag(ctx: Context, src: ImageRef, dst: ImageRef) -> dict[str, Any]:
    remote = remote_for(ctx.config, src)
    if remote_id(remote_for(ctx.config, dst)) != remote_id(remote):
        raise UsageError("tag works within one remote", hint="use `registry-client copy`")
    backend = open_remote(remote)
    try:
        try:
            info = stat_image(backend, src)
        except NotFound as exc:
            raise explain_missing(backend, src, exc, remote.name) from None
        new = backend.copy(info.key, dst.key())
        return image_record(new, dst)
    finally:
        backend.close()
