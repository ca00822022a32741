"""One image from one store to another, verified: the engine under `migrate` and `copy`.

    stat the source (size, ETag, metadata) → a server-side copy when both sides are one
    store (the copy's ETag must be the source's) → else stream it (relay.py) into a new
    or resumed upload: the source's ETag and sha256 checked before the last part is sent,
    every part checked by the destination (Content-MD5 / ETag), the final ETag checked on
    completion → read back the sha256 the destination recorded.

The node cache is not involved: bytes wait only in the relay's bounded spool.

Metadata travels with the image (docs/bucket-layout.md): every well-formed key the source
holds (ours, and those sregistry-cli writes, e.g. `client`, `sizemb`), the original
`created` date (the source's own, else its last-modified time), the labels with a
`migrated-from` label beside them, and `source-etag` (the source object's ETag), which
lets a later run skip the image from the destination's metadata alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import IO, Any

from registry_client import __version__
from registry_client.backends.base import Backend, EtagPlan, ObjectInfo, Reader, Upload
from registry_client.digests import DigestResult
from registry_client.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    RegistryClientError,
    RemoteUnavailable,
)
from registry_client.names import is_sha256
from registry_client.relay import Lanes, StreamReader, relay
from registry_client.reporting import Reporter
from registry_client.retry import retry_call
from registry_client.service import LAYOUT_VERSION
from registry_client.sources import Download
from registry_client.verify import object_expect, registry_expect, verify

MiB = 1024 * 1024
META_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")  # valid on S3, Swift, Azure, GCS
META_VALUE_MAX = 1024
META_TOTAL_MAX = 2048  # S3's limit for user metadata (keys and values)
LABELS_MAX = 512
ORIGIN_MAX = 100
OUR_KEYS = ("sha256", "size", "part-size", "created", "arch", "labels", "layout", "tool")

Progress = Callable[[int], None]


class DigestNeeded(RegistryClientError):
    """The destination wants the metadata (with the sha256) before the first byte, and
    the source does not record its sha256: it is hashed in a first pass."""


@dataclass
class Sides:
    """What every image copy of one run shares."""

    source: Reader
    target: Backend
    lanes: Lanes
    reporter: Reporter
    part_size: int
    origin: str  # the `migrated-from` label: the source remote's name or URL


@dataclass(frozen=True)
class Copied:
    info: ObjectInfo  # the destination object, as read back
    sha256: str
    how: str  # "streamed", "resumed" or "server-side"
    sent: int  # bytes uploaded
    reused: int  # bytes an interrupted upload already held
    checks: tuple[str, ...]


def recorded_sha256(info: ObjectInfo) -> str | None:
    """The sha256 an object's metadata records, if it is one (remote input: checked)."""
    value = info.sha256
    return value if is_sha256(value) else None


def carry(sides: Sides, info: ObjectInfo, dst_key: str, progress: Progress | None) -> Copied:
    """Copy the source object `info` (from a fresh stat) to `dst_key`, verified."""
    if info.size < 0:
        raise RegistryClientError(f"{info.key}: the source did not say how large it is")
    sha = recorded_sha256(info)
    if sha:
        meta = image_metadata(info, sha, info.part_size or sides.part_size, sides.origin)
        copied = None
        if sides.target.capabilities.copy_from:
            copied = sides.target.copy_from(sides.source, info, dst_key, meta)
        if copied is not None:
            read_back(copied, sha, info.size)
            if progress:
                progress(info.size)
            return Copied(copied, sha, "server-side", 0, 0, ("size", "etag", "sha256"))
    return _stream(sides, info, sha, dst_key, progress)


def copy_within(sides: Sides, done: Copied, src_info: ObjectInfo, dst_key: str) -> Copied | None:
    """Another tag with the same content as `done`: a server-side copy at the destination
    with this tag's own metadata; None when the destination cannot copy verifiably."""
    if not sides.target.capabilities.copy_from:
        return None
    meta = image_metadata(src_info, done.sha256, _part_size_of(done.info), sides.origin)
    copied = sides.target.copy_from(sides.target, done.info, dst_key, meta)
    if copied is None:
        return None
    read_back(copied, done.sha256, done.info.size)
    return Copied(copied, done.sha256, "server-side", 0, 0, ("size", "etag", "sha256"))


