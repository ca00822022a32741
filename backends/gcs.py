"""Google Cloud Storage (and fake-gcs-server) through google-cloud-storage's JSON API.

Push (start_upload: steps the retry policy wraps one by one): up to the part size, one
upload declaring the file's md5Hash and crc32c (GCS refuses
an object whose bytes do not match them). Larger files are a parallel composite upload, as
gsutil and gcloud do it: the parts go up `push_concurrency` at a time as temporary objects
under `<prefix>.rc-uploads/<token>/` (each declaring its md5 and CRC32C), are composed into
the image (32 sources per compose call, in a tree beyond that; GCS allows 1024 components)
with our metadata, and removed; the whole file's CRC32C is hashed beside the upload and
must equal the composite's. The metadata is asked for only at the compose, so the sha256
pass runs beside the parts. Composite objects have a CRC32C and no md5Hash.

Pull: ranged GETs of the media, pinned to the object's generation (`generation=`, which is
what ObjectInfo.etag holds here: a 404 then means the object was replaced), read raw
(no gzip decoding), Content-Range checked. Verified with md5Hash where GCS has one, else
CRC32C (google-crc32c), plus size and sha256. The reads go through the client's own
authorised session, written by hand because the SDK streams a range only into a file.
SDK retries are off: the retry wrapper owns that policy.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

# Imported here, not lazily: a missing [gcs] extra must show when the backend is opened.
from google.cloud import storage

from registry_client.backends._parts import InOrder, cut, digests_of, fit_part_size
from registry_client.backends._wire import (
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
    parallel,
)
from registry_client.digests import plain_md5_plan
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

MiB = 1024 * 1024
READ_BLOCK = MiB
UPLOAD_CHUNK = 8 * MiB  # resumable upload chunk: bounds memory per upload thread
MAX_COMPONENTS = 1024
COMPOSE_FANIN = 32
MIN_PART = MiB
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
UPLOADS = ".rc-uploads/"
OCTET = "application/octet-stream"
GENERATION_RE = re.compile(r"[0-9]{1,20}\Z")
CONTENT_RANGE_RE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)\Z")


def translate(exc: BaseException, what: str) -> RegistryClientError:
    """google-api-core / google-auth / requests errors → our tree, without credentials."""
    if isinstance(exc, RegistryClientError):
        return exc
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    status = int(getattr(exc, "code", 0) or 0) if isinstance(exc, gexc.GoogleAPICallError) else 0
    response = getattr(exc, "response", None)
    if not status and response is not None:
        status = int(getattr(response, "status_code", 0) or 0)
    if status:
        headers = getattr(response, "headers", None) or {}
        if status == 400 and "hash" in str(exc).lower():  # "Provided MD5 hash ... doesn't match"
            return IntegrityError(f"{what}: HTTP 400: the bytes do not match their checksum")
        return for_status(status, what, headers)
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return AuthError(
            f"{what}: no Google Cloud credentials found",
            hint="set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON file, run "
            "`gcloud auth application-default login`, or give the remote credentials_file",
        )
    if isinstance(exc, auth_exc.RefreshError):
        return AuthError(f"{what}: Google credentials were refused ({type(exc).__name__})")
    if (
        isinstance(exc, (auth_exc.TransportError, OSError, ConnectionError))
        or is_transport_error(exc)
        or type(exc).__module__.startswith("requests")
    ):
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {first_line(exc)}")
    if type(exc).__name__ == "DataCorruption":  # google-resumable-media's checksum failure
        return IntegrityError(f"{what}: the upload's checksum did not match")
    return RegistryClientError(f"{what}: {type(exc).__name__}: {first_line(exc)}")


def for_status(status: int, what: str, headers: Any) -> RegistryClientError:
    text = f"{what}: HTTP {status}"
    if status == 404:
        return NotFound(text)
    if status in (401, 403):
        return AuthError(text, hint="check the remote's Google Cloud credentials and permissions")
    if status == 412:
        return ObjectChanged(f"{what}: the object changed during the transfer")
    if status >= 500 or status in (408, 429):
        return RemoteUnavailable(text, retry_after=retry_after(headers))
    return RegistryClientError(text)


def _b64_hex(value: Any, length: int) -> str | None:
    """A base64 checksum from GCS (untrusted) as hex, or None if absent or malformed."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == length else None


