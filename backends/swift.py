"""OpenStack Swift (and Ceph RGW's Swift API) through python-swiftclient.

The user-facing story is in docs/backends.md; the decisions that shape this module:

* Auth the way Swift users already configure it: tempauth / v1 (ST_AUTH, ST_USER, ST_KEY),
  Keystone v3 (OS_* with a password or an application credential; spoken directly over
  HTTP, so python-keystoneclient is not needed), or a pre-made OS_STORAGE_URL +
  OS_AUTH_TOKEN. A remote's options use the same names in lower case and win, key by key.
* swiftclient's Connection is not thread-safe: one per thread, all sharing one token
  store. A 401 makes swiftclient ask for a token once more; the first thread to ask
  re-authenticates, the others pick up its token. swiftclient's own retries are off: the
  retry wrapper (registry_client.retry) owns that policy.
* Large objects are Static Large Objects whose segments live in CONTAINER_segments (the
  `swift` CLI's default) under `KEY/slo/<time>-<random>/<size>/<segment size>/<index>`:
  every upload writes new segments, so a re-push never overwrites bytes that a reader of
  the old version is still fetching. Old segments go only after the new manifest is in.
* Reads are pinned with If-Match. For an SLO Swift compares it with the SLO ETag (the
  proxy sends X-Backend-Etag-Is-At), and a `?multipart-manifest=get` is pinned to the
  manifest's own md5 (X-Manifest-Etag from HEAD), so a manifest never mixes versions.
* When Swift cuts an SLO read short (or answers 409) because a segment no longer matches
  its manifest, the backend HEADs the segments of that range: a damaged segment is an
  IntegrityError (exit 4), anything else stays a transient error for the retry wrapper.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

from swiftclient.exceptions import ClientException
from swiftclient.utils import LengthWrapper

from registry_client.backends._wire import RawBody
from registry_client.backends.base import (
    Backend,
    BodyReads,
    Capabilities,
    ChunkBody,
    EtagPlan,
    Limiter,
    Metadata,
    ObjectInfo,
    RangeBody,
    Reader,
    ReadWatch,
    Upload,
    innermost,
    metadata_of,
)
from registry_client.backends.swift_auth import SwiftConnection, TokenStore, translate
from registry_client.backends.swift_config import SwiftAuth, object_info, unquote_etag
from registry_client.digests import plain_md5_plan, segments
from registry_client.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
    UsageError,
)

if TYPE_CHECKING:
    from registry_client.config import RemoteConfig

log = logging.getLogger(__name__)

MiB = 1024 * 1024
READ_BLOCK = MiB
HASH_BLOCK = 4 * MiB
OCTET = "application/octet-stream"
SEGMENTS_SUFFIX = "_segments"
# Swift's defaults, used when the cluster hides /info.
DEFAULT_MAX_SEGMENTS = 1000
DEFAULT_MAX_OBJECT = 5 * 1024**3 + 2
DEFAULT_TIMEOUT = 60.0
MAX_NESTING = 10  # Swift's own limit for SLOs inside SLOs
MAX_MANIFEST_BYTES = 64 * MiB


# -- SLO manifests --------------------------------------------------------------------


@dataclass
class _Entry:
    """One entry of an SLO manifest as `?multipart-manifest=get` returns it."""

    name: str | None  # "/container/object"; None for inline data
    size: int  # size of that object (or of the inline data)
    hash: str  # its ETag; for a nested SLO, that SLO's ETag
    range: str | None = None  # "first-last" when only part of the object is used
    data: bytes | None = None
    nested: bool = False  # the manifest marks this segment as an SLO itself (sub_slo)
    children: list[_Entry] | None = None  # entries of that nested SLO, once read

    @property
    def length(self) -> int:
        if self.range:
            first, _, last = self.range.partition("-")
            return int(last) - int(first) + 1
        return self.size

    @property
    def md5(self) -> str:
        if self.data is not None:
            return hashlib.md5(self.data, usedforsecurity=False).hexdigest()
        return self.hash


def _parse_entry(item: dict[str, Any]) -> _Entry:
    if "data" in item:
        data = base64.b64decode(item["data"])
        return _Entry(None, len(data), "", data=data)
    return _Entry(
        str(item["name"]),
        int(item["bytes"]),
        str(item["hash"]).strip('"'),
        item.get("range") or None,
        nested=bool(item.get("sub_slo")),
    )


def _leaves(entries: Sequence[_Entry]) -> list[_Entry]:
    """The pieces of the object's bytes, in order (a nested SLO used whole is opened)."""
    out: list[_Entry] = []
    for entry in entries:
        if entry.children is not None and not entry.range:
            out.extend(_leaves(entry.children))
        else:
            out.append(entry)
    return out


def _names(entries: Sequence[_Entry]) -> set[str]:
    """Every segment and nested manifest object the manifest references."""
    found: set[str] = set()
    for entry in entries:
        if entry.name:
            found.add(entry.name)
        if entry.children:
            found |= _names(entry.children)
    return found


