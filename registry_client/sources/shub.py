"""shub:// — the Singularity Hub API (singularity 2.x, sregistry-cli, Apptainer's shub client).

    GET {base}/api/container/{user}/{repo}[:{tag}][@{version}]
        -> {"image": URL, "name": "user/repo", "tag": "...", "version": MD5, "commit": SHA1}

`version` is the md5 of the image file: the download is checked against it (and against
the pinned version or commit, if the reference has one). Hub images are mostly older
squashfs `.simg` files, so no SIF magic is required. The original Hub is an archive
now, so the base URL is configurable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from registry_client.cache import short_id
from registry_client.errors import (
    IntegrityError,
    InvalidReference,
    RegistryClientError,
    UnverifiableError,
)
from registry_client.sources import FetchOptions, Source, Version, endpoint
from registry_client.sources.http import (
    Expected,
    HttpSource,
    check_base_url,
    env_first,
    fetch_verified,
    get_json,
    new_session,
    safe_url,
)

if TYPE_CHECKING:
    from registry_client.context import Context

DEFAULT_URL = "https://singularity-hub.org"
ENV_URL = "REGISTRY_CLIENT_SHUB_URL"
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
    tag: str | None = "latest"
    version: str | None = None  # md5 of the image (32 hex) or git commit (40 hex)

    @property
    def api_path(self) -> str:
        path = f"{self.user}/{self.repo}"
        if self.tag:
            path += f":{self.tag}"
        if self.version:
            path += f"@{self.version}"
        return path

    def __str__(self) -> str:
        return f"shub://{self.api_path}"


def parse(body: str) -> ShubRef:
    """`USER/REPO[:TAG][@VERSION]`; anything else is InvalidReference (exit 2)."""
    text = f"shub://{body}"
    rest, at, version = body.partition("@")
    if at and not (MD5_RE.match(version) or COMMIT_RE.match(version)):
        raise _bad(text, "the version after @ is an md5 (32 hex) or a commit (40 hex)")
    path, colon, tag = rest.partition(":")
    if colon and not TAG_RE.match(tag):
        raise _bad(text, f"bad tag {tag[:70]!r}")
    parts = path.split("/")
    if len(parts) != 2:
        raise _bad(
            text, "expected shub://USER/REPO[:TAG][@VERSION]; for another Hub use --shub-url"
        )
    user, repo = parts
    if not USER_RE.match(user) or user.endswith("-"):
        raise _bad(text, f"bad user name {user[:50]!r}")
    if not REPO_RE.match(repo) or repo in (".", ".."):
        raise _bad(text, f"bad repository name {repo[:110]!r}")
    # As Apptainer does: no tag and no version means the latest tag.
    return ShubRef(user, repo, tag if colon else (None if at else "latest"), version or None)


def _bad(text: str, why: str) -> InvalidReference:
    return InvalidReference(f"invalid reference {text}: {why}")


@dataclass(frozen=True)
class Manifest:
    image_url: str
    md5: str
    commit: str | None
    data: dict[str, Any]


class ShubClient:
    def __init__(self, base_url: str | None = None) -> None:
        self.base = check_base_url(base_url or env_first(ENV_URL) or DEFAULT_URL, "shub URL")
        self.session = new_session()

    def manifest(self, ref: ShubRef) -> Manifest:
        what = f"shub manifest of {ref}"
        url = f"{self.base}/api/container/{quote(ref.api_path, safe='/:@')}"
        data = get_json(self.session, url, what)
        if not isinstance(data, dict):
            raise RegistryClientError(f"{what}: not a container manifest")
        return _manifest(ref, data)

    def close(self) -> None:
        self.session.close()


def _manifest(ref: ShubRef, data: dict[str, Any]) -> Manifest:
    image = str(data.get("image") or "")
    if urlsplit(image).scheme not in ("http", "https"):
        raise RegistryClientError(f"{ref}: the Hub gave no http(s) image URL")
    md5 = str(data.get("version") or "").lower()
    if not MD5_RE.match(md5):
        raise UnverifiableError(
            f"{ref}: the Hub's version {md5[:40]!r} is not an md5; the image could not be verified"
        )
    commit = str(data.get("commit") or "").lower() or None
    if ref.version and ref.version not in (md5, commit):
        raise IntegrityError(f"{ref}: the Hub answered with version {md5} (commit {commit})")
    return Manifest(image, md5, commit, data)


def download(
    client: ShubClient,
    ref: ShubRef,
    manifest: Manifest,
    dest: Path,
    *,
    settings: Any = None,
    progress: Any = None,
) -> tuple[str, tuple[str, ...]]:
    """Fetch the image into dest, verified against the Hub's md5; return (sha256, checks)."""
    source = HttpSource(
        manifest.image_url, session=client.session, label=f"{ref} ({safe_url(manifest.image_url)})"
    )
    result, checks = fetch_verified(
        source, dest, Expected(md5=manifest.md5), settings=settings, progress=progress
    )
    return result.sha256, checks


# -- the source ----------------------------------------------------------------------


class ShubSource(Source):
    scheme = "shub"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        self.ref = parse(body)
        self.client = ShubClient(endpoint(options.shub_url, ENV_URL, ctx.config, "shub"))
        self.text = str(self.ref)
        self.remote_id = short_id("shub", self.client.base)
        self.manifest: Any = None

    def slot(self) -> tuple[str, str, str]:
        return self.ref.user, self.ref.repo, self.ref.tag or f"@{self.ref.version}"

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

    def produce(self, ctx: Context, version: Version, dest: Path) -> tuple[str, tuple[str, ...]]:
        with ctx.reporter.progress(f"pull {self.text}", 0) as advance:
            return download(
                self.client, self.ref, self.manifest, dest, settings=ctx.transfer, progress=advance
            )

    def close(self) -> None:
        self.client.close()
