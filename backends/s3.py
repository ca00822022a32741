"""S3 (AWS, Ceph RGW, MinIO, Swift s3api, moto...) through botocore.

botocore alone, not boto3: boto3 adds nothing to the calls made here but costs about
45 ms of imports and client set-up (s3transfer) at every start of a short-lived command.

Third-party servers need path-style addressing and no new-style default checksums:
botocore >= 1.36 adds CRC32 request checksums and validates response checksums by
default, which several S3 implementations reject. We set both to "when_required" and
send Content-MD5 on every PUT / part instead, which every S3 server verifies.
Retries are off here: the retry wrapper (registry_client.retry) owns that policy.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import botocore.exceptions as bexc
import botocore.session
from botocore.config import Config as BotoConfig

from registry_client.backends._parts import fit_part_size as fit_parts
from registry_client.backends._wire import (
    RawBody,
    check_content_range,
    first_line,
    is_transport_error,
    retry_after,
)
from registry_client.backends.base import (
    DEFAULT_CONNECTIONS,
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
from registry_client.digests import s3_etag_plan, s3_multipart_etag, segments
from registry_client.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
)

if TYPE_CHECKING:
    from registry_client.config import RemoteConfig

READ_BLOCK = 1024 * 1024
MAX_COPY = 5 * 1024**3  # CopyObject's limit
OCTET = "application/octet-stream"
MAX_PARTS = 10_000
MIN_PART = 5 * 1024 * 1024
AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "403",
    "401",
}
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"}
CHANGED_CODES = {"PreconditionFailed", "412"}
INTEGRITY_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"}


def translate(exc: BaseException, what: str) -> RegistryClientError:
    """botocore/urllib3 errors → our tree; messages carry names, never credentials."""
    if isinstance(exc, RegistryClientError):
        return exc
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        text = f"{what}: {code or status} {err.get('Message', '')}".strip()
        if code in MISSING_CODES or status == 404:
            return NotFound(text)
        if code in AUTH_CODES or status in (401, 403):
            return AuthError(text, hint="check the remote's credentials and permissions")
        if code in CHANGED_CODES or status == 412:
            return ObjectChanged(f"{what}: the object changed during the transfer")
        if code in INTEGRITY_CODES:
            return IntegrityError(text)
        if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout"):
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return RemoteUnavailable(text, retry_after=retry_after(headers))
        return RegistryClientError(text)
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return AuthError(
            f"{what}: no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile",
        )
    if isinstance(exc, bexc.ProfileNotFound):
        return AuthError(f"{what}: AWS profile not found")
    if isinstance(exc, (bexc.BotoCoreError, OSError, ConnectionError)) or is_transport_error(exc):
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {first_line(exc)}")
    return RegistryClientError(f"{what}: {type(exc).__name__}")


def _md5_of(body: BinaryIO, known: bytes | None = None) -> tuple[str, bytes]:
    """Content-MD5 (base64) and raw md5 of a part's reader, read in blocks (flat memory);
    the reader is rewound for sending. A `known` md5 is taken as it is: the server checks
    it against the bytes it receives."""
    if known is not None:
        return base64.b64encode(known).decode(), known
    md5 = hashlib.md5(usedforsecurity=False)
    while block := body.read(READ_BLOCK):
        md5.update(block)
    body.seek(0)
    digest = md5.digest()
    return base64.b64encode(digest).decode(), digest


class S3Backend(BodyReads, Backend):
    kind = "s3"
    capabilities = Capabilities(copy=True, copy_from=True, resume=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.options = options or {}
        self.limiter = Limiter.from_options(self.options)
        self.client = client or make_client(self.options, self.limiter.slots)
        endpoint = self.client.meta.endpoint_url
        self.location = f"s3://{bucket}/{prefix} ({endpoint})"
        self._object_urls: dict[str, str] = {}
        self._session_credentials: Any = None

    @classmethod
    def from_remote(cls, remote: RemoteConfig) -> S3Backend:
        return cls(remote.location, remote.prefix, options=dict(remote.options))

    def _key(self, key: str) -> str:
        return self.prefix + key

    # -- verbs ----------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise translate(exc, f"stat {key}") from None
        return self._info(key, head)

    @staticmethod
    def _info(key: str, head: dict[str, Any]) -> ObjectInfo:
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        etag = str(head.get("ETag", "")).strip('"') or None
        return ObjectInfo(key, int(head["ContentLength"]), etag, meta, head.get("LastModified"))

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
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Range": f"bytes={start}-{end - 1}",
        }
        if etag:
            args["IfMatch"] = f'"{etag}"'
        what = f"read {key}"
        try:
            resp = self.client.get_object(**args)
            check_content_range(resp.get("ContentRange"), start, end, what)
        except Exception as exc:
            raise translate(exc, what) from None
        return RawBody(resp["Body"]._raw_stream, lambda exc: translate(exc, what), watch)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._key(prefix),
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    yield ObjectInfo(
                        key,
                        int(obj["Size"]),
                        str(obj.get("ETag", "")).strip('"'),
                        {},
                        obj.get("LastModified"),
                    )
        except Exception as exc:
            raise translate(exc, f"list {self.bucket}/{self.prefix}{prefix}") from None

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        part_size = fit_part_size(size, part_size)
        if size <= part_size:
            return _SinglePut(self, key, size, metadata)
        try:
            # S3 takes the metadata first, with CreateMultipartUpload.
            created = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(key),
                Metadata=metadata_of(metadata),
                ContentType=OCTET,
            )
        except Exception as exc:
            raise translate(exc, f"upload {key}") from None
        return _Multipart(self, key, str(created["UploadId"]), segments(size, part_size))

    def delete(self, key: str) -> None:
        self.stat(key)  # S3 deletes are idempotent: say NotFound ourselves
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise translate(exc, f"delete {key}") from None

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        info = self.stat(src_key)
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        replace: dict[str, Any] = {"MetadataDirective": "COPY"}
        if metadata is not None:
            replace = {
                "MetadataDirective": "REPLACE",
                "Metadata": dict(metadata),
                "ContentType": OCTET,
            }
        try:
            if info.size <= MAX_COPY:
                self.client.copy_object(
                    Bucket=self.bucket, Key=self._key(dst_key), CopySource=source, **replace
                )
            else:
                # Multipart copy (CopyObject stops at 5 GiB): boto3's managed copy, which
                # works on any botocore client.
                from boto3.s3.inject import copy as managed_copy
                from boto3.s3.transfer import TransferConfig

                chunk = info.part_size or 64 * 1024 * 1024
                extra = {"Metadata": dict(metadata)} if metadata is not None else None
                managed_copy(
                    self.client,
                    source,
                    self.bucket,
                    self._key(dst_key),
                    ExtraArgs=extra,
                    Config=TransferConfig(multipart_chunksize=chunk),
                )
        except Exception as exc:
            raise translate(exc, f"copy {src_key} to {dst_key}") from None
        return self.stat(dst_key)

    # -- server-side copies between buckets, resumed and abandoned uploads ---------------
    def copy_from(
        self, source: Reader, info: ObjectInfo, dst_key: str, metadata: Mapping[str, str]
    ) -> ObjectInfo | None:
        """CopyObject, or UploadPartCopy part by part in the source's own layout, so the
        copy's ETag (md5 of the bytes, or md5 of the part md5s) must equal the source's."""
        other = innermost(source)
        if not isinstance(other, S3Backend) or not self._same_store(other):
            return None
        etag = (info.etag or "").lower()
        base, dash, count = etag.partition("-")
        if dash:
            part = info.part_size or other._first_part_size(info.key)
            if not part or -(-info.size // part) != int(count or 0) or part < MIN_PART:
                return None  # the layout cannot be repeated, so the copy could not be checked
            lengths = segments(info.size, part)
        elif info.size <= MAX_COPY and len(base) == 32:
            lengths = []
        else:
            return None
        copy_source = {"Bucket": other.bucket, "Key": other._key(info.key)}
        try:
            if not lengths:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(dst_key),
                    CopySource=copy_source,
                    CopySourceIfMatch=f'"{info.etag}"',
                    MetadataDirective="REPLACE",
                    Metadata=dict(metadata),
                    ContentType=OCTET,
                )
            else:
                self._copy_parts(copy_source, info, dst_key, lengths, metadata)
        except Exception as exc:
            error = translate(exc, f"copy {info.key} to {dst_key}")
            if isinstance(error, AuthError):
                return None  # these credentials cannot read the source: stream it instead
            raise error from None
        copied = self.stat(dst_key)
        if copied.etag != info.etag or copied.size != info.size:
            with contextlib.suppress(RegistryClientError):
                self.delete(dst_key)
            raise IntegrityError(
                f"copy {info.key} to {dst_key}: ETag {copied.etag} != the source's {info.etag}"
            )
        return copied

    def _same_store(self, other: S3Backend) -> bool:
        mine, theirs = self.client.meta, other.client.meta
        return bool(
            mine.endpoint_url == theirs.endpoint_url and mine.region_name == theirs.region_name
        )

    def _copy_parts(
        self,
        copy_source: dict[str, str],
        info: ObjectInfo,
        dst_key: str,
        lengths: builtins.list[int],
        metadata: Mapping[str, str],
    ) -> None:
        full = self._key(dst_key)
        created = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full, Metadata=dict(metadata), ContentType=OCTET
        )
        upload_id = str(created["UploadId"])

        def one(job: tuple[int, int, int]) -> dict[str, Any]:
            index, offset, length = job
            resp = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=index + 1,
                CopySource=copy_source,
                CopySourceRange=f"bytes={offset}-{offset + length - 1}",
                CopySourceIfMatch=f'"{info.etag}"',
            )
            return {"PartNumber": index + 1, "ETag": resp["CopyPartResult"]["ETag"]}

        jobs = builtins.list(zip(range(len(lengths)), _offsets(lengths), lengths, strict=True))
        try:
            parts = self.limiter.map(one, jobs)
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def resume_upload(
        self,
        key: str,
        size: int,
        metadata: Metadata,
        *,
        part_size: int,
        since: datetime | None,
    ) -> Upload | None:
        """The newest multipart upload of `key` begun after `since` whose parts fit the
        layout this upload would use; its metadata was set when it began, from a source
        that has not changed since. The others are aborted."""
        lengths = segments(size, fit_part_size(size, part_size))
        if since is None or len(lengths) < 2:
            return None
        try:
            found = self._uploads_of(key)
            chosen: _Multipart | None = None
            for upload_id, initiated in sorted(found, key=lambda u: u[1], reverse=True):
                if chosen is None and initiated > since:
                    stored = self._stored_parts(key, upload_id, lengths)
                    if stored is not None:
                        chosen = _Multipart(self, key, upload_id, lengths)
                        chosen.stored = stored
                        continue
                self._abort(key, upload_id)
        except Exception as exc:
            raise translate(exc, f"resume upload {key}") from None
        return chosen

    def _uploads_of(self, key: str) -> builtins.list[tuple[str, datetime]]:
        full = self._key(key)
        paginator = self.client.get_paginator("list_multipart_uploads")
        return [
            (str(u["UploadId"]), u["Initiated"])
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full)
            for u in page.get("Uploads", [])
            if u.get("Key") == full and isinstance(u.get("Initiated"), datetime)
        ]

    def _stored_parts(
        self, key: str, upload_id: str, lengths: builtins.list[int]
    ) -> dict[int, bytes] | None:
        """index -> md5 of the parts stored so far; None if one does not fit the layout."""
        paginator = self.client.get_paginator("list_parts")
        stored: dict[int, bytes] = {}
        pages = paginator.paginate(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
        for page in pages:
            for part in page.get("Parts", []):
                number, etag = part.get("PartNumber"), str(part.get("ETag", "")).strip('"')
                if not isinstance(number, int) or not 1 <= number <= len(lengths):
                    return None
                if part.get("Size") != lengths[number - 1] or not _is_md5_hex(etag):
                    return None
                stored[number - 1] = bytes.fromhex(etag)
        return stored

    def _abort(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload_id
        )

    def pending_uploads(self, prefix: str = "") -> set[str]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            return {
                str(u["Key"])[len(self.prefix) :]
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))
                for u in page.get("Uploads", [])
                if str(u.get("Key", "")).startswith(self.prefix)
            }
        except Exception as exc:
            raise translate(exc, f"list uploads in {self.bucket}/{self._key(prefix)}") from None

    def discard_pending(self, key: str) -> int:
        try:
            found = self._uploads_of(key)
            for upload_id, _ in found:
                self._abort(key, upload_id)
        except Exception as exc:
            raise translate(exc, f"abort uploads of {key}") from None
        return len(found)

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        if info.etag and "-" in info.etag and info.part_size is None:
            part = self._first_part_size(info.key)
            if part:
                info = ObjectInfo(
                    info.key,
                    info.size,
                    info.etag,
                    {**info.metadata, "part-size": str(part)},
                    info.modified,
                )
        return s3_etag_plan(info)

    def _first_part_size(self, key: str) -> int | None:
        """HEAD ?partNumber=1 tells the part size where the server supports it."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), PartNumber=1)
        except Exception:  # noqa: BLE001 - e.g. Swift s3api answers 405: fall back to guessing
            return None
        return int(head.get("ContentLength", 0)) or None

    def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
        """A presigned GET signed at `signed_at`: botocore resolves the object's URL
        (endpoint, addressing style, key encoding), registry_client.sigv4 signs it at the
        time given, which botocore cannot."""
        from registry_client.sigv4 import presign_url

        try:
            credentials = self._signing_credentials()
            if credentials is None:
                return None  # anonymous access: nothing to sign with
            base = self._object_urls.get(key)
            if base is None:
                params = {"Bucket": self.bucket, "Key": self._key(key)}
                url = self.client.generate_presigned_url("get_object", Params=params)
                base = self._object_urls[key] = url.partition("?")[0]
        except Exception as exc:
            raise translate(exc, f"sign {key}") from None
        region = self.client.meta.region_name or "us-east-1"
        return presign_url(base, credentials, region, signed_at=signed_at, expires=expires)

    def _signing_credentials(self) -> Any:
        """The remote's keys, else the AWS conventions' (env, profile...), as make_client."""
        from registry_client.sigv4 import Credentials

        opts = self.options
        if opts.get("access_key_id"):
            return Credentials(
                str(opts["access_key_id"]),
                str(opts.get("secret_access_key") or ""),
                opts.get("session_token") or None,
            )
        if self._session_credentials is None:
            session = botocore.session.Session(profile=opts.get("profile") or None)
            self._session_credentials = session.get_credentials() or False
        if not self._session_credentials:
            return None
        frozen = self._session_credentials.get_frozen_credentials()  # refreshed if due
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)

    def close(self) -> None:
        self.client.close()


