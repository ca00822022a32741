"""Azure Blob Storage (and Azurite) through azure-storage-blob.

Push: the file goes up as blocks (Put Block), `push_concurrency` at a time, each with its
Content-MD5 (the service refuses a block whose bytes differ), then Put Block List commits
them with the blob's Content-MD5 (md5 of the whole file, hashed beside the upload) and our
metadata (asked for only then, so the sha256 pass runs beside the blocks too). Each block
id records the block's md5: `rc1-<upload token>-<index>-<md5 hex>` (51 characters, the
same length for every block as Azure requires), so a blob whose Content-MD5 was dropped
(e.g. by a tool that rewrote its properties) can still be checked block by block.

Pull: ranged GETs pinned with If-Match to the blob's ETag (an opaque version tag, not an
md5), bodies streamed (see read_range), Content-Range checked; verified with the blob's
Content-MD5 where present, else against the md5s recorded in the committed block list,
else (blobs other tools wrote without either) size and sha256 only, with a warning. The
SDK's own retries are off: the retry wrapper owns that policy.

Azure metadata names must be C# identifiers, so `part-size` is stored as `part_size` and
read back with `-`. Every value the service returns (sizes, MD5s, metadata, block lists)
is checked before use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ContentSettings
from azure.storage.blob._generated.models import ModifiedAccessConditions

from registry_client.backends._parts import InOrder, cut, digests_of, fit_part_size
from registry_client.backends._wire import (
    check_content_range,
    first_line,
    is_transport_error,
    retry_after,
    store_metadata,
    watched,
)
from registry_client.backends.base import (
    DEFAULT_CONNECTIONS,
    Backend,
    Capabilities,
    EtagPlan,
    Limiter,
    Metadata,
    ObjectInfo,
    ReadWatch,
    Upload,
    metadata_of,
)
from registry_client.digests import plain_md5_plan
from registry_client.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
    UsageError,
)

if TYPE_CHECKING:
    from registry_client.config import RemoteConfig

MiB = 1024 * 1024
MAX_BLOCKS = 50_000  # committed blocks per blob
MAX_BLOCK = 4000 * MiB
OCTET = "application/octet-stream"
MIN_BLOCK = MiB
BLOCK_ID_RE = re.compile(r"rc1-[0-9a-f]{8}-[0-9]{5}-([0-9a-f]{32})\Z")
COPY_WAIT = 600.0  # seconds a server-side copy may stay pending
ACCOUNT_RE = re.compile(r"[a-z0-9]{3,24}\Z")
INTEGRITY_CODES = {"Md5Mismatch", "InvalidMd5", "Crc64Mismatch"}
AUTH_CODES = {
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions",
    "AccountIsDisabled",
}
ENV_CONN = "AZURE_STORAGE_CONNECTION_STRING"


def translate(exc: BaseException, what: str) -> RegistryClientError:
    """azure-core errors → our tree; messages carry names and codes, never credentials."""
    if isinstance(exc, RegistryClientError):
        return exc
    if isinstance(exc, HttpResponseError) and not exc.status_code:
        # No status: the body broke off (IncompleteReadError: a reset, or a stalled read
        # shut down), a transport failure like any other.
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {first_line(exc)}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        code = str(getattr(exc, "error_code", None) or "")
        text = f"{what}: {status} {code}".strip()
        if isinstance(exc, ResourceModifiedError) or status == 412:
            return ObjectChanged(f"{what}: the blob changed during the transfer")
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            return NotFound(text)
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403) or code in AUTH_CODES:
            return AuthError(text, hint="check the remote's Azure credentials and permissions")
        if code in INTEGRITY_CODES or (status == 400 and "md5" in str(exc.message).lower()):
            return IntegrityError(f"{text}: the service got other bytes than were sent")
        if status >= 500 or status in (408, 429) or code in ("ServerBusy", "OperationTimedOut"):
            headers = getattr(exc.response, "headers", None) or {}
            return RemoteUnavailable(text, retry_after=retry_after(headers))
        return RegistryClientError(text)
    if isinstance(exc, ClientAuthenticationError):
        return AuthError(f"{what}: Azure authentication failed ({type(exc).__name__})")
    if (
        isinstance(exc, (ServiceRequestError, ServiceResponseError, AzureError, OSError))
        or is_transport_error(exc)
        or type(exc).__module__.startswith("requests")
    ):
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {first_line(exc)}")
    return RegistryClientError(f"{what}: {type(exc).__name__}")


def _to_azure_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """Our metadata names hold `-`; Azure's must be C# identifiers."""
    return {k.replace("-", "_"): str(v) for k, v in meta.items()}


