"""docker:// — images from registries that speak the OCI distribution API.

    GET /v2/<repo>/manifests/<tag|digest>   (Accept: OCI index, Docker manifest list,
                                             OCI manifest, Docker v2 manifest)
    GET /v2/<repo>/blobs/<digest>           (config and layers; may redirect to a CDN)

Auth: anonymous first; on 401 the WWW-Authenticate challenge says what to do: Bearer
(token from the realm, with basic credentials if we have them, or an identity token
exchanged by POST; renewed before it expires and when a request is refused) or Basic.
Credentials come from the environment, Docker credential helpers or the Docker config
file (credentials.py). Registries on loopback addresses are spoken to over plain HTTP,
as Docker does; everything else over HTTPS.

Every manifest is checked against the digest that names it (or that the registry
reports), and every blob against its descriptor's digest and size before it enters the
shared blob cache.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import requests

from registry_client.backends.base import Limiter
from registry_client.errors import (
    AuthError,
    IntegrityError,
    InvalidReference,
    NotFound,
    RegistryClientError,
    UsageError,
)
from registry_client.sources.docker.credentials import (
    ENV_PASSWORD,
    ENV_USER,
    RegistryLogin,
    TokenHeaders,
    find_login,
)
from registry_client.sources.http import (
    HOST_RE,
    REGISTRY_CONNECTIONS,
    Credentials,
    HttpSource,
    dict_field,
    get_following,
    get_json,
    host_url,
    http_download,
    int_field,
    is_loopback,
    list_field,
    new_session,
    post_form,
    raise_unless_ok,
    read_limited,
    safe_url,
    text_field,
)

if TYPE_CHECKING:
    from registry_client.acquire import Producer
    from registry_client.context import Context

HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
HUB_API = "registry-1.docker.io"
TOKEN_CLIENT_ID = "registry-client"  # OAuth2 client_id for identity-token exchanges
MAX_TOKEN_LIFETIME = 24 * 3600

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
MAX_MANIFEST = 4 * 1024 * 1024
MAX_CONFIG = 8 * 1024 * 1024
MAX_LAYERS = 1000  # Docker stops at 127; an image with more is not one we build

# Reference grammar of distribution/reference, restricted to what we need.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DIGEST_RE = re.compile(r"sha256:([a-f0-9]{64})\Z")
CHALLENGE_RE = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')
# `uname -m` to OCI platform (architecture, variant)
MACHINES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


# -- references --------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerRef:
    registry: str  # "docker.io" or HOST[:PORT]
    repository: str
    tag: str | None = "latest"
    digest: str | None = None  # "sha256:<hex>"

    @property
    def is_hub(self) -> bool:
        return self.registry == "docker.io"

    @property
    def api_base(self) -> str:
        return host_url(HUB_API if self.is_hub else self.registry)

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = f"docker://{self.name}"
        if self.tag:
            text += f":{self.tag}"
        return f"{text}@{self.digest}" if self.digest else text


def parse(body: str) -> DockerRef:
    """`[REGISTRY/]REPO[:TAG][@sha256:HEX]` as Docker reads it; else InvalidReference."""
    text = f"docker://{body}"
    rest, at, digest = body.partition("@")
    if at and not DIGEST_RE.match(digest):
        raise _bad(text, "the digest must be sha256: and 64 lower-case hex digits")
    registry, repo = _split_registry(rest)
    repo, tag = _split_tag(text, repo)
    if not registry or not HOST_RE.match(registry):
        raise _bad(text, f"bad registry {registry[:80]!r}")
    if registry in HUB_NAMES:
        registry = "docker.io"
        if "/" not in repo:
            repo = f"library/{repo}"  # official images live under library/
    if len(repo) > 255 or not REPO_RE.match(repo):
        raise _bad(
            text,
            f"bad repository {repo[:80]!r}: lower-case components "
            "[a-z0-9] joined by . _ __ or -, separated by /",
        )
    return DockerRef(registry, repo, tag or (None if at else "latest"), digest or None)


def _split_registry(rest: str) -> tuple[str, str]:
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, remainder
    return "docker.io", rest


def _split_tag(text: str, repo: str) -> tuple[str, str | None]:
    name, colon, tag = repo.rpartition(":")
    if not colon or "/" in tag:
        return repo, None
    if not TAG_RE.match(tag):
        raise _bad(text, f"bad tag {tag[:130]!r}")
    return name, tag


def _bad(text: str, why: str) -> InvalidReference:
    return InvalidReference(
        f"invalid reference {text[:300]}: {why}",
        hint="expected docker://[REGISTRY/]REPO[:TAG|@sha256:HEX]",
    )


# -- platforms ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    architecture: str
    variant: str | None = None
    os: str = "linux"

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def node_platform(arch: str | None = None) -> Platform:
    """The platform to pick from an index: --arch (amd64, arm64, arm/v7, linux/arm64) or ours."""
    if not arch:
        machine = _platform.machine().lower()
        if machine not in MACHINES:
            raise UsageError(f"unknown machine type {machine!r}", hint="give --arch")
        return Platform(*MACHINES[machine])
    parts = arch.split("/")
    if parts[0] == "linux":
        parts = parts[1:]
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
        raise UsageError(f"--arch {arch!r}: expected e.g. amd64, arm64 or arm/v7")
    architecture = MACHINES.get(parts[0], (parts[0], None))[0]
    return Platform(architecture, parts[1] if len(parts) == 2 else None)


def _platform_matches(entry: dict[str, Any], want: Platform) -> bool:
    plat = dict_field(entry, "platform")
    if plat.get("os") != want.os or plat.get("architecture") != want.architecture:
        return False
    variant = plat.get("variant")
    if want.variant is None:
        # arm64 images are labelled v8 or not at all; either is what an arm64 node runs.
        return variant in (None, "", "v8") or want.architecture != "arm64"
    return variant == want.variant


# -- manifests and descriptors -----------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @classmethod
    def from_json(cls, data: Any, what: str) -> Descriptor:
        if not isinstance(data, dict):
            raise RegistryClientError(f"{what}: malformed descriptor")
        digest, size = text_field(data, "digest", 100), int_field(data, "size")
        if digest is None or not DIGEST_RE.match(digest):
            raise RegistryClientError(
                f"{what}: unsupported digest {str(data.get('digest'))[:80]!r} "
                "(only sha256 is supported)"
            )
        if size is None:
            raise RegistryClientError(f"{what}: descriptor without a valid size")
        urls = tuple(u for u in list_field(data, "urls") if isinstance(u, str))
        return cls(text_field(data, "mediaType", 200) or "", digest, size, urls)


@dataclass(frozen=True)
class ResolvedImage:
    ref: DockerRef
    manifest_digest: str  # of the platform's image manifest
    index_digest: str | None  # of the index / manifest list it came from, if any
    platform: Platform
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def pinned_ref(self) -> str:
        """What the image is, exactly: REGISTRY/REPO@sha256:... (the def file's From:)."""
        return f"{self.ref.name}@{self.manifest_digest}"


# -- the registry client ------------------------------------------------------------------


@dataclass
class RegistryClient:
    """One repository on one registry; negotiates auth once and reuses it for blobs."""

    ref: DockerRef
    login: RegistryLogin | None = None
    session: requests.Session = field(default_factory=new_session)
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        self.base = self.ref.api_base
        self._looked_up = self.login is not None
        self.limiter = Limiter(REGISTRY_CONNECTIONS)  # shared by every blob of this pull

    def __repr__(self) -> str:
        return f"RegistryClient({self.ref})"

    def _login(self) -> RegistryLogin | None:
        """Looked up at the first challenge: anonymous pulls never run a helper."""
        if not self._looked_up:
            self.login = find_login(self.ref.registry)
            self._looked_up = True
        return self.login

    # -- requests with auth ------------------------------------------------------
    def _headers(self, url: str) -> dict[str, str]:
        return self.credentials.for_url(url) if self.credentials else {}

    def get(self, path: str, what: str, headers: dict[str, str] | None = None) -> Any:
        """GET base+path; on a 401 answer its challenge (or renew the token) and retry once."""
        url = f"{self.base}{path}"

        def headers_for(hop: str) -> dict[str, str]:
            return {**(headers or {}), **self._headers(hop)}

        sent = self._headers(url)
        resp, _ = get_following(self.session, url, what, headers_for)
        if resp.status_code == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            if self.credentials is None:
                self.credentials = Credentials(self.base, self._authorize(challenge, what))
            elif not self.credentials.renew(sent):
                raise self._auth_error(what)
            resp, _ = get_following(self.session, url, what, headers_for)
        if resp.status_code == 401:
            resp.close()
            raise self._auth_error(what)
        return raise_unless_ok(resp, what)

    def _auth_error(self, what: str) -> AuthError:
        hint = (
            f"set {ENV_USER} and {ENV_PASSWORD}, or log in with docker"
            if not self.login
            else "the registry refused these credentials"
        )
        return AuthError(f"{what}: HTTP 401 (authentication required)", hint=hint)

    def _authorize(self, challenge: str, what: str) -> Mapping[str, str]:
        scheme, _, rest = challenge.strip().partition(" ")
        params = dict(CHALLENGE_RE.findall(rest))
        login = self._login()
        if scheme.lower() == "basic":
            if not login or login.is_identity_token:
                raise AuthError(
                    f"{what}: {self.ref.registry} needs a user name and password",
                    hint=f"set {ENV_USER} and {ENV_PASSWORD}",
                )
            return {"Authorization": login.basic()}
        if scheme.lower() == "bearer" and params.get("realm"):
            return TokenHeaders(lambda: self._token(params, what))
        raise AuthError(f"{what}: unsupported authentication challenge {scheme[:20]!r}")

    def _token(self, params: dict[str, str], what: str) -> tuple[str, int | None]:
        """A token from the realm: (token, lifetime in seconds if the service said)."""
        realm = params["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuthError(f"{what}: bad token realm {safe_url(realm)}")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            # Never send credentials (or ask for a token) in clear text off this machine.
            raise AuthError(f"{what}: token service {safe_url(realm)} is not HTTPS")
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        what = f"token for {self.ref.name}"
        login = self.login
        try:
            if login and login.is_identity_token:  # OAuth2: the refresh token is no password
                form = {"grant_type": "refresh_token", "refresh_token": login.secret}
                form.update(query, client_id=TOKEN_CLIENT_ID)
                body = post_form(self.session, realm, what, form)
            else:
                url = f"{realm}{'&' if parts.query else '?'}{urlencode(query)}"
                basic = Credentials(realm, {"Authorization": login.basic()} if login else {})
                body = get_json(self.session, url, what, basic)
        except AuthError:
            raise self._auth_error(what) from None
        return _token_answer(body, what)

    # -- manifests -------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[dict[str, Any], str, str]:
        """(manifest, media type, sha256 digest) — the bytes checked against the digest."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {self.ref.name}{sep}{reference}"
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        try:
            resp = self.get(path, what, {"Accept": ACCEPT})
        except NotFound:
            raise NotFound(f"{self.ref} not found ({what})") from None
        body = read_limited(resp, MAX_MANIFEST, what)
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        _check_manifest_digest(what, digest, reference, resp.headers.get("Docker-Content-Digest"))
        data, media = _parse_manifest(body, resp.headers.get("Content-Type", ""), what)
        return data, media, digest

    def resolve(self, want: Platform, *, explicit_arch: bool = False) -> ResolvedImage:
        """Follow tag or digest (through an index for `want`) to an image manifest."""
        data, media, digest = self.manifest(self.ref.reference)
        index_digest = None
        if media in INDEX_TYPES:
            index_digest = digest
            entry = _select(data, want, str(self.ref))
            data, media, digest = self.manifest(entry.digest)
            if media not in MANIFEST_TYPES:
                raise RegistryClientError(f"{self.ref}: nested indexes are not supported")
        config, layers = image_descriptors(data, str(self.ref))
        return ResolvedImage(self.ref, digest, index_digest, want, config, layers)

    # -- blobs -----------------------------------------------------------------------
    def blob_source(self, desc: Descriptor) -> HttpSource:
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{desc.digest}"
        return HttpSource(
            url,
            session=self.session,
            credentials=self.credentials,
            label=f"{self.ref.name}@{desc.digest[:19]}",
            limiter=self.limiter,
        )

    def config_json(self, desc: Descriptor) -> dict[str, Any]:
        """The image config blob (small, read into memory), verified against its digest."""
        from registry_client.retry import RetryingReader
        from registry_client.transfer import read_bytes

        if desc.size > MAX_CONFIG:
            raise RegistryClientError(f"{self.ref}: image config of {desc.size} bytes is too large")
        source = RetryingReader(self.blob_source(desc))
        info = source.stat(desc.digest)
        if info.size != desc.size:
            raise IntegrityError(
                f"{self.ref}: image config is {info.size} bytes, its descriptor says {desc.size}"
            )
        body = read_bytes(source, info, 0, info.size)
        if hashlib.sha256(body).hexdigest() != desc.hex:
            raise IntegrityError(f"{self.ref}: image config does not match {desc.digest}")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise RegistryClientError(f"{self.ref}: image config is not a JSON object")
        return data

    def close(self) -> None:
        self.session.close()


def image_descriptors(
    manifest: dict[str, Any], ref: str
) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """The config and layer descriptors of an image manifest, typed and bounded."""
    config = Descriptor.from_json(manifest.get("config"), f"{ref} config")
    found = manifest.get("layers")
    if not isinstance(found, list):
        raise RegistryClientError(f"{ref}: the image manifest has no list of layers")
    if len(found) > MAX_LAYERS:
        raise RegistryClientError(f"{ref}: {len(found)} layers; at most {MAX_LAYERS} are read")
    layers = tuple(Descriptor.from_json(d, f"{ref} layer {i}") for i, d in enumerate(found))
    _check_image_types(ref, config, layers)
    return config, layers


def _token_answer(body: Any, what: str) -> tuple[str, int | None]:
    token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise AuthError(f"{what}: the token service answered without a token")
    lifetime = body.get("expires_in")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int):
        return token, None
    return token, min(max(lifetime, 0), MAX_TOKEN_LIFETIME)


def _check_manifest_digest(what: str, digest: str, reference: str, header: str | None) -> None:
    if reference.startswith("sha256:") and digest != reference:
        raise IntegrityError(f"{what}: the registry sent bytes with digest {digest}")
    if header and header.startswith("sha256:") and header != digest:
        raise IntegrityError(f"{what}: bytes have digest {digest}, the registry says {header}")


def _parse_manifest(body: bytes, content_type: str, what: str) -> tuple[dict[str, Any], str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryClientError(f"{what}: not JSON") from None
    if not isinstance(data, dict):
        raise RegistryClientError(f"{what}: not a manifest")
    if data.get("schemaVersion") == 1:
        raise UsageError(f"{what}: Docker schema 1 manifests are not supported")
    media = (text_field(data, "mediaType", 200) or content_type).split(";")[0].strip()
    if media not in (*INDEX_TYPES, *MANIFEST_TYPES):
        media = _guess_media(data, what)
    return data, media


def _guess_media(data: dict[str, Any], what: str) -> str:
    """Registries may omit mediaType in OCI documents: tell index from manifest by shape."""
    if isinstance(data.get("manifests"), list):
        return OCI_INDEX
    if isinstance(data.get("config"), dict) and isinstance(data.get("layers"), list):
        return OCI_MANIFEST
    raise UsageError(f"{what}: not a container image manifest ({str(data.get('mediaType'))[:80]})")


def _select(index: dict[str, Any], want: Platform, ref: str) -> Descriptor:
    entries = [e for e in list_field(index, "manifests") if isinstance(e, dict)]
    for entry in entries:
        if _platform_matches(entry, want):
            return Descriptor.from_json(entry, f"{ref} index entry")
    offered = sorted(
        {
            "/".join(
                v
                for k in ("os", "architecture", "variant")
                if (v := text_field(dict_field(e, "platform"), k, 40))
            )
            for e in entries
        }
        - {""}
    )
    raise NotFound(
        f"{ref} has no {want} image (it has: {', '.join(offered) or 'none'})",
        hint="choose one with --arch",
    )


def _check_image_types(ref: str, config: Descriptor, layers: tuple[Descriptor, ...]) -> None:
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise UsageError(f"{ref} is not a container image (config type {config.media_type})")
    for layer in layers:
        if layer.media_type and layer.media_type not in LAYER_TYPES:
            raise UsageError(f"{ref}: unsupported layer type {layer.media_type}")


# -- blob cache -------------------------------------------------------------------------------


def ensure_blob(
    ctx: Context,
    client: RegistryClient,
    desc: Descriptor,
    *,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """The verified blob in the cache's blob store, fetched once per node through the
    acquire pipeline (resumed after a kill like any download). A cached blob is re-hashed
    before use: a damaged one goes to quarantine/ and is fetched again."""
    from registry_client.acquire import BLOB, Wanted, acquire

    label = f"{client.ref.name}@{desc.digest[:19]}"
    wanted = Wanted(label, ("blob", desc.hex), sha256=desc.hex, size=desc.size, kind=BLOB)

    def fetch() -> Producer:
        source = client.blob_source(desc)
        return http_download(source, size=desc.size, sha256=desc.hex, progress=progress)

    return acquire(ctx, wanted, fetch).path