def read_back(info: ObjectInfo, sha256: str, size: int) -> None:
    """The destination's own record of what it holds must be what was verified."""
    if info.size != size or recorded_sha256(info) != sha256:
        raise IntegrityError(
            f"{info.key}: the destination records {info.size} bytes, sha256:{info.sha256}; "
            f"expected {size} bytes, sha256:{sha256}"
        )


# -- streaming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """What is streamed: where its bytes come from (a reader opened for each pass over
    them), the object, its ETag plan, and the check of the digests read (IntegrityError
    on a mismatch; the checks made otherwise)."""

    open: Callable[[], Reader]
    info: ObjectInfo
    plan: EtagPlan
    check: Callable[[DigestResult, str | None], tuple[str, ...]]


def bucket_origin(sides: Sides, info: ObjectInfo) -> Origin:
    """An object of the source store, checked as a pull checks it."""
    plan = sides.source.etag_plan(info)

    def check(result: DigestResult, sha: str | None) -> tuple[str, ...]:
        # Part sizes other tools rarely use are tried in a second read only if the common
        # ones fail (a pull hashes its local copy again instead).
        if plan.verifiable and plan.more_schemes and not plan.check(result.segment_md5s):
            again = relay(
                sides.source, info, plan.more_schemes, None, sides.lanes, algorithm=plan.algorithm
            ).digest
            result = DigestResult(result.size, result.sha256, again.segment_md5s)
        return verify(object_expect(info, plan, sha), result, sides.reporter)

    return Origin(lambda: sides.source, info, plan, check)


class _Known:
    """The sha256 once it is known: from the source's metadata, a first pass, or the relay."""

    def __init__(self, sha: str | None) -> None:
        self.sha = sha

    def need(self) -> str:
        if self.sha is None:
            raise DigestNeeded("the sha256 is not known yet")
        return self.sha


def _stream(
    sides: Sides, info: ObjectInfo, sha: str | None, dst_key: str, progress: Progress | None
) -> Copied:
    return stream(sides, bucket_origin(sides, info), sha, dst_key, progress)


def stream(
    sides: Sides, origin: Origin, sha: str | None, dst_key: str, progress: Progress | None
) -> Copied:
    """Relay `origin` into a new or resumed upload of `dst_key`; complete it only once the
    origin's digests matched; read the destination's record back."""
    info, plan = origin.info, origin.plan
    known = _Known(sha)
    try:
        upload, part_size = _open(sides, info, dst_key, plan, known)
    except DigestNeeded:
        # The destination wants the sha256 before the first part (S3's multipart upload)
        # and the source records none: one part (whose metadata goes with it, after
        # every byte was hashed) if the spool can hold the image, else a first read.
        if info.size <= sides.lanes.spool.budget:
            upload, part_size = _open(sides, info, dst_key, plan, known, whole=True)
        else:
            known.sha = first_pass(sides, origin)
            upload, part_size = _open(sides, info, dst_key, plan, known)
    checks: list[tuple[str, ...]] = []

    def check(result: DigestResult) -> None:
        checks.append(origin.check(result, known.sha))
        known.sha = result.sha256

    resumed = bool(upload.stored)
    try:
        relayed = relay(
            origin.open(),
            info,
            plan.schemes,
            upload,
            sides.lanes,
            verify=check,
            stored=upload.stored,
            progress=progress,
            algorithm=plan.algorithm,
        )
        final = retry_call(f"upload {dst_key}", upload.complete, sides.lanes.policy)
    except BaseException:
        upload.abort()
        raise
    sha = known.need()
    try:
        read_back(final, sha, info.size)
    except IntegrityError:
        if not resumed:
            raise
        # An upload resumed across a change of the source kept its first metadata.
        sides.reporter.warn(f"{dst_key}: the resumed upload's metadata was stale; copying anew")
        retry_call(f"delete {dst_key}", lambda: sides.target.delete(dst_key), sides.lanes.policy)
        fresh = Origin(origin.open, replace(info, modified=None), plan, origin.check)
        return stream(sides, fresh, sha, dst_key, progress)
    how = "resumed" if relayed.reused else "streamed"
    return Copied(final, sha, how, relayed.sent, relayed.reused, (*checks[0], "part md5s"))