class _SinglePut(Upload):
    """An object up to the part size: one PutObject with its metadata and Content-MD5."""

    def __init__(self, backend: S3Backend, key: str, size: int, metadata: Metadata) -> None:
        self.backend, self.key, self.metadata = backend, key, metadata
        self.parts = [(0, size)]
        self.etag = ""

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        b = self.backend
        md5_b64, digest = _md5_of(body, md5)
        try:
            b.client.put_object(
                Bucket=b.bucket,
                Key=b._key(self.key),
                Body=body,
                ContentLength=self.parts[0][1],
                ContentMD5=md5_b64,
                Metadata=metadata_of(self.metadata),
                ContentType=OCTET,
            )
        except Exception as exc:
            raise translate(exc, f"upload {self.key}") from None
        self.etag = digest.hex()

    def complete(self) -> ObjectInfo:
        return _check_etag(self.backend.stat(self.key), self.etag)

    def abort(self) -> None:
        pass  # nothing is live until PutObject succeeds, and then the object is whole


class _Multipart(Upload):
    """A multipart upload: parts with Content-MD5, each part's ETag checked."""

    def __init__(self, backend: S3Backend, key: str, upload_id: str, lengths: list[int]) -> None:
        self.backend, self.key, self.upload_id = backend, key, upload_id
        self.parts = list(zip(_offsets(lengths), lengths, strict=True))
        self.digests: list[bytes | None] = [None] * len(lengths)
        self.stored: dict[int, bytes] = {}

    def keep_part(self, index: int, md5: bytes) -> None:
        if self.stored.get(index) != md5:
            raise IntegrityError(f"part {index + 1} of {self.key} is not the one stored")
        self.digests[index] = md5

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        b = self.backend
        md5_b64, digest = _md5_of(body, md5)
        try:
            resp = b.client.upload_part(
                Bucket=b.bucket,
                Key=b._key(self.key),
                UploadId=self.upload_id,
                PartNumber=index + 1,
                Body=body,
                ContentLength=self.parts[index][1],
                ContentMD5=md5_b64,
            )
        except Exception as exc:
            raise translate(exc, f"part {index + 1} of {self.key}") from None
        if str(resp["ETag"]).strip('"') != digest.hex():
            raise IntegrityError(f"part {index + 1} of {self.key}: server ETag mismatch")
        self.digests[index] = digest

    def complete(self) -> ObjectInfo:
        b = self.backend
        digests = [d for d in self.digests if d is not None]
        expected = s3_multipart_etag(digests)
        parts = [{"PartNumber": i + 1, "ETag": f'"{d.hex()}"'} for i, d in enumerate(digests)]
        try:
            b.client.complete_multipart_upload(
                Bucket=b.bucket,
                Key=b._key(self.key),
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            error = translate(exc, f"upload {self.key}")
            # A retry after a lost answer finds the upload gone: done if the object is ours.
            if not isinstance(error, NotFound) or _etag_or_none(b, self.key) != expected:
                raise error from None
        return _check_etag(b.stat(self.key), expected)

    def abort(self) -> None:
        b = self.backend
        with contextlib.suppress(Exception):  # the first error is the one to report
            b.client.abort_multipart_upload(
                Bucket=b.bucket, Key=b._key(self.key), UploadId=self.upload_id
            )


def _offsets(lengths: list[int]) -> list[int]:
    out, pos = [], 0
    for length in lengths:
        out.append(pos)
        pos += length
    return out


def _etag_or_none(backend: S3Backend, key: str) -> str | None:
    try:
        return backend.stat(key).etag
    except RegistryClientError:
        return None


def _check_etag(info: ObjectInfo, expected: str) -> ObjectInfo:
    if info.etag != expected:
        raise IntegrityError(f"upload {info.key}: server ETag {info.etag} != expected {expected}")
    return info


def _is_md5_hex(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def fit_part_size(size: int, wanted: int) -> int:
    """At least S3's 5 MiB minimum and few enough parts for its 10,000-part limit."""
    return fit_parts(size, wanted, minimum=MIN_PART, max_parts=MAX_PARTS)


def make_client(options: dict[str, Any], connections: int = DEFAULT_CONNECTIONS) -> Any:
    """An S3 client following AWS conventions, overridable by the remote's options."""
    session = botocore.session.Session(profile=options.get("profile") or None)
    endpoint = options.get("endpoint_url") or None
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = options.get("addressing_style") or ("path" if endpoint or env_endpoint else "auto")
    config = BotoConfig(
        # Every body we send carries a Content-MD5 the server checks (a signed header), or
        # is checked after (a multipart upload's ETag): signing the payload too would
        # hash each part with sha256 once more, which botocore does on plain-http endpoints.
        s3={"addressing_style": style, "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 1, "mode": "standard"},  # max_attempts counts retries
        max_pool_connections=connections,  # the remote's limiter: no request waits for one
        connect_timeout=float(options.get("connect_timeout", 10)),
        read_timeout=float(options.get("read_timeout", 60)),
        signature_version="s3v4",
    )
    try:
        region = options.get("region") or session.get_config_variable("region")
        return session.create_client(
            "s3",
            region_name=region or "us-east-1",
            endpoint_url=endpoint,
            config=config,
            aws_access_key_id=options.get("access_key_id") or None,
            aws_secret_access_key=options.get("secret_access_key") or None,
            aws_session_token=options.get("session_token") or None,
        )
    except Exception as exc:
        raise translate(exc, "S3 client") from None
