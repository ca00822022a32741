"""shub:// — the Singularity Hub API (singularity 2.x, sregistry-cli, Apptainer's shub client)
and self-hosted Singularity Registry Servers, which speak the same API.

    GET {base}/api/container/{user}/{repo}:{tag}[@{version}]
        -> {"image": URL, "name": "user/repo", "tag": "...", "version": MD5, "commit": SHA1}

`shub://HOST/USER/REPO` names a registry server by host (HTTPS; plain HTTP on loopback);
otherwise the base URL is configured (the original Hub is an archive now). The tag is
always sent, `latest` by default, as sregistry-cli sends it (`:latest@VERSION`).

`version` is the md5 of the image file: the download is checked against it (and against
the pinned version or commit, if the reference has one). Hub images are mostly older
squashfs `.simg` files, so no SIF magic is required.

Private collections on a registry server answer 403; the request is then repeated with
sregistry-cli's signed header, `Authorization: SREGISTRY-HMAC-SHA256
Credential=pull/<base64 user>/<UTC hour>,Signature=<hex HMAC-SHA256 over
"pull|USER|<UTC hour>|REPO|TAG|" keyed with the user's token>`. The user name and token
come from REGISTRY_CLIENT_SHUB_USERNAME / _TOKEN, `[shub] username` / `token` in the
config, or sregistry-cli's own secrets file ($SREGISTRY_CLIENT_SECRETS, else ~/.sregistry)
when its `registry.base` is this server; they are sent to this server's origin only.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from registry_client.cache import short_id
from registry_client.errors import (
    AuthError,
    IntegrityError,
    InvalidReference,
    RegistryClientError,
    UnverifiableError,
)
from registry_client.sources import Download, FetchOptions, Source, Version, endpoint, setting
from registry_client.sources.http import (
    HOST_RE,
    Credentials,
    HttpSource,
    check_base_url,
    env_first,
    get_json,
    host_url,
    http_download,
    new_session,
    safe_url,
    same_origin,
    text_field,
)

if TYPE_CHECKING:
    from registry_client.acquire import Producer
    from registry_client.context import Context

DEFAULT_URL = "https://singularity-hub.org"
ENV_URL = "REGISTRY_CLIENT_SHUB_URL"
ENV_USER, ENV_TOKEN = "REGISTRY_CLIENT_SHUB_USERNAME", "REGISTRY_CLIENT_SHUB_TOKEN"
SREGISTRY_SECRETS = "SREGISTRY_CLIENT_SECRETS"
DEFAULT_TAG = "latest"
MAX_SECRETS_FILE = 1024 * 1024
# What the Hub accepted: GitHub user and repository names, loose tags (branch names).
USER_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})\Z")
REPO_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
MD5_RE = re.compile(r"[a-f0-9]{32}\Z")
COMMIT_RE = re.compile(r"[a-f0-9]{40}\Z")


@dataclass(frozen=True)
class ShubRef:
    user: str
    repo: str
    tag: str = DEFAULT_TAG
    version: str | None = None  # md5 of the image (32 hex) or git commit (40 hex)
    host: str | None = None  # a registry server named in the reference

    @property
    def api_path(self) -> str:
        path = f"{self.user}/{self.repo}:{self.tag}"
        return f"{path}@{self.version}" if self.version else path

    def __str__(self) -> str:
        return f"shub://{self.host + '/' if self.host else ''}{self.api_path}"


def parse(body: str) -> ShubRef:
    """`[HOST/]USER/REPO[:TAG][@VERSION]`; anything else is InvalidReference (exit 2)."""
    text = f"shub://{body}"
    rest, at, version = body.partition("@")
    if at and not (MD5_RE.match(version) or COMMIT_RE.match(version)):
        raise _bad(text, "the version after @ is an md5 (32 hex) or a commit (40 hex)")
    parts = rest.split("/")
    host = parts.pop(0) if len(parts) == 3 else None
    if len(parts) != 2:
        raise _bad(text, "expected shub://[HOST/]USER/REPO[:TAG][@VERSION]")
    if host is not None and not HOST_RE.match(host):
        raise _bad(text, f"bad registry host {host[:80]!r}")
    user, (repo, colon, tag) = parts[0], parts[1].partition(":")
    if colon and not TAG_RE.match(tag):
        raise _bad(text, f"bad tag {tag[:70]!r}")
    if not USER_RE.match(user) or user.endswith("-"):
        raise _bad(text, f"bad user name {user[:50]!r}")
    if not REPO_RE.match(repo) or repo in (".", ".."):
        raise _bad(text, f"bad repository name {repo[:110]!r}")
    # As sregistry-cli does: the tag is always sent, `latest` if none was given.
    return ShubRef(user, repo, tag if colon else DEFAULT_TAG, version or None, host)


def _bad(text: str, why: str) -> InvalidReference:
    return InvalidReference(f"invalid reference {text}: {why}")


@dataclass(frozen=True)
class Manifest:
    image_url: str
    md5: str
    commit: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class ShubSecret:
    """A registry server account: user name and API token."""

    username: str
    token: str

    def __repr__(self) -> str:  # keep the token out of tracebacks
        return f"ShubSecret(username={self.username!r})"

    def header(self, ref: ShubRef, now: _dt.datetime | None = None) -> str:
        """sregistry-cli's signed pull header; the server recomputes it for this UTC hour."""
        stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%HZ")
        user = base64.b64encode(self.username.encode()).decode()
        payload = f"pull|{ref.user}|{stamp}|{ref.repo}|{ref.tag}|"
        signature = hmac.new(self.token.encode(), payload.encode(), hashlib.sha256).hexdigest()
        return f"SREGISTRY-HMAC-SHA256 Credential=pull/{user}/{stamp},Signature={signature}"