def _open(
    sides: Sides,
    info: ObjectInfo,
    dst_key: str,
    plan: EtagPlan,
    known: _Known,
    *,
    whole: bool = False,
) -> tuple[Upload, int]:
    """A resumed upload if one fits, else a new one, cut like the source where it can be
    (one md5 pass serves both sides), or in one part (`whole`). The part size goes into
    the metadata, so if the destination cut the object otherwise, the upload is opened
    again with its size."""
    part_size = max(info.size, 1) if whole else _aligned_part_size(plan, info, sides.part_size)
    for _ in range(2):

        def metadata(size: int = part_size) -> dict[str, str]:
            return image_metadata(info, known.need(), size, sides.origin)

        upload = _resume_or_start(sides, info, dst_key, metadata, part_size)
        cut = upload.parts[0][1] if len(upload.parts) > 1 else part_size
        if cut == part_size:
            return upload, part_size
        upload.abort()
        part_size = cut
    raise RegistryClientError(f"{dst_key}: the destination keeps changing its part size")


def _resume_or_start(
    sides: Sides,
    info: ObjectInfo,
    dst_key: str,
    metadata: Callable[[], dict[str, str]],
    part_size: int,
) -> Upload:
    target = sides.target
    if target.capabilities.resume:
        resumed = target.resume_upload(
            dst_key, info.size, metadata, part_size=part_size, since=info.modified
        )
        if resumed is not None:
            return resumed
    return target.start_upload(dst_key, info.size, metadata, part_size=part_size)


def _aligned_part_size(plan: EtagPlan, info: ObjectInfo, default: int) -> int:
    """The source's own segment size when its layout is known exactly and even (all but
    the last the same), and not over twice the configured part size."""
    if len(plan.schemes) != 1 or not plan.schemes[0]:
        return default
    lengths = plan.schemes[0]
    first = lengths[0]
    even = all(n == first for n in lengths[:-1]) and lengths[-1] <= first
    if even and 0 < first <= 2 * default:
        return first
    return default


def source_sha256(sides: Sides, info: ObjectInfo) -> str:
    """Read the source object once to learn its sha256, verified against its ETag."""
    return first_pass(sides, bucket_origin(sides, info))


def first_pass(sides: Sides, origin: Origin) -> str:
    """Read the origin once to learn (and verify) its sha256 before the upload starts."""
    info, plan = origin.info, origin.plan
    sides.reporter.info(f"{info.key}: no sha256 recorded; hashing it before the upload")
    found: list[str] = []

    def check(result: DigestResult) -> None:
        origin.check(result, None)
        found.append(result.sha256)

    relay(
        origin.open(), info, plan.schemes, None, sides.lanes, verify=check, algorithm=plan.algorithm
    )
    return found[0]


def _part_size_of(info: ObjectInfo) -> int:
    return info.part_size or max(info.size, 1)


# -- metadata ---------------------------------------------------------------------------------


def image_metadata(src: ObjectInfo, sha256: str, part_size: int, origin: str) -> dict[str, str]:
    """The destination's metadata: the source's (well-formed keys only: it is remote
    input), our keys set from what was verified, the original push date, and the labels
    with `migrated-from` added."""
    meta = {k: v for k, v in src.metadata.items() if _safe_item(k, v)}
    meta.update({"sha256": sha256, "size": str(src.size), "part-size": str(part_size)})
    meta["created"] = _created(src)
    meta.setdefault("layout", LAYOUT_VERSION)
    meta.setdefault("tool", f"registry-client/{__version__}")
    meta["labels"] = _labels(meta.get("labels"), origin)
    if src.etag and len(src.etag) <= 80 and _printable(src.etag):
        meta["source-etag"] = src.etag
    return _fit(meta)