def slo_etag(entries: Sequence[_Entry], leaf_md5: Callable[[_Entry], str]) -> str:
    """Swift's SLO ETag rule (swift/common/middleware/slo.py), from leaf md5s.

    md5 of the concatenated hex ETags of the entries; a ranged entry counts as
    "<etag>:<first>-<last>;", inline data as the md5 of the data, a nested SLO as its
    own SLO ETag (computed from its leaves, the way its manifest was checked at PUT).
    Leaves are visited in the order of _leaves(), so leaf_md5 may consume a sequence.
    """
    total = hashlib.md5(usedforsecurity=False)
    for entry in entries:
        if entry.children is not None and not entry.range:
            part = slo_etag(entry.children, leaf_md5)
        else:
            md5 = leaf_md5(entry)
            part = f"{entry.hash}:{entry.range};" if entry.range else md5
        total.update(part.encode("ascii"))
    return total.hexdigest()


def _segment_entry(name: str, etag: str, size: int, entry: _Entry | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"path": name, "etag": etag, "size_bytes": size}
    if entry is not None and entry.range:
        item["range"] = entry.range
    return item


# -- helpers ------------------------------------------------------------------------------


def _is_slo(head: Mapping[str, str]) -> bool:
    return str(head.get("x-static-large-object", "")).lower() in ("true", "1", "yes")


def _split(name: str) -> tuple[str, str]:
    container, _, obj = name.lstrip("/").partition("/")
    return container, obj


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return None


def _md5_of(body: BinaryIO) -> str:
    """md5 of a part's reader, read in blocks; the reader is rewound for sending."""
    digest = hashlib.md5(usedforsecurity=False)
    while data := body.read(HASH_BLOCK):
        digest.update(data)
    body.seek(0)
    return digest.hexdigest()


def _meta_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    return {f"X-Object-Meta-{k}": str(v) for k, v in metadata.items()}