class ShubClient:
    def __init__(self, base_url: str | None = None, secret: ShubSecret | None = None) -> None:
        self.base = check_base_url(base_url or env_first(ENV_URL) or DEFAULT_URL, "shub URL")
        self.secret = secret
        self.session = new_session()

    def manifest(self, ref: ShubRef) -> Manifest:
        what = f"shub manifest of {ref}"
        url = f"{self.base}/api/container/{quote(ref.api_path, safe='/:@')}"
        try:
            data = get_json(self.session, url, what)
        except AuthError:
            # A private collection: ask again, signed, as sregistry-cli does after a 403.
            if self.secret is None:
                raise AuthError(
                    f"{what}: the registry needs an account for this collection",
                    hint=f"set {ENV_USER} and {ENV_TOKEN} (or log in with sregistry-cli)",
                ) from None
            signed = Credentials(self.base, {"Authorization": self.secret.header(ref)})
            data = get_json(self.session, url, what, signed)
        if not isinstance(data, dict):
            raise RegistryClientError(f"{what}: not a container manifest")
        return _manifest(ref, data)

    def close(self) -> None:
        self.session.close()


def find_secret(ctx: Context, base: str) -> ShubSecret | None:
    """The account for the registry at `base`: environment, config, sregistry-cli's file."""
    user, token = os.environ.get(ENV_USER), os.environ.get(ENV_TOKEN)
    if not (user and token):
        user, token = setting(ctx.config, "shub", "username"), setting(ctx.config, "shub", "token")
    if user and token:
        return ShubSecret(user, token)
    return _sregistry_secret(base)


def _sregistry_secret(base: str) -> ShubSecret | None:
    path = Path(os.environ.get(SREGISTRY_SECRETS) or Path.home() / ".sregistry")
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(MAX_SECRETS_FILE))
    except (OSError, ValueError):
        return None
    entry = data.get("registry") if isinstance(data, dict) else None
    if not isinstance(entry, dict):
        return None
    user, token, where = entry.get("username"), entry.get("token"), entry.get("base")
    if not all(isinstance(v, str) and v for v in (user, token, where)):
        return None
    # Only the server the file was made for gets its token.
    return ShubSecret(str(user), str(token)) if same_origin(str(where), base) else None


def _manifest(ref: ShubRef, data: dict[str, Any]) -> Manifest:
    image = text_field(data, "image", 8192) or ""
    if urlsplit(image).scheme not in ("http", "https"):
        raise RegistryClientError(f"{ref}: the Hub gave no http(s) image URL")
    md5 = (text_field(data, "version", 64) or "").lower()
    if not MD5_RE.match(md5):
        raise UnverifiableError(
            f"{ref}: the Hub's version {md5[:40]!r} is not an md5; the image could not be verified"
        )
    commit = (text_field(data, "commit", 64) or "").lower() or None
    if ref.version and ref.version not in (md5, commit):
        raise IntegrityError(f"{ref}: the Hub answered with version {md5} (commit {commit})")
    return Manifest(image, md5, commit, data)


# -- the source ----------------------------------------------------------------------


class ShubSource(Source):
    scheme = "shub"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        self.ref = parse(body)
        base = check_base_url(
            host_url(self.ref.host)
            if self.ref.host
            else endpoint(options.shub_url, ENV_URL, ctx.config, "shub") or DEFAULT_URL,
            "shub URL",
        )
        self.client = ShubClient(base, find_secret(ctx, base))
        self.text = str(self.ref)
        self.remote_id = short_id("shub", self.client.base)
        self.manifest: Any = None

    def slot(self) -> tuple[str, str, str]:
        version = f"@{self.ref.version}" if self.ref.version else ""
        return self.ref.user, self.ref.repo, f"{self.ref.tag}{version}"

    def _key(self, md5: str) -> tuple[str, ...]:
        return ("shub", self.client.base, md5)

    def pinned(self, cache: Any) -> str | None:
        version = self.ref.version
        return cache.resolve_etag(*self._key(version)) if version and len(version) == 32 else None

    def resolve(self) -> Version:
        from registry_client.retry import retry_call

        self.manifest = retry_call(
            f"shub manifest {self.ref}", lambda: self.client.manifest(self.ref)
        )
        return Version(
            self._key(self.manifest.md5),
            None,
            {"version": self.manifest.md5, "commit": self.manifest.commit},
        )

    def producer(self, ctx: Context, version: Version) -> Producer:
        url = self.manifest.image_url
        source = HttpSource(url, session=self.client.session, label=f"{self.ref} ({safe_url(url)})")
        return http_download(source, md5=self.manifest.md5)

    def download(self) -> Download | None:
        if self.manifest is None:
            return None
        url = self.manifest.image_url
        label = f"{self.ref} ({safe_url(url)})"
        return Download(url, self.client.session, {}, label, md5=self.manifest.md5)

    def close(self) -> None:
        self.client.close()