def _safe_item(key: str, value: str) -> bool:
    return bool(META_KEY_RE.match(key)) and len(value) <= META_VALUE_MAX and _printable(value)


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


CREATED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


def _created(src: ObjectInfo) -> str:
    value = src.metadata.get("created", "")
    if CREATED_RE.match(value):
        return value
    if src.modified is not None:
        return src.modified.strftime("%Y-%m-%dT%H:%M:%SZ")
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _labels(text: str | None, origin: str) -> str:
    labels: dict[str, Any] = {}
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    if isinstance(parsed, dict):
        labels = {str(k): str(v) for k, v in parsed.items() if isinstance(v, (str, int, float))}
    labels["migrated-from"] = origin[:ORIGIN_MAX]
    encoded = json.dumps(labels, sort_keys=True, separators=(",", ":"))
    if len(encoded) > LABELS_MAX or not encoded.isascii():
        encoded = json.dumps({"migrated-from": origin[:ORIGIN_MAX]}, separators=(",", ":"))
    return encoded


def _fit(meta: dict[str, str]) -> dict[str, str]:
    """Within the stores' metadata limits: other tools' keys go first, ours stay."""

    def total(m: Mapping[str, str]) -> int:
        return sum(len(k) + len(v) for k, v in m.items())

    for key in sorted(k for k in meta if k not in OUR_KEYS and k != "source-etag"):
        if total(meta) <= META_TOTAL_MAX:
            break
        del meta[key]
    return meta


# -- a registry's download, as a plain stream ------------------------------------------------------


def download_origin(download: Download, opened: list[StreamReader]) -> Origin:
    """A library:// or shub:// image read as one plain HTTPS stream through smart_open
    (the natural shape: one URL, one body), checked against the digests the registry
    publishes. Each pass opens the URL again; every stream opened goes into `opened`."""

    def open_stream() -> Reader:
        reader = StreamReader(_open_url(download), info, download.label)
        opened.append(reader)
        return reader

    first = _open_url(download)
    size = download.size if download.size is not None else _content_length(first, download)
    info = ObjectInfo(download.label, size)
    opened.append(StreamReader(first, info, download.label))
    readers = iter([opened[-1]])
    expect = registry_expect(
        download.label, size, size=download.size, sha256=download.sha256, md5=download.md5
    )

    def check(result: DigestResult, _sha: str | None) -> tuple[str, ...]:
        return verify(expect, result, None)

    plan = expect.plan or EtagPlan(
        [], lambda _: False, verifiable=False, description="the registry's sha256"
    )
    return Origin(lambda: next(readers, None) or open_stream(), info, plan, check)


def _open_url(download: Download) -> IO[bytes]:
    import requests
    import smart_open

    headers = {"Accept-Encoding": "identity", **download.headers}
    params = {"session": download.session, "headers": headers, "timeout": 60}
    what = f"GET {download.label}"
    try:
        stream: IO[bytes] = smart_open.open(
            download.url, "rb", compression="disable", transport_params=params
        )
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise _http_error(status, what) from None
    except (requests.RequestException, OSError) as exc:
        raise RemoteUnavailable(f"{what}: {type(exc).__name__}") from None
    return stream


def _http_error(status: int, what: str) -> RegistryClientError:
    if status == 404:
        return NotFound(f"{what}: 404")
    if status in (401, 403):
        return AuthError(f"{what}: {status}", hint="check the registry's token")
    if status >= 500 or status == 429:
        return RemoteUnavailable(f"{what}: {status}")
    return RegistryClientError(f"{what}: HTTP {status}")


def _content_length(stream: Any, download: Download) -> int:
    value = str(getattr(getattr(stream, "response", None), "headers", {}).get("Content-Length", ""))
    if not value.isdigit():
        stream.close()
        raise RegistryClientError(f"{download.label}: the server did not say how large it is")
    return int(value)