def _copied_headers(head: Mapping[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in head.items() if k.lower().startswith("x-object-meta-")}
    if head.get("content-type"):
        keep["Content-Type"] = head["content-type"]
    return keep


def _stamp() -> str:
    # The swift CLI uses the file's mtime; the random tail keeps concurrent pushes apart.
    return f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"


def fit_segment_size(size: int, wanted: int, max_segments: int, max_object: int) -> int:
    """`wanted`, grown (in whole MiB) until the object fits in the manifest limit."""
    segment = max(1, min(wanted, max_object))
    if size > segment * max_segments:
        segment = -(-size // max_segments)
        segment = -(-segment // MiB) * MiB
    if segment > max_object:
        raise UsageError(
            f"{size} bytes do not fit in {max_segments} segments of at most "
            f"{max_object} bytes (this Swift cluster's limits)"
        )
    return segment


# -- the backend ----------------------------------------------------------------------------


class SwiftBackend(BodyReads, Backend):
    kind = "swift"
    capabilities = Capabilities(copy=True, copy_from=True, resume=True)

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        options: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        options = dict(options or {})
        env = os.environ if env is None else env
        if not container:
            raise ConfigError("a Swift remote needs a container (bucket = ...)")
        self.container = container
        self.prefix = prefix
        self.segment_container = str(
            options.get("segment_container") or container + SEGMENTS_SUFFIX
        )
        self.auth = SwiftAuth.from_sources(options, env)
        self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        insecure = str(options.get("insecure", env.get("SWIFTCLIENT_INSECURE", ""))).lower()
        self.verify: bool | str = (
            False if insecure in ("1", "true", "yes") else (self.auth.cacert or True)
        )
        self.tokens = TokenStore(self.auth, self.timeout, self.verify)
        endpoint = self.auth.storage_url or self.auth.auth_url
        self.location = f"swift://{container}/{prefix} ({endpoint})"
        self.limiter = Limiter.from_options(options)
        self._local = threading.local()
        self._connections: weakref.WeakSet[SwiftConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._heads: dict[tuple[str, str], dict[str, str]] = {}
        self._limits: tuple[int, int] | None = None
        self._containers_ready = False
        self._temp_url_key = str(options.get("temp_url_key") or "") or None
        self._tempurl_ready = False
        self._tempurl_lock = threading.Lock()

    @classmethod
    def from_remote(cls, remote: RemoteConfig) -> SwiftBackend:
        return cls(remote.location, remote.prefix, options=dict(remote.options))

    def __repr__(self) -> str:
        return f"SwiftBackend({self.location!r})"

    # -- plumbing ---------------------------------------------------------------------
    def _conn(self) -> SwiftConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = SwiftConnection(
                self.tokens,
                timeout=self.timeout,
                insecure=self.verify is False,
                cacert=self.verify if isinstance(self.verify, str) else None,
            )
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
        return conn

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _head(self, key: str) -> dict[str, str]:
        try:
            head = dict(self._conn().head_object(self.container, self._full(key)))
        except Exception as exc:
            raise translate(exc, f"stat {key}") from None
        etag = unquote_etag(head.get("etag"))
        if etag:
            with self._lock:
                if len(self._heads) > 256:
                    self._heads.clear()
                self._heads[(key, etag)] = head
        return head

    def _head_for(self, info: ObjectInfo) -> dict[str, str]:
        """The HEAD that produced `info` (remembered by stat), else a fresh one."""
        with self._lock:
            head = self._heads.get((info.key, info.etag or ""))
        if head is None:
            head = self._head(info.key)
            if unquote_etag(head.get("etag")) != info.etag:
                raise ObjectChanged(f"{info.key} changed since it was looked up")
        return head

    @staticmethod
    def _info(key: str, head: Mapping[str, str]) -> ObjectInfo:
        return object_info(key, head)

    # -- verbs --------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        return self._info(key, self._head(key))

    def open_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> RangeBody:
        if end <= start:
            return ChunkBody(iter(()))
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        try:
            resp, body = self._conn().get_object(
                self.container, self._full(key), resp_chunk_size=READ_BLOCK, headers=headers
            )
        except Exception as exc:
            raise self._read_error(key, etag, start, end, exc, watch) from None
        try:
            _check_content_range(resp, start, end, key)
        except BaseException:
            body.close()
            raise
        return _SwiftBody(self, body, key, etag, start, end, watch)

    def _read_error(
        self,
        key: str,
        etag: str | None,
        pos: int,
        end: int,
        exc: BaseException,
        watch: ReadWatch | None,
    ) -> RegistryClientError:
        error = translate(exc, f"read {key}")
        if isinstance(error, RemoteUnavailable) and not isinstance(error, ObjectChanged):
            return self._diagnose(key, etag, pos, end, error, watch)
        return error

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for item in self._listing(self.container, self._full(prefix)):
                etag = unquote_etag(item.get("slo_etag") or str(item.get("hash", "")))
                yield ObjectInfo(
                    item["name"][len(self.prefix) :],
                    int(item.get("bytes", 0)),
                    etag,
                    {},
                    _parse_iso(item.get("last_modified")),
                )
        except GeneratorExit:
            raise
        except Exception as exc:
            raise translate(exc, f"list {self.container}/{self._full(prefix)}") from None

    def _listing(self, container: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under prefix, page by page (marker pagination)."""
        marker = ""
        while True:
            _, page = self._conn().get_container(
                container, marker=marker, prefix=prefix or None, limit=self.page_size
            )
            items = [item for item in page if "name" in item]
            if not items:
                return
            yield from items
            marker = items[-1]["name"]

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        try:
            self._prepare_containers()
            segment = fit_segment_size(size, part_size, *self._cluster_limits())
            old = self._segments_of(key)
        except Exception as exc:
            raise translate(exc, f"upload {key}") from None
        if size <= segment:
            return _WholeObject(self, key, size, metadata, old)
        return _SloUpload(self, key, size, segment, metadata, old)

    def _put_manifest(
        self, key: str, manifest: builtins.list[dict[str, Any]], headers: dict[str, str]
    ) -> None:
        # Swift HEADs every segment and refuses the manifest (400) if an etag or size
        # differs, so a segment damaged between its PUT and here never goes live.
        try:
            self._conn().put_object(
                self.container,
                self._full(key),
                json.dumps(manifest),
                query_string="multipart-manifest=put",
                headers=headers,
            )
        except ClientException as exc:
            if exc.http_status != 400:
                raise
            body = exc.http_response_content
            text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            problems = "; ".join(line for line in text.splitlines()[1:4] if line)
            raise IntegrityError(
                f"Swift refused the manifest of {key}: {problems or 'HTTP 400'}"
            ) from None

    def _prepare_containers(self) -> None:
        """The container must exist; its segments container is made on first use."""
        if self._containers_ready:
            return
        conn = self._conn()
        try:
            head = conn.head_container(self.container)
        except ClientException as exc:
            if exc.http_status == 404:
                raise NotFound(
                    f"Swift container {self.container} does not exist",
                    hint=f"create it first, e.g. `swift post {self.container}`",
                ) from None
            raise
        try:
            conn.head_container(self.segment_container)
        except ClientException as exc:
            if exc.http_status != 404:
                raise
            # Same storage policy as the images, as the swift CLI does.
            policy = head.get("x-storage-policy")
            conn.put_container(
                self.segment_container, headers={"X-Storage-Policy": policy} if policy else None
            )
        self._containers_ready = True

    def _cluster_limits(self) -> tuple[int, int]:
        """(max segments per manifest, max object size) from /info, else Swift defaults."""
        if self._limits is None:
            try:
                caps = self._conn().get_capabilities()
            except Exception:  # noqa: BLE001 - /info may be disabled: assume the defaults
                caps = {}
            slo = caps.get("slo") or {}
            self._limits = (
                int(slo.get("max_manifest_segments", DEFAULT_MAX_SEGMENTS)),
                int((caps.get("swift") or {}).get("max_file_size", DEFAULT_MAX_OBJECT)),
            )
        return self._limits

    def delete(self, key: str) -> None:
        head = self._head(key)  # NotFound if absent
        try:
            doomed = self._segments_of(key, head)
            # The manifest goes first: a failure half-way leaves unreferenced segments,
            # never a manifest pointing at missing ones.
            self._conn().delete_object(self.container, self._full(key))
        except Exception as exc:
            raise translate(exc, f"delete {key}") from None
        self._remove_segments(doomed)

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        head = self._head(src_key)
        if src_key == dst_key and metadata is None:
            return self._info(dst_key, head)
        return self._copy_in(self, src_key, head, dst_key, metadata)

    def copy_from(
        self, source: Reader, info: ObjectInfo, dst_key: str, metadata: Mapping[str, str]
    ) -> ObjectInfo | None:
        """Within one account (same storage URL): segment copies and a new manifest, or one
        COPY; the copy's ETag (the SLO ETag from the same segment md5s) must be the
        source's."""
        other = innermost(source)
        if (
            not isinstance(other, SwiftBackend)
            or other.tokens.current()[0] != (self.tokens.current()[0])
        ):
            return None
        try:
            head = other._head_for(info)
        except Exception as exc:
            raise translate(exc, f"stat {info.key}") from None
        if head.get("x-object-manifest"):
            return None  # a DLO's copy would be a plain object with another ETag: stream it
        copied = self._copy_in(other, info.key, head, dst_key, metadata)
        if copied.etag != info.etag or copied.size != info.size:
            with contextlib.suppress(RegistryClientError):
                self.delete(dst_key)
            raise IntegrityError(
                f"copy {info.key} to {dst_key}: ETag {copied.etag} != the source's {info.etag}"
            )
        return copied

    def _copy_in(
        self,
        source: SwiftBackend,
        src_key: str,
        head: Mapping[str, str],
        dst_key: str,
        metadata: Mapping[str, str] | None,
    ) -> ObjectInfo:
        headers = (
            {**_meta_headers(metadata), "Content-Type": OCTET}
            if metadata is not None
            else _copied_headers(head)
        )
        try:
            old = self._segments_of(dst_key)
            if _is_slo(head):
                keep = self._copy_slo(source, src_key, dst_key, head, headers)
            else:  # plain objects; a DLO's copy becomes a plain object of its content
                self._conn().copy_object(
                    source.container,
                    source._full(src_key),
                    f"/{self.container}/{self._full(dst_key)}",
                    headers=headers if metadata is not None else None,
                    fresh_metadata=metadata is not None or None,
                )
                keep = set()
        except Exception as exc:
            raise translate(exc, f"copy {src_key} to {dst_key}") from None
        info = self.stat(dst_key)
        self._remove_segments(old - keep)
        return info

    def _copy_slo(
        self,
        source: SwiftBackend,
        src_key: str,
        dst_key: str,
        head: Mapping[str, str],
        headers: dict[str, str],
    ) -> set[str]:
        """New segments (server-side copies) and a new manifest: nothing is shared, so
        `rm` of either tag never breaks the other."""
        leaves = _leaves(source._manifest_entries(src_key, head))
        if any(leaf.nested for leaf in leaves):
            raise RegistryClientError(
                f"copy {src_key}: a nested SLO used through a range cannot be copied server-side"
            )
        self._prepare_containers()
        base = f"{self._full(dst_key)}/slo/{_stamp()}/{head.get('content-length')}/copy/"
        targets = [
            f"/{self.segment_container}/{base}{i:08d}" if leaf.name else None
            for i, leaf in enumerate(leaves)
        ]
        jobs = [(leaf, dst) for leaf, dst in zip(leaves, targets, strict=True) if dst]
        copied: builtins.list[str] = []
        try:
            self.limiter.map(lambda job: self._copy_segment(job[0], job[1], copied), jobs)
            manifest = [
                _segment_entry(dst, leaf.hash, leaf.size, leaf)
                if dst
                else {"data": base64.b64encode(leaf.data or b"").decode()}
                for leaf, dst in zip(leaves, targets, strict=True)
            ]
            self._put_manifest(dst_key, manifest, headers)
        except Exception:
            self._remove_segments(set(copied))
            raise
        return set(copied)

    def _copy_segment(self, leaf: _Entry, target: str, copied: builtins.list[str]) -> None:
        container, obj = _split(leaf.name or "")
        self._conn().copy_object(container, obj, target, fresh_metadata=True)
        copied.append(target)

    # -- resumed and abandoned uploads ----------------------------------------------------
    def resume_upload(
        self,
        key: str,
        size: int,
        metadata: Metadata,
        *,
        part_size: int,
        since: datetime | None,
    ) -> Upload | None:
        """The newest segment set of an SLO upload of `key` that no manifest names, cut
        like this upload would be. The metadata goes with the manifest, written at the
        end, so `since` does not matter here; the segments' md5s are compared with the
        bytes by the caller. Other unnamed segment sets of `key` are removed."""
        try:
            self._prepare_containers()
            segment = fit_segment_size(size, part_size, *self._cluster_limits())
            if size <= segment:
                return None
            old = self._segments_of(key)
            groups = self._segment_groups(key)
            wanted = (str(size), str(segment))
            chosen: str | None = None
            for base in sorted(groups, key=_stamp_time, reverse=True):
                members = groups[base]
                if members & old:
                    continue  # the live object's segments are never written to
                if chosen is None and tuple(base.split("/")[-3:-1]) == wanted:
                    chosen = base
                    continue
                self._remove_segments(set(members))
            if chosen is None:
                return None
            upload = _SloUpload(self, key, size, segment, metadata, old, base=chosen)
            upload.stored = self._stored_segments(upload, chosen)
        except Exception as exc:
            raise translate(exc, f"resume upload {key}") from None
        return upload

    def _segment_groups(self, key: str) -> dict[str, set[str]]:
        """Segments under `KEY/slo/` by upload: "<key>/slo/<stamp>/<size>/<seg>/" -> names."""
        prefix = f"{self._full(key)}/slo/"
        groups: dict[str, set[str]] = {}
        try:
            items = builtins.list(self._listing(self.segment_container, prefix))
        except ClientException as exc:
            if exc.http_status == 404:
                return {}
            raise
        for item in items:
            name = str(item["name"])
            base, _, _index = name.rpartition("/")
            if base.count("/") >= 3:
                groups.setdefault(base + "/", set()).add(f"/{self.segment_container}/{name}")
        return groups

    def _stored_segments(self, upload: _SloUpload, base: str) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        listing = self._listing(self.segment_container, base)
        by_name = {f"/{self.segment_container}/{i['name']}": i for i in listing}
        for index, name in enumerate(upload.names):
            item = by_name.get(name)
            etag = str(item.get("hash", "")) if item else ""
            if item and int(item.get("bytes", -1)) == upload.parts[index][1] and _is_md5(etag):
                found[index] = bytes.fromhex(etag)
        return found

    def pending_uploads(self, prefix: str = "") -> set[str]:
        """Keys with two or more segment sets, or one and no object: every SLO has one."""
        counts: dict[str, set[str]] = {}
        try:
            for item in self._listing(self.segment_container, self._full(prefix)):
                head, sep, rest = str(item["name"]).partition("/slo/")
                if sep and head.startswith(self.prefix):
                    counts.setdefault(head[len(self.prefix) :], set()).add(rest.split("/")[0])
        except ClientException as exc:
            if exc.http_status == 404:
                return set()
            raise translate(exc, f"list {self.segment_container}") from None
        except Exception as exc:
            raise translate(exc, f"list {self.segment_container}") from None
        if not counts:
            return set()
        existing = {info.key for info in self.list(prefix)}
        return {k for k, stamps in counts.items() if len(stamps) > 1 or k not in existing}

    def discard_pending(self, key: str) -> int:
        try:
            live = self._segments_of(key)
            groups = [g for g in self._segment_groups(key).values() if not g & live]
        except Exception as exc:
            raise translate(exc, f"list the segments of {key}") from None
        self._remove_segments(set().union(*groups) if groups else set())
        return len(groups)

    # -- segments ---------------------------------------------------------------------
    def _segments_of(self, key: str, head: Mapping[str, str] | None = None) -> set[str]:
        """Objects that make up `key` besides its manifest (empty for plain objects).

        Used before replacing or deleting `key`; a manifest that cannot be read must not
        block that (it is how a damaged image gets fixed), so it only costs a leftover.
        """
        try:
            return self._segment_names(key, head)
        except NotFound:
            return set()
        except (ClientException, RegistryClientError) as exc:
            if isinstance(exc, AuthError):
                raise
            log.warning("cannot list the segments of %s (%s); they stay in place", key, exc)
            return set()

    def _segment_names(self, key: str, head: Mapping[str, str] | None) -> set[str]:
        head = self._head(key) if head is None else head
        if _is_slo(head):
            return _names(self._manifest_entries(key, head, strict=False))
        manifest = head.get("x-object-manifest")
        if manifest:  # a DLO: its segments are everything under its prefix, as for `swift`
            container, _, prefix = unquote(manifest).partition("/")
            if container == self.container or not prefix:
                # Never sweep a prefix that may hold other images.
                log.warning("leaving the segments of DLO %s (%s) in place", key, manifest)
                return set()
            return {f"/{container}/{i['name']}" for i in self._listing(container, prefix)}
        return set()

    def _remove_segments(self, names: set[str]) -> None:
        """Best effort: the image itself is already replaced or gone; leftovers are logged."""
        failed: builtins.list[str] = []

        def remove(name: str) -> None:
            container, obj = _split(name)
            try:
                self._conn().delete_object(container, obj)
            except ClientException as exc:
                if exc.http_status != 404:
                    failed.append(name)
            except Exception:  # noqa: BLE001 - counted and logged below
                failed.append(name)

        self.limiter.map(remove, sorted(names))
        if failed:
            log.warning(
                "could not remove %d old segment(s) of %s, e.g. %s",
                len(failed),
                self.container,
                failed[0],
            )

    # -- manifests and ETag plans -----------------------------------------------------------
    def _manifest_entries(
        self, key: str, head: Mapping[str, str], strict: bool = True
    ) -> builtins.list[_Entry]:
        """The manifest of `key`, pinned to the one HEAD saw; nested SLOs opened."""
        pin = head.get("x-manifest-etag")
        items = self._manifest(self.container, self._full(key), pin)
        return [self._open_nested(e, strict, 1) for e in map(_parse_entry, items)]

    def _open_nested(self, entry: _Entry, strict: bool, depth: int) -> _Entry:
        if not entry.nested or entry.name is None or depth > MAX_NESTING:
            return entry
        container, obj = _split(entry.name)
        try:
            items = self._manifest(container, obj, None)
        except (ClientException, RegistryClientError):
            if strict:
                raise
            return entry  # deleting: take what can be read
        entry.children = [self._open_nested(e, strict, depth + 1) for e in map(_parse_entry, items)]
        if strict and not entry.range and slo_etag(entry.children, lambda e: e.md5) != entry.hash:
            raise IntegrityError(
                f"nested manifest {entry.name} changed since its parent "
                "was written; the image is damaged"
            )
        return entry

    def _manifest(self, container: str, obj: str, pin: str | None) -> builtins.list[dict[str, Any]]:
        headers = {"If-Match": pin} if pin else {}
        head, body = self._conn().get_object(
            container,
            obj,
            query_string="multipart-manifest=get",
            headers=headers,
            resp_chunk_size=READ_BLOCK,
        )
        try:
            if not _is_slo(head) or int(head.get("content-length", 0)) > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"/{container}/{obj} is not an SLO manifest any more")
            return json.loads(b"".join(body))
        finally:
            body.close()

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        try:
            head = self._head_for(info)
            if _is_slo(head):
                return self._slo_plan(info, head)
            if head.get("x-object-manifest"):
                return self._dlo_plan(info, head)
        except Exception as exc:
            raise translate(exc, f"layout of {info.key}") from None
        return plain_md5_plan(info)

    def _slo_plan(self, info: ObjectInfo, head: Mapping[str, str]) -> EtagPlan:
        entries = self._manifest_entries(info.key, head)
        if slo_etag(entries, lambda e: e.md5) != info.etag:
            raise IntegrityError(
                f"{info.key}: its SLO manifest does not add up to its ETag "
                f"{info.etag}; the image is damaged"
            )
        leaves = _leaves(entries)
        if any(leaf.range for leaf in leaves):
            return EtagPlan(
                [],
                lambda _: False,
                verifiable=False,
                description="SLO made of parts of segments: no md5 of them to check",
            )
        expected = [leaf.md5 for leaf in leaves]

        def check(md5s: builtins.list[builtins.list[bytes]]) -> bool:
            got = [d.hex() for d in md5s[0]]
            if got != expected:
                return False
            downloaded = iter(got)
            return slo_etag(entries, lambda _leaf: next(downloaded)) == info.etag

        return EtagPlan(
            [[leaf.length for leaf in leaves]],
            check,
            description=f"SLO ETag over {len(leaves)} segment md5s",
        )

    def _dlo_plan(self, info: ObjectInfo, head: Mapping[str, str]) -> EtagPlan:
        """A DLO's ETag is the md5 of its segments' ETags in listing order (dlo.py)."""
        container, _, prefix = unquote(head["x-object-manifest"]).partition("/")
        items = list(self._listing(container, prefix))
        hashes = [str(i["hash"]) for i in items]
        lengths = [int(i["bytes"]) for i in items]
        computed = hashlib.md5("".join(hashes).encode(), usedforsecurity=False).hexdigest()
        if computed != info.etag or sum(lengths) != info.size:
            return EtagPlan(
                [],
                lambda _: False,
                verifiable=False,
                description="DLO whose segment listing does not reproduce its ETag",
            )
        return EtagPlan(
            [lengths],
            lambda md5s: [d.hex() for d in md5s[0]] == hashes,
            description=f"DLO ETag over {len(items)} segment md5s",
        )

    # -- shared URLs ----------------------------------------------------------------------
    def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
        """A TempURL (GET, HMAC-SHA256) expiring at `signed_at + expires`, when the cluster
        runs the tempurl middleware and a key is known: the remote's `temp_url_key`, else
        the account's or the container's Temp-URL-Key metadata. None otherwise."""
        from swiftclient.utils import generate_temp_url

        try:
            secret = self._tempurl_key()
            if secret is None:
                return None
            storage_url = self.tokens.current()[0]
        except Exception as exc:
            raise translate(exc, f"sign {key}") from None
        parts = urlsplit(storage_url)
        path = f"{parts.path.rstrip('/')}/{self.container}/{self._full(key)}"
        signed = generate_temp_url(
            path, signed_at + expires, secret, "GET", absolute=True, digest="sha256"
        )
        return f"{parts.scheme}://{parts.netloc}{quote(path)}?{signed.partition('?')[2]}"

    def _tempurl_key(self) -> str | None:
        """The configured key; else, looked up once, the account's or the container's key
        when /info lists tempurl with GET and sha256. Any failure means no TempURLs."""
        with self._tempurl_lock:  # the ranges of a pull ask at once: one lookup
            if not self._tempurl_ready:
                if self._temp_url_key is None:
                    with contextlib.suppress(Exception):  # /info hidden, HEAD refused: none
                        self._temp_url_key = self._find_tempurl_key()
                self._tempurl_ready = True
            return self._temp_url_key

    def _find_tempurl_key(self) -> str | None:
        conn = self._conn()
        caps = conn.get_capabilities().get("tempurl") or {}
        digests = caps.get("allowed_digests", ["sha1", "sha256", "sha512"])
        if not caps or "GET" not in caps.get("methods", ["GET"]) or "sha256" not in digests:
            return None
        # The account's key first: a container's key covers only that container, and the
        # segments of an SLO live in another one (CONTAINER_segments).
        found = conn.head_account().get("x-account-meta-temp-url-key")
        if not found:
            found = conn.head_container(self.container).get("x-container-meta-temp-url-key")
        return str(found) if found else None

    # -- diagnosis ------------------------------------------------------------------------
    def _diagnose(
        self,
        key: str,
        etag: str | None,
        start: int,
        end: int,
        error: RegistryClientError,
        watch: ReadWatch | None = None,
    ) -> RegistryClientError:
        """Swift cut a read short: a damaged segment (exit 4), a new version, or a hiccup."""
        if watch is not None and (watch.reason or watch.cancelled.is_set()):
            return error  # we cut it (a stall, or the download is over): nothing to probe
        try:
            head = self._head(key)
            if etag and unquote_etag(head.get("etag")) != etag:
                return ObjectChanged(f"read {key}: the object changed during the transfer")
            if not _is_slo(head):
                return error
            damaged = self._damaged_segment(
                self._manifest_entries(key, head, strict=False), start, end
            )
        except Exception:  # noqa: BLE001 - the original error says more than this probe
            return error
        if damaged:
            return IntegrityError(
                f"{key}: {damaged}; the image is damaged in the store", hint="push the image again"
            )
        return error

    def _damaged_segment(self, entries: builtins.list[_Entry], start: int, end: int) -> str | None:
        offset = 0
        for leaf in _leaves(entries):
            first, offset = offset, offset + leaf.length
            if offset <= start or first >= end or not leaf.name:
                continue
            container, obj = _split(leaf.name)
            try:
                seg = self._conn().head_object(container, obj)
            except ClientException as exc:
                if exc.http_status == 404:
                    return f"segment {leaf.name} is missing"
                raise
            if (
                unquote_etag(seg.get("etag")) != leaf.hash
                or int(seg.get("content-length", -1)) != leaf.size
            ):
                return f"segment {leaf.name} no longer matches its manifest"
        return None

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()


class _SwiftBody:
    """A ranged GET's body, received into the caller's memory (backends._wire.RawBody);
    a body that breaks or ends short is diagnosed (a damaged segment is exit 4)."""

    def __init__(
        self,
        backend: SwiftBackend,
        body: Any,
        key: str,
        etag: str | None,
        start: int,
        end: int,
        watch: ReadWatch | None,
    ) -> None:
        self.backend, self.body, self.key, self.etag = backend, body, key, etag
        self.pos, self.end, self.watch = start, end, watch
        raw = getattr(getattr(body, "resp", None), "raw", None)
        self.raw = RawBody(raw, lambda exc: exc, watch) if raw is not None else None

    def readinto(self, view: memoryview, /) -> int:
        try:
            if self.raw is not None:
                n = self.raw.readinto(view)
            else:
                data = self.body.read(len(view))
                n = len(data)
                view[:n] = data
        except Exception as exc:
            b, watch = self.backend, self.watch
            raise b._read_error(self.key, self.etag, self.pos, self.end, exc, watch) from None
        self.pos += n
        if n == 0 and self.pos < self.end:
            short = RemoteUnavailable(f"read {self.key}: body ended at {self.pos} of {self.end}")
            raise self.backend._diagnose(self.key, self.etag, self.pos, self.end, short, self.watch)
        return n

    def close(self) -> None:
        if self.raw is not None and self.pos >= self.end:
            self.raw.close()  # read to its end: the connection goes back to the pool
            return
        with contextlib.suppress(Exception):
            self.body.close()


class _WholeObject(Upload):
    """An object up to the segment size: one PUT with `ETag:` set to its md5, so Swift
    refuses (422) bytes that differ; nothing is live before the PUT succeeds."""

    def __init__(
        self, backend: SwiftBackend, key: str, size: int, metadata: Metadata, old: set[str]
    ) -> None:
        self.backend, self.key, self.metadata, self.old = backend, key, metadata, old
        self.parts = [(0, size)]
        self.md5 = ""

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        b, size = self.backend, self.parts[0][1]
        expected = md5.hex() if md5 is not None else _md5_of(body)
        try:
            etag = b._conn().put_object(
                b.container,
                b._full(self.key),
                LengthWrapper(body, size),
                content_length=size,
                etag=expected,
                content_type=OCTET,
                headers=_meta_headers(metadata_of(self.metadata)),
            )
        except Exception as exc:
            raise translate(exc, f"upload {self.key}") from None
        if etag != expected:  # Swift checked our md5 (422 otherwise); this guards the proxy path
            raise IntegrityError(f"upload {self.key}: server ETag {etag} != md5 {expected}")
        self.md5 = expected

    def complete(self) -> ObjectInfo:
        info = _check_etag(self.backend.stat(self.key), self.md5)
        self.backend._remove_segments(self.old)  # it was an SLO before
        return info

    def abort(self) -> None:
        pass


class _SloUpload(Upload):
    """A Static Large Object: segments under a fresh name, then the manifest.

    Segment md5s are taken from the bytes as they are sent, not in a read beforehand: a
    segment is not live until the manifest names it, and the manifest is written only once
    every segment's ETag (Swift's md5 of what it stored) matched ours. Swift HEADs every
    segment again when it takes the manifest.
    """

    def __init__(
        self,
        backend: SwiftBackend,
        key: str,
        size: int,
        segment: int,
        metadata: Metadata,
        old: set[str],
        *,
        base: str | None = None,
    ) -> None:
        self.backend, self.key, self.metadata, self.old = backend, key, metadata, old
        self.segment = segment
        lengths = segments(size, segment)
        self.parts = [(i * segment, n) for i, n in enumerate(lengths)]
        # A resumed upload keeps the segment names of the one it continues.
        base = base or f"{backend._full(key)}/slo/{_stamp()}/{size}/{segment}/"
        self.names = [f"/{backend.segment_container}/{base}{i:08d}" for i in range(len(lengths))]
        self.etags: list[str | None] = [None] * len(lengths)
        self.stored: dict[int, bytes] = {}
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        name, length = self.names[index], self.parts[index][1]
        container, obj = _split(name)
        # With the md5 known it goes as the ETag header, which Swift checks (422);
        # otherwise it is taken from the bytes as they are sent.
        wrapped = LengthWrapper(body, length, md5=md5 is None)
        try:
            etag = self.backend._conn().put_object(
                container,
                obj,
                wrapped,
                content_length=length,
                content_type=OCTET,
                etag=md5.hex() if md5 is not None else None,
            )
        except Exception as exc:
            raise translate(exc, f"segment {index + 1} of {self.key}") from None
        with self._lock:
            self._uploaded.add(name)
        sent = md5.hex() if md5 is not None else wrapped.get_md5sum()
        if etag != sent:
            raise IntegrityError(f"segment {name}: server ETag {etag} != md5 {sent}")
        self.etags[index] = sent

    def keep_part(self, index: int, md5: bytes) -> None:
        if self.stored.get(index) != md5:
            raise IntegrityError(f"segment {index + 1} of {self.key} is not the one stored")
        with self._lock:
            self._uploaded.add(self.names[index])
        self.etags[index] = md5.hex()

    def complete(self) -> ObjectInfo:
        b = self.backend
        etags = [e or "" for e in self.etags]
        manifest = [
            _segment_entry(n, e, length)
            for n, e, (_, length) in zip(self.names, etags, self.parts, strict=True)
        ]
        # The metadata goes with the manifest, so it is asked for only now.
        meta = metadata_of(self.metadata)
        if "part-size" in meta:
            meta["part-size"] = str(self.segment)
        try:
            b._put_manifest(self.key, manifest, {**_meta_headers(meta), "Content-Type": OCTET})
        except Exception as exc:
            raise translate(exc, f"upload {self.key}") from None
        flat = [
            _Entry(n, length, e)
            for n, e, (_, length) in zip(self.names, etags, self.parts, strict=True)
        ]
        info = _check_etag(b.stat(self.key), slo_etag(flat, lambda e: e.hash))
        b._remove_segments(self.old - set(self.names))
        return info

    def abort(self) -> None:
        # Ctrl-C too: no manifest names these segments, so no one else will remove them.
        with contextlib.suppress(Exception):
            self.backend._remove_segments(set(self._uploaded))


def _is_md5(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _stamp_time(base: str) -> float:
    """Upload time from a segment set's "<key>/slo/<time>-<random>/..." (0 if unknown)."""
    stamp = base.rstrip("/").split("/")[-3].partition("-")[0]
    try:
        return float(stamp)
    except ValueError:
        return 0.0


def _check_etag(info: ObjectInfo, expected: str) -> ObjectInfo:
    if info.etag != expected:
        raise IntegrityError(f"upload {info.key}: server ETag {info.etag} != expected {expected}")
    return info


def _check_content_range(head: Mapping[str, str], start: int, end: int, key: str) -> None:
    header = head.get("content-range")
    if header is None and start == 0 and head.get("content-length") == str(end):
        return  # a 200 for a range that covers the whole object
    if header is None or not header.startswith(f"bytes {start}-{end - 1}/"):
        raise IntegrityError(
            f"read {key}: server answered range {header!r}, asked for {start}-{end - 1}"
        )