def _from_azure_meta(meta: Mapping[str, Any] | None) -> dict[str, str]:
    """Untrusted: short string values only, names lower-case with `-` back."""
    return {k.replace("_", "-"): v for k, v in store_metadata(meta).items()}


def _md5_hex(value: Any) -> str | None:
    """A Content-MD5 as the SDK gives it (bytes / bytearray), or None if absent or malformed."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value).hex()
    return None


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise IntegrityError(f"{what}: the service sent an invalid size {value!r}")
    return value


class AzureBackend(Backend):
    kind = "azure"
    capabilities = Capabilities(copy=True)

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        client: Any = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.container_name = container
        self.prefix = prefix
        self.options = options or {}
        self.limiter = Limiter.from_options(self.options)
        self.service = client or make_client(self.options, self.limiter.slots)
        self.container = self.service.get_container_client(container)
        self.location = f"azure://{container}/{prefix} ({_public_url(self.service.url)})"

    @classmethod
    def from_remote(cls, remote: RemoteConfig) -> AzureBackend:
        return cls(remote.location, remote.prefix, options=dict(remote.options))

    def _blob(self, key: str) -> Any:
        return self.container.get_blob_client(self.prefix + key)

    # -- verbs ----------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        try:
            props = self._blob(key).get_blob_properties()
        except Exception as exc:
            raise translate(exc, f"stat {key}") from None
        return self._info(key, props)

    @staticmethod
    def _info(key: str, props: Any) -> ObjectInfo:
        md5 = _md5_hex(getattr(props.content_settings, "content_md5", None))
        etag = str(props.etag or "").strip('"') or None
        return ObjectInfo(
            key,
            _size(props.size, key),
            etag,
            _from_azure_meta(props.metadata),
            props.last_modified,
            {"md5": md5} if md5 else {},
        )

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        """One ranged Get Blob, its body streamed in 1 MiB reads.

        Through the SDK's generated operation (the one its own downloader calls) rather
        than `download_blob`, which reads each 4 MiB piece whole into memory before
        handing it on: 8 workers then hold ~200 MB, against ~80 MB streamed.
        """
        if end <= start:
            return
        conditions = ModifiedAccessConditions(if_match=f'"{etag}"') if etag else None
        what = f"read {key}"
        try:
            response, body = self._blob(key)._client.blob.download(
                range=f"bytes={start}-{end - 1}",
                modified_access_conditions=conditions,
                cls=lambda pipeline, stream, _headers: (pipeline.http_response, stream),
            )
        except Exception as exc:
            raise translate(exc, what) from None
        try:
            check_content_range(response.headers.get("Content-Range"), start, end, what)
            with watched(watch, getattr(response.internal_response, "raw", None)):
                yield from body
        except RegistryClientError:
            raise
        except Exception as exc:  # GeneratorExit is not an Exception: closing passes through
            raise translate(exc, what) from None
        finally:
            with contextlib.suppress(Exception):
                response.close()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for props in self.container.list_blobs(
                name_starts_with=self.prefix + prefix, results_per_page=self.page_size
            ):
                name = str(props.name)
                if name.startswith(self.prefix):
                    yield self._info(name[len(self.prefix) :], props)
        except RegistryClientError:
            raise
        except Exception as exc:
            raise translate(exc, f"list {self.container_name}/{self.prefix}{prefix}") from None

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        block_size = fit_part_size(size, part_size, minimum=MIN_BLOCK, max_parts=MAX_BLOCKS)
        if block_size > MAX_BLOCK:
            raise UsageError(f"upload {key}: {size} bytes is over Azure's block blob limit")
        return _BlockUpload(self, key, size, metadata, block_size)

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete_blob(delete_snapshots="include")
        except Exception as exc:
            raise translate(exc, f"delete {key}") from None

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Copy Blob within the account: the service copies the committed blocks (and their
        ids), the Content-MD5 and the metadata (or sets `metadata`). It may finish later:
        wait for it."""
        source = self.stat(src_key)
        dest = self._blob(dst_key)
        replace = {} if metadata is None else {"metadata": _to_azure_meta(dict(metadata))}
        try:
            dest.start_copy_from_url(
                self._blob(src_key).url,
                source_etag=f'"{source.etag}"',
                source_match_condition=MatchConditions.IfNotModified,
                **replace,
            )
            deadline = time.monotonic() + COPY_WAIT
            while (props := dest.get_blob_properties()).copy.status == "pending":
                if time.monotonic() > deadline:
                    with contextlib.suppress(Exception):
                        dest.abort_copy(props.copy.id)
                    raise RemoteUnavailable(f"copy {src_key}: still pending after {COPY_WAIT}s")
                time.sleep(0.5)
        except Exception as exc:
            raise translate(exc, f"copy {src_key} to {dst_key}") from None
        if props.copy.status not in (None, "success"):
            raise RemoteUnavailable(f"copy {src_key} to {dst_key}: {props.copy.status}")
        info = self._info(dst_key, props)
        if info.size != source.size or info.checksums != source.checksums:
            raise IntegrityError(f"copy {src_key} to {dst_key}: the copy differs from its source")
        return info

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        if "md5" in info.checksums:
            plan = plain_md5_plan(
                ObjectInfo(info.key, info.size, info.checksums["md5"], info.metadata)
            )
            return EtagPlan(plan.schemes, plan.check, description="Content-MD5 of the blob")
        return self._block_plan(info)

    def _block_plan(self, info: ObjectInfo) -> EtagPlan:
        """The md5 of each committed block, where the uploader recorded it in the block ids."""
        try:
            committed, _ = self._blob(info.key).get_block_list("committed")
        except Exception as exc:
            raise translate(exc, f"block list of {info.key}") from None
        expected: list[str] = []
        sizes: list[int] = []
        for block in committed or []:
            match = BLOCK_ID_RE.match(str(getattr(block, "id", "")))
            size = getattr(block, "size", None)
            if (
                not match
                or not isinstance(size, int)
                or not 0 < size <= MAX_BLOCK
                or len(sizes) >= MAX_BLOCKS
            ):
                return _unverifiable("no Content-MD5, and the block ids record no md5")
            expected.append(match.group(1))
            sizes.append(size)
        if not sizes or sum(sizes) != info.size:
            return _unverifiable("no Content-MD5, and the block list does not add up")

        def check(md5s: list[list[bytes]]) -> bool:
            return [d.hex() for d in md5s[0]] == expected

        return EtagPlan([sizes], check, description=f"md5 of each of {len(sizes)} blocks")

    def close(self) -> None:
        self.service.close()