class GcsBackend(Backend):
    kind = "gcs"
    capabilities = Capabilities(copy=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.bucket_name = bucket
        self.prefix = prefix
        self.options = options or {}
        self.endpoint = _endpoint(self.options)
        self.limiter = Limiter.from_options(self.options)
        self.client = client or make_client(self.options, self.endpoint, self.limiter.slots)
        self.bucket = self.client.bucket(bucket)
        self.timeout = (
            float(self.options.get("connect_timeout", 10)),
            float(self.options.get("read_timeout", 60)),
        )
        self.location = f"gs://{bucket}/{prefix} ({self.endpoint})"

    @classmethod
    def from_remote(cls, remote: RemoteConfig) -> GcsBackend:
        return cls(remote.location, remote.prefix, options=dict(remote.options))

    # -- verbs ----------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        try:
            blob = self.bucket.get_blob(self.prefix + key, retry=None, timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, f"stat {key}") from None
        if blob is None:
            raise NotFound(f"{key} not found in {self.location}")
        return self._info(key, blob)

    @staticmethod
    def _info(key: str, blob: Any) -> ObjectInfo:
        props = blob._properties  # the JSON resource as sent: validated here, field by field
        size = str(props.get("size", ""))
        generation = str(props.get("generation", ""))
        if not size.isdigit() or len(size) > 16 or not GENERATION_RE.match(generation):
            raise IntegrityError(f"{key}: the service sent an invalid size or generation")
        checksums = {
            name: value
            for name, value in (
                ("md5", _b64_hex(props.get("md5Hash"), 16)),
                ("crc32c", _b64_hex(props.get("crc32c"), 4)),
            )
            if value
        }
        meta = store_metadata(props.get("metadata") if isinstance(props, dict) else None)
        return ObjectInfo(key, int(size), generation, meta, blob.updated, checksums)

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        if end <= start:
            return
        params = {"alt": "media"}
        if etag:
            params["generation"] = etag
        url = (
            f"{self.endpoint}/download/storage/v1/b/{quote(self.bucket_name, safe='')}"
            f"/o/{quote(self.prefix + key, safe='')}"
        )
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        what = f"read {key}"
        try:
            resp = self.client._http.get(
                url, params=params, headers=headers, stream=True, timeout=self.timeout
            )
        except Exception as exc:
            raise translate(exc, what) from None
        try:
            if resp.status_code == 404 and etag:
                raise ObjectChanged(f"{what}: generation {etag} is gone (replaced or deleted)")
            if resp.status_code not in (200, 206):
                raise for_status(resp.status_code, what, resp.headers)
            _check_range(resp, start, end, what)
            with watched(watch, resp.raw):
                yield from resp.raw.stream(READ_BLOCK, decode_content=False)
        except RegistryClientError:
            raise
        except Exception as exc:  # GeneratorExit is not an Exception: closing passes through
            raise translate(exc, what) from None
        finally:
            resp.close()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for blob in self.client.list_blobs(
                self.bucket_name,
                prefix=self.prefix + prefix,
                page_size=self.page_size,
                retry=None,
                timeout=self.timeout,
            ):
                name = str(blob.name)
                if name.startswith(self.prefix) and not name.startswith(self.prefix + UPLOADS):
                    yield self._info(name[len(self.prefix) :], blob)
        except RegistryClientError:
            raise
        except Exception as exc:
            raise translate(exc, f"list {self.bucket_name}/{self.prefix}{prefix}") from None

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        part_size = fit_part_size(size, part_size, minimum=MIN_PART, max_parts=MAX_COMPONENTS)
        if size <= part_size:
            return _SingleUpload(self, key, size, metadata)
        return _CompositeUpload(self, key, size, metadata, part_size)

    def _upload(self, body: BinaryIO, length: int, name: str, meta: dict[str, str] | None) -> Any:
        """One object from a part's reader, declaring its md5 and CRC32C (GCS checks
        both and refuses other bytes); the stored size and md5Hash are checked too."""
        md5, crc = digests_of(body, ["md5", "crc32c"])
        blob = self.bucket.blob(name, chunk_size=UPLOAD_CHUNK if length > UPLOAD_CHUNK else None)
        blob.md5_hash = base64.b64encode(md5).decode()
        blob.crc32c = base64.b64encode(crc).decode()
        blob.content_type = OCTET
        if meta is not None:
            blob.metadata = meta
        try:
            blob.upload_from_file(
                body,
                size=length,
                checksum=None,  # declared above instead: the service checks what we declared
                retry=None,
                timeout=self.timeout,
            )
        except Exception as exc:
            raise translate(exc, f"upload {name}") from None
        got = self._info(name, blob)
        if got.size != length or got.checksums.get("md5", md5.hex()) != md5.hex():
            raise IntegrityError(f"upload {name}: the stored object is not the bytes sent")
        return blob

    def _compose(self, name: str, sources: Sequence[str], meta: dict[str, str] | None) -> Any:
        dest = self.bucket.blob(name)
        dest.content_type = OCTET
        if meta is not None:
            dest.metadata = meta
        try:
            with self.limiter:
                dest.compose(
                    [self.bucket.blob(s) for s in sources], retry=None, timeout=self.timeout
                )
        except Exception as exc:
            raise translate(exc, f"compose {name}") from None
        return dest

    def _remove_quietly(self, names: Sequence[str]) -> None:
        def remove(name: str) -> None:
            with contextlib.suppress(Exception):  # leftovers under .rc-uploads/ are harmless
                self.bucket.blob(name).delete(retry=None, timeout=self.timeout)

        self.limiter.map(remove, list(names), wanted=8)

    def delete(self, key: str) -> None:
        try:
            self.bucket.blob(self.prefix + key).delete(retry=None, timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, f"delete {key}") from None

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Server-side rewrite, pinned to the source's generation; keeps the metadata (or
        sets `metadata`: the rewrite request carries the destination's resource)."""
        source = self.stat(src_key)
        dest = self.bucket.blob(self.prefix + dst_key)
        if metadata is not None:
            dest.metadata = dict(metadata)
        src_blob = self.bucket.blob(self.prefix + src_key, generation=int(source.etag or 0))
        token = None
        try:
            for _ in range(10_000):  # each call copies a slice (GCS picks), bounded
                token, _done, _total = dest.rewrite(
                    src_blob, token=token, retry=None, timeout=self.timeout
                )
                if token is None:
                    break
            else:
                raise RemoteUnavailable(f"copy {src_key}: the rewrite did not finish")
        except Exception as exc:
            raise translate(exc, f"copy {src_key} to {dst_key}") from None
        info = self.stat(dst_key)
        same = all(info.checksums.get(k) == v for k, v in source.checksums.items())
        if info.size != source.size or not same:
            raise IntegrityError(f"copy {src_key} to {dst_key}: the copy differs from its source")
        return info

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        if "md5" in info.checksums:
            plan = plain_md5_plan(ObjectInfo(info.key, info.size, info.checksums["md5"]))
            return EtagPlan(plan.schemes, plan.check, description="md5Hash of the object")
        crc = info.checksums.get("crc32c")
        if crc:
            return EtagPlan(
                [[info.size]],
                lambda digests: digests[0][0].hex() == crc,
                description="CRC32C of the object (composite objects have no md5)",
                algorithm="crc32c",
            )
        return EtagPlan([], lambda _: False, verifiable=False, description="no md5Hash or crc32c")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client._http.close()


class _SingleUpload(Upload):
    """Up to the part size: one upload straight to the key (live only once whole)."""

    def __init__(self, backend: GcsBackend, key: str, size: int, metadata: Metadata) -> None:
        self.backend, self.key, self.metadata = backend, key, metadata
        self.parts = [(0, size)]
        self.blob: Any = None

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        b = self.backend
        self.blob = b._upload(
            body, self.parts[0][1], b.prefix + self.key, metadata_of(self.metadata)
        )

    def complete(self) -> ObjectInfo:
        return self.backend._info(self.key, self.blob)

    def abort(self) -> None:
        pass  # nothing is live until the upload is whole


class _CompositeUpload(Upload):
    """A parallel composite upload: parts as temporary objects under .rc-uploads/, composed
    (a tree of 32-source composes) into the image with its metadata, then removed. The
    whole file's CRC32C, hashed in order as parts finish, must equal the composite's."""

    def __init__(
        self, backend: GcsBackend, key: str, size: int, metadata: Metadata, part_size: int
    ) -> None:
        self.backend, self.key, self.size, self.metadata = backend, key, size, metadata
        self.parts = cut(size, part_size)
        self.temp = f"{backend.prefix}{UPLOADS}{secrets.token_hex(6)}/"
        self.names = [f"{self.temp}{i:05d}" for i in range(len(self.parts))]
        self.made: list[str] = list(self.names)
        self.whole = InOrder(len(self.parts), "crc32c")

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        self.backend._upload(body, self.parts[index][1], self.names[index], None)
        self.whole.add(index, body)

    def complete(self) -> ObjectInfo:
        b = self.backend
        crc = self.whole.digest().hex()
        sources, level = self.names, 0
        while len(sources) > COMPOSE_FANIN:  # a tree of composes, 32 sources each
            groups = [sources[i : i + COMPOSE_FANIN] for i in range(0, len(sources), COMPOSE_FANIN)]
            sources = [f"{self.temp}c{level}-{j:05d}" for j in range(len(groups))]
            self.made.extend(s for s in sources if s not in self.made)
            jobs = list(zip(sources, groups, strict=True))
            parallel(lambda job: b._compose(*job, None), jobs, b.limiter.width(8, len(jobs)))
            level += 1
        blob = b._compose(b.prefix + self.key, sources, metadata_of(self.metadata))
        got = b._info(self.key, blob)
        if got.size != self.size or got.checksums.get("crc32c") != crc:
            raise IntegrityError(f"upload {self.key}: the composed object is not the file sent")
        b._remove_quietly(self.made)  # after success only: a retried compose needs them
        return got

    def abort(self) -> None:
        self.backend._remove_quietly(self.made)


def _check_range(resp: Any, start: int, end: int, what: str) -> None:
    encoding = resp.headers.get("Content-Encoding", "identity").lower()
    if encoding not in ("", "identity"):
        raise IntegrityError(f"{what}: stored {encoding}-encoded; such objects are not supported")
    header = resp.headers.get("Content-Range")
    if resp.status_code == 206:
        match = CONTENT_RANGE_RE.match(header or "")
        if not match or (int(match.group(1)), int(match.group(2))) != (start, end - 1):
            raise IntegrityError(
                f"{what}: server answered range {header!r}, asked for {start}-{end - 1}"
            )
        return
    # 200: the whole object, acceptable only when that is exactly what was asked for
    length = resp.headers.get("Content-Length", "")
    if start != 0 or not length.isdigit() or int(length) != end:
        raise IntegrityError(f"{what}: server ignored the range {start}-{end - 1}")


def _endpoint(options: dict[str, Any]) -> str:
    """`endpoint_url`, else STORAGE_EMULATOR_HOST (with or without a scheme), else GCS."""
    raw = str(options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST") or "")
    if not raw:
        return DEFAULT_ENDPOINT
    if "://" not in raw:
        raw = f"http://{raw}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AuthError(f"invalid GCS endpoint {raw[:100]!r}")
    return raw.rstrip("/")


def make_client(
    options: dict[str, Any], endpoint: str, connections: int = DEFAULT_CONNECTIONS
) -> Any:
    """A storage.Client following Google's conventions; remote options win over env.

    Credentials: anonymous for an emulator (`anonymous = true`, or STORAGE_EMULATOR_HOST
    with no endpoint_url of the remote's own), else `credentials_file` (a service-account
    JSON file), else Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
    gcloud's ADC file, the metadata server of a Google Cloud VM).
    """
    import requests
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, project = _credentials(options)
    except Exception as exc:
        raise translate(exc, "Google Cloud credentials") from None
    session = AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=connections)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    project = options.get("project") or os.environ.get("GOOGLE_CLOUD_PROJECT") or project
    return storage.Client(
        project=project or "<none>",  # object verbs need no project; never look one up
        credentials=credentials,
        _http=session,
        client_options={"api_endpoint": endpoint},
    )


def _credentials(options: dict[str, Any]) -> tuple[Any, str | None]:
    given = options.get("anonymous")
    if given is None:
        anonymous = bool(os.environ.get("STORAGE_EMULATOR_HOST")) and not options.get(
            "endpoint_url"
        )
    else:  # a TOML boolean, or the text `remote add --option anonymous=true` stores
        anonymous = str(given).lower() in ("true", "1", "yes", "on")
    if anonymous:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), None
    if options.get("credentials_file"):
        from google.oauth2 import service_account

        path = os.path.expanduser(str(options["credentials_file"]))
        try:
            creds = service_account.Credentials.from_service_account_file(path, scopes=SCOPES)
        except (OSError, ValueError) as exc:
            # The parser's message may quote the file: name only the problem's kind.
            raise AuthError(
                f"cannot use credentials_file {path}: {type(exc).__name__}",
                hint="give the path of a service-account JSON key file",
            ) from None
        return creds, creds.project_id
    import google.auth

    creds, project = google.auth.default(scopes=SCOPES)
    return creds, project
