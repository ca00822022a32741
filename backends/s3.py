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
import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bexc
import botocore.session
from botocore.config import Config as BotoConfig

from registry_client.backends._wire import first_line, is_transport_error, retry_after
from registry_client.backends.base import (
    Backend,
    Capabilities,
    EtagPlan,
    Metadata,
    ObjectInfo,
    Progress,
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


def _md5_of_range(fd: int, offset: int, length: int) -> tuple[str, bytes]:
    """Content-MD5 (base64) and raw md5 of a file range, read in blocks (flat memory)."""
    md5 = hashlib.md5(usedforsecurity=False)
    for block in RangeFile(fd, offset, length).blocks():
        md5.update(block)
    digest = md5.digest()
    return base64.b64encode(digest).decode(), digest


class RangeFile(io.RawIOBase):
    """A seekable, read-only view of [offset, offset+length) of a file descriptor.

    Uploads stream parts from disk through it instead of holding them in memory: botocore
    reads it to sign the payload, rewinds it, then sends it. pread keeps threads that share
    the descriptor independent.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length, self.pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = min(max(0, base + pos), self.length)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        left = self.length - self.pos
        size = left if size is None or size < 0 else min(size, left)
        if size <= 0:
            return b""
        data = os.pread(self.fd, size, self.offset + self.pos)
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return self.length

    def blocks(self, size: int = READ_BLOCK) -> Iterator[bytes]:
        self.seek(0)
        while block := self.read(size):
            yield block


class S3Backend(Backend):
    kind = "s3"
    capabilities = Capabilities(copy=True)

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
        self.client = client or make_client(self.options)
        endpoint = self.client.meta.endpoint_url
        self.location = f"s3://{bucket}/{prefix} ({endpoint})"

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

    def read_range(self, key: str, start: int, end: int, etag: str | None) -> Iterator[bytes]:
        if end <= start:
            return
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Range": f"bytes={start}-{end - 1}",
        }
        if etag:
            args["IfMatch"] = f'"{etag}"'
        try:
            resp = self.client.get_object(**args)
            _check_content_range(resp.get("ContentRange"), start, end, key)
            body = resp["Body"]
            try:
                while chunk := body.read(READ_BLOCK):
                    yield chunk
            finally:
                body.close()
        except Exception as exc:  # GeneratorExit is not an Exception: closing passes through
            raise translate(exc, f"read {key}") from None

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

    def put(
        self,
        key: str,
        path: str,
        metadata: Metadata,
        *,
        part_size: int,
        concurrency: int,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        size = os.path.getsize(path)
        part_size = fit_part_size(size, part_size)
        try:
            # S3 takes the metadata first (PutObject, CreateMultipartUpload).
            meta = metadata_of(metadata)
            if size <= part_size:
                etag = self._put_single(key, path, meta, progress)
            else:
                etag = self._put_multipart(key, path, size, meta, part_size, concurrency, progress)
        except Exception as exc:
            raise translate(exc, f"upload {key}") from None
        info = self.stat(key)
        if info.etag != etag:
            raise IntegrityError(f"upload {key}: server ETag {info.etag} != expected {etag}")
        return info

    def _put_single(
        self, key: str, path: str, metadata: dict[str, str], progress: Progress | None
    ) -> str:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            md5_b64, digest = _md5_of_range(fd, 0, size)
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=RangeFile(fd, 0, size),
                ContentLength=size,
                ContentMD5=md5_b64,
                Metadata=metadata,
                ContentType="application/octet-stream",
            )
        finally:
            os.close(fd)
        if progress:
            progress(size)
        return digest.hex()

    def _put_multipart(
        self,
        key: str,
        path: str,
        size: int,
        metadata: dict[str, str],
        part_size: int,
        concurrency: int,
        progress: Progress | None,
    ) -> str:
        full_key = self._key(key)
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=full_key,
            Metadata=metadata,
            ContentType="application/octet-stream",
        )
        upload_id = upload["UploadId"]
        lengths = segments(size, part_size)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="rc-put") as pool:
                    results = list(
                        pool.map(
                            lambda i: self._upload_part(
                                fd, full_key, upload_id, i, part_size, lengths[i], progress
                            ),
                            range(len(lengths)),
                        )
                    )
            finally:
                os.close(fd)
            parts = [{"PartNumber": i + 1, "ETag": r[0]} for i, r in enumerate(results)]
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                )
            raise
        return s3_multipart_etag([r[1] for r in results])

    def _upload_part(
        self,
        fd: int,
        full_key: str,
        upload_id: str,
        index: int,
        part_size: int,
        length: int,
        progress: Progress | None,
    ) -> tuple[str, bytes]:
        offset = index * part_size
        md5_b64, digest = _md5_of_range(fd, offset, length)
        resp = self.client.upload_part(
            Bucket=self.bucket,
            Key=full_key,
            UploadId=upload_id,
            PartNumber=index + 1,
            Body=RangeFile(fd, offset, length),
            ContentLength=length,
            ContentMD5=md5_b64,
        )
        if str(resp["ETag"]).strip('"') != digest.hex():
            raise IntegrityError(f"part {index + 1} of {full_key}: server ETag mismatch")
        if progress:
            progress(length)
        return resp["ETag"], digest

    def delete(self, key: str) -> None:
        self.stat(key)  # S3 deletes are idempotent: say NotFound ourselves
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise translate(exc, f"delete {key}") from None

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        info = self.stat(src_key)
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        try:
            if info.size <= 5 * 1024**3:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(dst_key),
                    CopySource=source,
                    MetadataDirective="COPY",
                )
            else:
                # Multipart copy (CopyObject stops at 5 GiB): boto3's managed copy, which
                # works on any botocore client.
                from boto3.s3.inject import copy as managed_copy
                from boto3.s3.transfer import TransferConfig

                chunk = info.part_size or 64 * 1024 * 1024
                managed_copy(
                    self.client,
                    source,
                    self.bucket,
                    self._key(dst_key),
                    Config=TransferConfig(multipart_chunksize=chunk),
                )
        except Exception as exc:
            raise translate(exc, f"copy {src_key} to {dst_key}") from None
        return self.stat(dst_key)

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

    def close(self) -> None:
        self.client.close()


def _check_content_range(header: str | None, start: int, end: int, key: str) -> None:
    expected = f"bytes {start}-{end - 1}/"
    if header is None or not header.startswith(expected):
        raise IntegrityError(
            f"read {key}: server answered range {header!r}, asked for {start}-{end - 1}"
        )


def fit_part_size(size: int, wanted: int) -> int:
    """At least S3's 5 MiB minimum and few enough parts for its 10,000-part limit."""
    part = max(wanted, MIN_PART)
    if size > part * MAX_PARTS:
        mib = 1024 * 1024
        part = -(-size // MAX_PARTS)
        part = -(-part // mib) * mib
    return part


def make_client(options: dict[str, Any]) -> Any:
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
        retries={"max_attempts": 1, "mode": "standard"},
        max_pool_connections=int(options.get("max_connections", 32)),
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