class _BlockUpload(Upload):
    """Put Block for each part (Content-MD5 checked by the service, md5 in the block id),
    then Put Block List with the blob's Content-MD5, hashed in order as blocks finish.
    Nothing is live before the commit; uncommitted blocks are dropped by Azure after a
    week, so `abort` has nothing to remove."""

    def __init__(
        self, backend: AzureBackend, key: str, size: int, metadata: Metadata, block_size: int
    ) -> None:
        self.backend, self.key, self.size, self.metadata = backend, key, size, metadata
        self.parts = cut(size, block_size)
        self.blob = backend._blob(key)
        self.token = secrets.token_hex(4)  # a fresh id per push: two pushes never mix blocks
        self.ids: list[str] = [""] * len(self.parts)
        self.whole = InOrder(len(self.parts), "md5")

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        (digest,) = [md5] if md5 is not None else digests_of(body, ["md5"])
        block_id = f"rc1-{self.token}-{index:05d}-{digest.hex()}"
        try:
            self.blob.stage_block(
                block_id, body, length=self.parts[index][1], transactional_content_md5=digest
            )
        except Exception as exc:
            raise translate(exc, f"block {index + 1} of {self.key}") from None
        self.ids[index] = block_id
        self.whole.add(index, body)

    def complete(self) -> ObjectInfo:
        md5 = self.whole.digest()
        try:
            self.blob.commit_block_list(
                [BlobBlock(block_id=i) for i in self.ids],
                content_settings=ContentSettings(content_type=OCTET, content_md5=bytearray(md5)),
                metadata=_to_azure_meta(metadata_of(self.metadata)),
            )
        except Exception as exc:
            raise translate(exc, f"upload {self.key}") from None
        info = self.backend.stat(self.key)
        if info.size != self.size or info.checksums.get("md5") != md5.hex():
            raise IntegrityError(f"upload {self.key}: the committed blob is not the file sent")
        return info

    def abort(self) -> None:
        pass


def _unverifiable(why: str) -> EtagPlan:
    return EtagPlan([], lambda _: False, verifiable=False, description=why)


def _public_url(url: str) -> str:
    """The account URL without a query (a SAS would be a secret)."""
    return url.split("?", 1)[0].rstrip("/")


def make_client(options: dict[str, Any], connections: int = DEFAULT_CONNECTIONS) -> Any:
    """A BlobServiceClient following Azure's conventions; remote options win over env.

    1. a connection string (`connection_string`, AZURE_STORAGE_CONNECTION_STRING);
    2. else the account URL (`account_url`, else https://ACCOUNT.blob.core.windows.net from
       `account` / AZURE_STORAGE_ACCOUNT) with an account key (`account_key`,
       AZURE_STORAGE_KEY), a SAS (`sas_token`, AZURE_STORAGE_SAS_TOKEN), or Microsoft Entra
       ID through DefaultAzureCredential where azure-identity is installed.
    """
    # The SDK logs every request at INFO; keep it quiet even under -v.
    logging.getLogger("azure").setLevel(logging.WARNING)
    kwargs = _client_kwargs(options, connections)
    env = os.environ
    conn = options.get("connection_string") or (
        env.get(ENV_CONN) if not _has_own_auth(options) else None
    )
    try:
        if conn:
            return BlobServiceClient.from_connection_string(str(conn), **kwargs)
        url = _account_url(options)
        return BlobServiceClient(url, credential=_credential(options, url), **kwargs)
    except (ValueError, TypeError) as exc:
        # The SDK's own message can quote the connection string: never show it.
        raise AuthError(
            f"invalid Azure credentials or account URL ({type(exc).__name__})",
            hint="check connection_string / account_url / AZURE_STORAGE_* settings",
        ) from None


def _has_own_auth(options: dict[str, Any]) -> bool:
    return any(options.get(k) for k in ("account_url", "account", "account_key", "sas_token"))


def _account_url(options: dict[str, Any]) -> str:
    url = options.get("account_url") or os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
    if url:
        return str(url)
    account = str(options.get("account") or os.environ.get("AZURE_STORAGE_ACCOUNT") or "")
    if not account:
        raise AuthError(
            "no Azure storage account or credentials found",
            hint="set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with "
            "AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN (or the remote's account_url, "
            "account_key, sas_token, connection_string)",
        )
    if not ACCOUNT_RE.match(account):
        raise AuthError(f"invalid Azure storage account name {account[:30]!r}")
    return f"https://{account}.blob.core.windows.net"


def _credential(options: dict[str, Any], url: str) -> Any:
    env = os.environ
    key = options.get("account_key") or env.get("AZURE_STORAGE_KEY")
    if key:
        account = options.get("account") or env.get("AZURE_STORAGE_ACCOUNT") or _account_of(url)
        return {"account_name": str(account), "account_key": str(key)}
    sas = options.get("sas_token") or env.get("AZURE_STORAGE_SAS_TOKEN")
    if sas:
        return str(sas).lstrip("?")
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise AuthError(
            "no Azure credentials found for the storage account",
            hint="set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (or a connection string), "
            "or pip install azure-identity for Microsoft Entra ID sign-in",
        ) from None
    return DefaultAzureCredential()


def _account_of(url: str) -> str:
    """The account name in https://ACCOUNT.blob.core.windows.net or http://HOST:PORT/ACCOUNT."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if host.endswith(".blob.core.windows.net"):
        return host.split(".", 1)[0]
    return parts.path.strip("/").split("/", 1)[0]


def _client_kwargs(options: dict[str, Any], connections: int) -> dict[str, Any]:
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=connections)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    transport = RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=float(options.get("connect_timeout", 10)),
        read_timeout=float(options.get("read_timeout", 60)),
        # azure-core reads bodies in 4 KiB pieces unless told: 4x the client CPU of 1 MiB.
        connection_data_block_size=MiB,
    )
    kwargs: dict[str, Any] = {
        "transport": transport,
        "retry_total": 0,  # the retry wrapper owns retries
    }
    if options.get("api_version"):
        kwargs["api_version"] = str(options["api_version"])
    return kwargs


__all__ = ["AzureBackend", "make_client"]
